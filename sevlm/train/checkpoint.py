"""Crash-safe DeepSpeed checkpoints: every save goes to a fresh tag, named by pointers.

checkpoints/
    step00000004/    one DeepSpeed checkpoint (every rank's files; the client state holds the
                     TrainState and every rank's RNG state) and fingerprint.json (the hashes
                     of the run's config and data when it was saved)
    pointers.json    {"last": tag, "best_accuracy": tag, "best_bleu4": tag}
    latest           DeepSpeed's own pointer (for its tools, e.g. zero_to_fp32.py)

A save writes its tag on every rank, waits for all of them, marks the tag finished
(`finished.json`, rank 0), and only then rewrites pointers.json (atomically) and removes the
tags no pointer names. A kill at any moment leaves the previous pointers valid: a half-written
tag is never named, so it counts as absent.

A lost pointers.json, or a `last` pointer whose tag is gone, is recovered from the disk: the
newest finished tag becomes `last` (`recover_pointers`, which says so); only a run without any
finished tag starts over. Tags of older sevlm versions have no finished.json: a tag holding
fingerprint.json (written after the engine's files) counts as finished for them.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sevlm.errors import ConfigError, SevlmError
from sevlm.io import read_json, write_json, write_text
from sevlm.train.distributed import all_gather, barrier

CKPT_DIR = "checkpoints"
POINTERS, FINGERPRINT, FINISHED = "pointers.json", "fingerprint.json", "finished.json"
LAST, BEST_ACC, BEST_BLEU = "last", "best_accuracy", "best_bleu4"


class TrainingError(SevlmError):
    """Training cannot go on (e.g. a run of non-finite losses, an unreadable checkpoint)."""


@dataclass
class TrainState:
    """What a checkpoint carries besides the engine: enough to continue the same run."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # micro-batches of `epoch` consumed on each rank
    best_acc: float | None = None
    best_bleu: float | None = None
    best_acc_step: int | None = None
    best_acc_loss: float | None = None  # validation loss of the best-accuracy model (breaks accuracy ties)
    best_bleu_step: int | None = None
    bad_validations: int = 0
    nonfinite_run: int = 0
    samples_seen: int = 0


def _saved(tag_dir: Path) -> None:
    """Called once the engine files of a save are written, before the pointers move (tests
    monkeypatch it to kill a run at that moment)."""


def pointers(root: Path) -> dict[str, str]:
    """{name: tag} of the finished checkpoints under `root` ({} when none has finished)."""
    path = Path(root) / POINTERS
    if not path.exists():
        return {}
    return {name: tag for name, tag in read_json(path).items() if (Path(root) / tag).is_dir()}


def finished_tags(root: Path) -> list[str]:
    """The tags under `root` whose save finished on every rank, oldest first."""
    if not Path(root).is_dir():
        return []
    tags = [p for p in Path(root).iterdir() if p.is_dir() and re.fullmatch(r"step\d{8}", p.name)]
    marked = [p for p in tags if (p / FINISHED).is_file()]
    if not marked:  # a run saved by an older sevlm: fingerprint.json follows the engine's files
        marked = [p for p in tags if (p / FINGERPRINT).is_file()]
    return sorted(p.name for p in marked)


def recover_pointers(root: Path) -> tuple[dict[str, str], str | None]:
    """(pointers, note): the pointers of `root`, with `last` recovered from the newest finished tag
    on disk when pointers.json is lost or names a tag that is gone; `note` says what was done
    (None when nothing needed recovering). Nothing is written."""
    root = Path(root)
    path = root / POINTERS
    try:
        recorded = read_json(path) if path.exists() else None
    except SevlmError:
        recorded = None  # unreadable: as if lost
    named = {k: v for k, v in (recorded or {}).items() if isinstance(v, str) and (root / v).is_dir()}
    if LAST in named:
        return named, None
    tags = finished_tags(root)
    if not tags:
        return named, None
    named[LAST] = tags[-1]
    if recorded is None:
        why = f"{path} is missing or unreadable"
    else:
        why = f"{path} names {recorded.get(LAST)!r} as the last checkpoint, which is not on disk"
    return named, f"{why}; resuming from the newest finished checkpoint on disk, {root / tags[-1]}"


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """True when `run_dir` holds a finished checkpoint to resume from."""
    return LAST in recover_pointers(Path(run_dir) / CKPT_DIR)[0]


def _prune(root: Path, keep: dict[str, str]) -> None:
    """Remove the tag folders no pointer names (older saves, or saves a kill cut short)."""
    for path in root.iterdir():
        if path.is_dir() and path.name not in keep.values():
            shutil.rmtree(path, ignore_errors=True)


def save(
    engine, root: Path, step: int, names: tuple[str, ...], state: TrainState, fingerprint: dict, main: bool
) -> None:
    """Save the engine as a fresh tag for `step`, then point `names` at it (on every rank)."""
    tag = f"step{step:08d}"
    client = {"train_state": state.__dict__, "rng": all_gather(rng_state())}
    engine.save_checkpoint(str(root), tag=tag, client_state=client, save_latest=False)
    if main:
        write_json(root / tag / FINGERPRINT, fingerprint)
    _saved(root / tag)
    barrier()  # every rank's files are complete before anything names them
    if main:
        write_json(root / tag / FINISHED, {"step": step})
        named = {**recover_pointers(root)[0], **{name: tag for name in names}}
        write_json(root / POINTERS, named)
        write_text(root / "latest", tag)
        _prune(root, named)
    barrier()


def recorded_fingerprint(root: Path) -> dict | None:
    """The fingerprint saved with the `last` checkpoint (None when no save has finished)."""
    tag = recover_pointers(root)[0].get(LAST)
    return read_json(root / tag / FINGERPRINT) if tag else None


def load(engine, root: Path, rank: int, main: bool, say=print) -> dict | None:
    """The client state of the `last` checkpoint, with the engine and this rank's RNG restored;
    None when no save has finished (the run starts over). Lost pointers are recovered from the
    disk first (see `recover_pointers`), and rewritten, so no finished tag is ever pruned."""
    named, note = recover_pointers(root)
    if main and root.is_dir():
        if note:
            say(f"sevlm train: {note}")
            write_json(root / POINTERS, named)
        # with pointers lost, the best_* tags are unknown: keep every finished tag until the next save
        _prune(root, {**{t: t for t in finished_tags(root)}, **named} if note else named)
    barrier()
    if LAST not in named:
        return None
    try:
        with weights_only_loads():
            _, client = engine.load_checkpoint(str(root), tag=named[LAST])
    except pickle.UnpicklingError as e:  # torch's message advises weights_only=False: never here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainingError(
            f"{root / named[LAST]}: a checkpoint file holds pickled objects besides tensors and "
            f"DeepSpeed's own state, which sevlm never loads ({first[:160]}); resume from a copy "
            "of the run you trust, or start a new run"
        ) from None
    except RuntimeError as e:  # e.g. "size mismatch": the model is not the one that was saved
        raise TrainingError(
            f"{root / named[LAST]}: does not fit this model ({str(e).strip().splitlines()[-1]})"
        ) from None
    if client is None:
        raise TrainingError(f"{root / named[LAST]}: DeepSpeed could not load the checkpoint")
    rngs = client["rng"]
    if len(rngs) != len(all_gather(None)):
        raise ConfigError(f"{root / named[LAST]}: saved by {len(rngs)} rank(s); resume it with as many")
    set_rng_state(rngs[rank])
    return client


def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


@contextlib.contextmanager
def weights_only_loads():
    """Make DeepSpeed's checkpoint loading use torch.load(weights_only=True).

    DeepSpeed calls torch.load(weights_only=False); torch honours TORCH_FORCE_WEIGHTS_ONLY_LOAD
    on every call, and the only non-tensor objects in its ZeRO checkpoints are these few plain
    classes, so they are allowlisted instead of unpickling arbitrary code.
    """
    # deepspeed is imported inside functions here: only once the accelerator env is set (train.distributed)
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
            yield
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before
