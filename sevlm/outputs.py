"""No command writes over its own inputs: `check_outputs` refuses, before any work, an output
path that is one of the command's input files, or that lies inside a folder another command
owns (a training run's `export/` or `checkpoints/`, an export folder, a dataset folder written
by `sevlm prepare`).

Paths are compared after resolving symlinks and `..`, so a second spelling of an input is
caught too. The CLI calls it for every subcommand that writes with `--out` (see cli.GUARDED).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from sevlm.errors import ConfigError

RUN_OWNED = ("export", "checkpoints")  # sub-folders of a run folder that only `sevlm train` writes


def real(path: str | os.PathLike) -> Path:
    """The path with symlinks and `..` resolved (also for a path that does not exist yet)."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def is_dataset_dir(folder: Path) -> bool:
    """A dataset folder written by `sevlm prepare` (its manifest names the input format)."""
    m = folder / "manifest.json"
    return m.is_file() and "input_format" in _json(m)


def is_run_dir(folder: Path) -> bool:
    """A training run folder (config.json and run.json or checkpoints/ beside it)."""
    return (folder / "config.json").is_file() and ((folder / "run.json").is_file() or (folder / "checkpoints").is_dir())


def is_export_dir(folder: Path) -> bool:
    c = folder / "config.json"
    return c.is_file() and str(_json(c).get("format", "")).startswith("sevlm-export")


def owner_of(path: Path) -> str | None:
    """Why `path` (resolved) lies in a folder this command does not own; None when it does not."""
    for folder in [path, *path.parents]:
        if not folder.is_dir():
            continue
        if folder.name in RUN_OWNED and is_run_dir(folder.parent):
            return f"inside the run folder's {folder.name}/ ({folder}), which only `sevlm train` writes"
        if is_export_dir(folder):
            return f"inside the export folder {folder}, which only `sevlm train` writes"
        if is_dataset_dir(folder):
            return f"inside the dataset folder {folder}, which only `sevlm prepare` writes"
    return None


def check_outputs(
    outputs: dict[str, str | os.PathLike],
    inputs: dict[str, str | os.PathLike | None],
    allowed_owner: Iterable[str | os.PathLike] = (),
) -> None:
    """Refuse (ConfigError, before anything is written) an output that is an input file or lies
    in a folder another command owns. `outputs` and `inputs` map a flag (`--out`) to a path;
    `allowed_owner` are folders the command may write into although they look owned."""
    allowed = [real(p) for p in allowed_owner]
    ins = {flag: real(p) for flag, p in inputs.items() if p}
    for flag, out in outputs.items():
        target = real(out)
        for in_flag, src in ins.items():
            if target == src:
                raise ConfigError(
                    f"{flag} {out}: is this command's input ({in_flag} {inputs[in_flag]}); "
                    "write the output elsewhere (nothing was written)"
                )
        if any(target == a or a in target.parents for a in allowed):
            continue
        why = owner_of(target)
        if why:
            raise ConfigError(f"{flag} {out}: {why}; write the output elsewhere (nothing was written)")
