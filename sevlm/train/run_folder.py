"""The run folder's lifecycle: which folder a run trains in, its saved config read back for
`--resume`, the lock rank 0 holds on it, SIGTERM as a clean exit, and the temporaries a kill
left swept. The folder's layout is in `sevlm.train.recipe`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from sevlm.errors import ConfigError
from sevlm.io import read_json
from sevlm.locks import claim
from sevlm.model.config import saved_model_config
from sevlm.train.checkpoint import CKPT_DIR
from sevlm.train.config import TrainConfig, as_train_config

CONFIG_FILE, DONE_FILE = "config.json", "done.json"


def run_folder(
    config: TrainConfig | dict | None, resume: str | os.PathLike | None, out_dir: str | os.PathLike | None
) -> Path:
    """The folder a training call trains in, with `--resume`'s rules checked (here only): a resumed
    run continues with its saved config.json in its own folder, so it takes no config and no --out;
    a new run needs a config."""
    if resume:
        if config is not None or out_dir is not None:
            raise ConfigError(
                f"--resume {resume} continues the run with its saved {CONFIG_FILE}; drop --config, --out and "
                "key=value overrides"
            )
        return Path(resume)
    if config is None:
        raise ConfigError("a training config is required (--config), or --resume RUN_DIR")
    return Path(out_dir or as_train_config(config).out_dir)


def claim_run_folder(run_dir: Path):
    """Rank 0 holds the run folder for the whole run: a second training into it is refused."""
    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    # beside the folder, so a run refused before it starts leaves nothing behind; beside its real
    # path, so two spellings of one folder (a symlink, ../, relative vs absolute) take one lock
    real = Path(os.path.realpath(run_dir))
    return claim(real.parent / f".{real.name}.train.lock", f"{run_dir} (a training run)")


def run_config(config: TrainConfig | dict | None, run_dir: Path, resuming: bool) -> TrainConfig:
    """The config a run trains with: a resumed run's saved one (as an older sevlm meant it), or a
    new run's, refused where the folder already holds a run. `sevlm.train.resolve` resolves it."""
    cfg_path = run_dir / CONFIG_FILE
    if not resuming:
        if cfg_path.exists():
            raise ConfigError(
                f"{run_dir}: already holds a training run; continue it with --resume {run_dir} or pick another --out"
            )
        return as_train_config(config)
    if not cfg_path.exists():
        raise ConfigError(f"{cfg_path}: not found; --resume needs a run folder written by `sevlm train`")
    saved = read_json(cfg_path)
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        saved["model"] = saved_model_config(saved["model"])  # a run from an older sevlm resumes as it was
    data = saved.get("data") if isinstance(saved, dict) else None
    if isinstance(data, dict) and data.get("features") and data.get("shards") and not data.get("source"):
        data["source"] = "features"  # an older sevlm read the feature cache when both were set
    return as_train_config(saved)


def prepare_run(
    config: TrainConfig | dict | None, resume: str | os.PathLike | None, out_dir: str | os.PathLike | None
) -> tuple[TrainConfig, Path, bool]:
    """(config, run folder, resuming): `run_folder` and `run_config` in one call."""
    run_dir = run_folder(config, resume, out_dir)
    return run_config(config, run_dir, bool(resume)), run_dir, bool(resume)


@contextlib.contextmanager
def sigterm_exits(run_dir: Path):
    """SIGTERM (a scheduler's stop, torchrun stopping its ranks, `kill`) ends training as
    SystemExit(143) raised in the main thread, so that the way out stops the DataLoader workers and
    releases the run folder (log.jsonl is written row by row). It leaves what a kill leaves (the last
    finished checkpoint; a save cut short is never named), so `--resume` continues as after a kill.
    A second SIGTERM ends the process at once. Python runs the handler between bytecodes: a
    process blocked in C code (a collective whose peer hangs) takes it when the call returns."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    pid = os.getpid()

    def stop(signum, frame):
        signal.signal(signum, signal.SIG_DFL)
        if os.getpid() != pid:  # a process forked before it could reset the handler: the default action
            os.kill(os.getpid(), signum)
            return
        print(
            f"sevlm train: terminated (SIGTERM); continue with: sevlm train --resume {run_dir}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sweep_temporaries(run_dir: Path) -> None:
    """Remove what atomic writes that a kill cut short left in the run folder (`.NAME.XXXX.tmp`
    files and folders beside log.jsonl, run.json, the pointers, the exports...). Rank 0 calls it
    while it holds the run folder, before it writes anything, and while no other rank writes.
    `.NAME.old.XXXX.tmp` holds the last complete copy of a folder killed mid-swap: `atomic_dir`
    puts it back on its next write, so it stays."""
    for folder in (run_dir, run_dir / CKPT_DIR, run_dir / "ranks"):
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            if ".old." in path.name:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
