"""Exporting any finished training checkpoint of a run (`sevlm export`): a DeepSpeed checkpoint
consolidated into an export folder that `load_run` reads. It reads the trainer's checkpoint folder,
so it sits above both sevlm.export and sevlm.train rather than inside the export format.

DeepSpeed is imported where it is used: it picks its accelerator from the environment when first
imported, and the trainer sets that environment first (sevlm.train.distributed.set_env_defaults).
"""

from __future__ import annotations

from pathlib import Path

from sevlm.errors import DataError
from sevlm.export import load_run, save_export
from sevlm.train.checkpoint import finished_tags, pointers


def export_checkpoint(run_dir: str | Path, tag: str, out_dir: str | Path) -> tuple[Path, str]:
    """Write an export folder from any finished checkpoint of a run: `tag` is a checkpoint tag
    (`step00000200`) or a pointer (`last`, `best_accuracy`, `best_bleu`). The run's own `export/`
    gives the architecture, tokenizer and vocabulary; the weights are the tag's, consolidated
    from its ZeRO partitions by DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint`.
    Returns (the folder, the tag written)."""
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    finished = finished_tags(root)
    if not finished:
        raise DataError(f"{root}: no finished checkpoint (is {run_dir} a training run folder?)")
    named = pointers(root)
    resolved = named.get(tag, tag)
    if resolved not in finished:
        raise DataError(
            f"{run_dir}: no finished checkpoint {tag!r}; have the tags {', '.join(finished[-5:])}"
            f"{' (and older)' if len(finished) > 5 else ''} and the pointers {', '.join(sorted(named)) or 'none'}"
        )
    loaded = load_run(run_dir)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # see the module docstring

    state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=resolved)
    missing, unexpected = loaded.model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(
            f"{root / resolved}: its weights do not fit the run's model (missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]})"
        )
    train = dict(loaded.config.get("train") or {})
    train.update(step=int(resolved.removeprefix("step")), metrics={}, exported_from=f"checkpoints/{resolved}")
    return save_export(out_dir, loaded.model, loaded.tokenizer, train, vocab=loaded.vocab), resolved
