"""What a run folder records about its run besides checkpoints and the metric log: config.json,
ds_config.json and the corpus vocabulary (a new run), run.json (derived figures, versions, git
hash, the time to the first step), ranks/rank<r>.json, done.json and the exports. Written by
rank 0 (ranks/: each rank its own), so a finished run explains itself without its logs.

The run folder:
    config.json        the resolved TrainConfig (what --resume reads back)
    ds_config.json     the resolved DeepSpeed config (batch sizes filled in)
    run.json           derived quantities, world size, versions, git hash
    done.json          written when training has finished (stop reason, step, best metrics)
    checkpoints/       DeepSpeed checkpoints and their pointers (see checkpoint.py)
    ranks/             per-rank facts (optimizer state elements: ZeRO partitioning at a glance)
    export/            safetensors + config + tokenizer of the best-accuracy model (ties: the lower
                       validation loss; never validated: the last)
    export_best_bleu/  the same for the best-BLEU-4 model
    log.jsonl          every metric, one JSON object per line
    tb/                TensorBoard event files
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import torch

from sevlm.export import save_export
from sevlm.io import read_json, write_json
from sevlm.train.checkpoint import TrainState
from sevlm.train.checks import peak_memory_gib
from sevlm.train.config import config_to_dict
from sevlm.train.resolve import Resolved
from sevlm.train.run_folder import CONFIG_FILE, DONE_FILE, sweep_temporaries
from sevlm.train.runlog import RunLog
from sevlm.train.steps import say
from sevlm.vocab import VOCAB_FILE

RUN_FILE = "run.json"


def start(
    run_dir: Path,
    resolved: Resolved,
    resuming: bool,
    data,
    vocab,
    parameters: int,
    memory_estimate: int,
    peak: dict,
    resumed_at_step: int | None,
) -> None:
    """The run folder's records at start-up (rank 0; `data`: the run's `train.data.TrainingData`)
    and the start-up lines."""
    figures = run_figures(resolved, data, parameters, memory_estimate)
    if resolved.main:
        write_run_files(run_dir, resolved, resuming, vocab, figures, data.lexicon_info, peak, resumed_at_step)
        say_figures(figures, peak)


def run_figures(resolved: Resolved, data, parameters: int, memory_estimate: int) -> dict:
    """The derived quantities printed at start-up and kept in run.json."""
    source, info, lexicon_info = data.source, data.info, data.lexicon_info
    model = resolved.model
    figures = {
        "world_size": resolved.world,
        "device": resolved.device,
        "precision": resolved.precision,
        "micro_batch": resolved.micro,
        "grad_accum": resolved.accum,
        "global_batch": resolved.global_batch,
        "sequences_per_step": 2 * resolved.global_batch,
        "max_tokens_per_step": resolved.global_batch * 2 * model.max_len,
        "train_images": source.num_images,
        "val_images": len(source.val_samples()),
        "steps_per_epoch": data.steps_per_epoch,
        "total_steps": data.total_steps,
        "parameters": parameters,
        "vocab_size": model.vocab_size,
        "memory_estimate_gib": round(memory_estimate / 2**30, 2),
        "encoder": info.encoder,
        "visual_tokens": [info.num_tokens, info.dim],
        "data_source": f"{info.source}: {getattr(resolved.config.data, info.source)}",
        "lexicon": (
            f"{lexicon_info['lexicon']} ({lexicon_info['entries']} words; knows "
            f"{lexicon_info['train_words_known']} of the {lexicon_info['train_words']} distinct "
            f"words of the training text, {100 * lexicon_info['coverage']:.0f}%)"
        ),
    }
    left_out = getattr(getattr(source, "train_set", None), "n_few_emotions", 0)
    if left_out:  # data.min_train_emotions
        figures["train_images_left_out_few_emotions"] = left_out
    return figures


def write_run_files(
    run_dir: Path,
    resolved: Resolved,
    resuming: bool,
    vocab,
    figures: dict,
    lexicon_info: dict,
    peak: dict,
    resumed_at_step: int | None,
) -> None:
    """Rank 0, before training: the temporaries a kill left swept, a new run's config files, run.json."""
    import deepspeed  # after the accelerator env is set (sevlm.train.distributed): for its version

    run_dir.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(run_dir)
    if not resuming:  # config.json last: a folder without one is started afresh
        write_json(run_dir / "ds_config.json", resolved.ds_config)
        if vocab is not None:
            vocab.save(run_dir / VOCAB_FILE)
        write_json(run_dir / CONFIG_FILE, config_to_dict(resolved.config))
    versions = {"torch": torch.__version__, "deepspeed": deepspeed.__version__}
    run = {**figures, "lexicon_coverage": lexicon_info, "model_config": resolved.model.__dict__, "git": git_hash()}
    run.update(peak_flops_per_s=peak, versions=versions, resumed_at_step=resumed_at_step)
    write_json(run_dir / RUN_FILE, run)


def add_startup(run_dir: Path, startup: dict) -> None:
    """run.json's "startup": the time to the first step, by phase."""
    path = run_dir / RUN_FILE
    write_json(path, {**read_json(path), "startup": startup})


def finish(run_dir: Path, state: TrainState, stop: str, log: RunLog, main: bool, memory_estimate: int, device: str):
    """The done row of the log, then done.json (rank 0), written last: its presence means training
    finished. done.json puts the measured peak memory beside the estimate (not in log.jsonl: a
    resumed run's log equals an uninterrupted one's, and this process's peak is not the run's)."""
    summary = {"step": state.step, "event": "done", "reason": stop, "best_acc": state.best_acc}
    summary["best_bleu4"] = state.best_bleu
    # not a time series: in TensorBoard a run resumed after this row would show its figures twice
    log.write(summary, tensorboard=False)
    log.close()
    if main:
        memory = {"memory_estimate_gib": round(memory_estimate / 2**30, 2), "memory_peak_gib": peak_memory_gib(device)}
        write_json(run_dir / DONE_FILE, {**summary, **memory})
    say(
        f"sevlm train: done ({stop}) at step {state.step}; best accuracy {state.best_acc} (step "
        f"{state.best_acc_step}), best BLEU-4 {state.best_bleu} (step {state.best_bleu_step}); run folder {run_dir}",
        main,
    )


def write_rank_info(run_dir: Path, resolved: Resolved, optimizer, module) -> None:
    """ranks/rank<r>.json: optimizer state elements (ZeRO's partitioning at a glance)."""
    base = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed wraps the torch optimizer
    elements = sum(v.numel() for s in base.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    write_json(
        run_dir / "ranks" / f"rank{resolved.rank}.json",
        {
            "rank": resolved.rank,
            "world_size": resolved.world,
            "zero_stage": resolved.ds_config.get("zero_optimization", {}).get("stage", 0),
            "optimizer_state_elements": elements,
            "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
        },
    )


def export_model(out_dir: Path, module, tokenizer, vocab, model_cfg, meta: dict, step: int, metrics: dict) -> None:
    """An export folder: fp32 safetensors (whatever the training precision) + config + tokenizer."""
    if next(module.parameters()).dtype != torch.float32:
        module = copy.deepcopy(module).float()
    was_training = module.training
    config_dict = {**meta, "model": dict(model_cfg.__dict__), "step": step, "metrics": metrics}
    save_export(out_dir, module, tokenizer, config_dict, vocab=vocab)
    module.train(was_training)


def git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def say_figures(figures: dict, peak: dict) -> None:
    """The start-up lines: the derived figures, and the peak MFU is taken against."""
    print("sevlm train: " + ", ".join(f"{k}={v}" for k, v in figures.items()), file=sys.stderr, flush=True)
    flops = peak["flops_per_s"]
    print(
        f"sevlm train: MFU is taken against {f'{flops / 1e12:.3g} TFLOP/s' if flops else 'no peak (no MFU)'} "
        f"({peak['source']})",
        file=sys.stderr,
        flush=True,
    )
