"""Writing the HDF5 feature store (`extract_features`): every image of a dataset folder encoded once
with a frozen image encoder; the layout and the readers are `sevlm.features.hdf5`'s. Features are
computed once per image so that training and evaluation never run the image encoder.

Extraction writes `F.h5.partial` (sevlm/features/hdf5_partial.py: resumable after a crash) and
only a finished file replaces F.h5, with complete=True; readers refuse anything else. With
several ranks each writes a part file and the last merges them (sevlm/features/hdf5_parts.py).

One writer per output: `F.h5.lock` is claimed with a POSIX lock (sevlm.locks), which DataLoader
workers do not inherit and which dies with its process, and the HDF5 file is opened only after
the workers have started, so orphaned workers of a killed run never block a restart.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import PIL
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import sevlm
from sevlm.data.folder import (
    dataset_image_names,
    dataset_images_dir,
    dataset_manifest_sha256,
    image_list_sha256,
    resolve_image,
)
from sevlm.encoders import build_encoder
from sevlm.encoders.base import ImageError, load_pixels
from sevlm.errors import ConfigError, DataError
from sevlm.features.common import launcher_rank
from sevlm.features.hdf5 import FORMAT, FORMAT_VERSION, partial_path, read_strings
from sevlm.features.hdf5_partial import append_rows, lock_path, open_h5, prepare_partial
from sevlm.features.hdf5_parts import check_other_parts, merge_parts, part_path, rank_share
from sevlm.io import ensure_parent
from sevlm.locks import claim
from sevlm.workers import end_with_parent

_DELAY_ENV = "SEVLM_EXTRACT_TEST_DELAY"


def _versions() -> dict:
    v = {
        "sevlm": getattr(sevlm, "__version__", "unknown"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "pillow": PIL.__version__,
    }
    try:  # the CLIP encoder's library; read from the install so that every process records the same
        v["transformers"] = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        pass
    return v


def load_image(path: Path | None, name: str, preprocess) -> tuple[torch.Tensor | None, str | None]:
    """Decode + preprocess one image; (pixels, None) or (None, reason) for images that cannot be used."""
    if path is None:
        return None, "file not found"
    try:
        return load_pixels(path, preprocess), None
    except ImageError as e:
        return None, e.reason


class ImageFiles(Dataset):
    """names[i] -> (i, pixels [3,H,W] | None, reason | None) for i in [start, stop); decoding runs in
    DataLoader workers."""

    def __init__(self, names: list[str], images_dir: Path, preprocess, start: int = 0, stop: int | None = None):
        self.names, self.images_dir, self.preprocess = names, Path(images_dir), preprocess
        self.start, self.stop = start, len(names) if stop is None else stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, i):
        i += self.start
        name = self.names[i]
        pixels, reason = load_image(resolve_image(self.images_dir, name), name, self.preprocess)
        return i, pixels, reason


def _collate(items):
    """Keep failures beside the batch instead of letting one bad image break it."""
    ok = [(i, px) for i, px, _ in items if px is not None]
    failed = [(i, reason) for i, px, reason in items if px is None]
    pixels = torch.stack([px for _, px in ok]) if ok else None  # (B_ok, 3, H, W)
    return [i for i, _ in ok], pixels, failed


def _attr_json(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _encode_into(
    path: Path,
    attrs: dict,
    encoder,
    names: list[str],
    images_dir: Path,
    first: int,
    stop: int,
    batch_size: int,
    num_workers: int,
    device: str,
    progress: bool,
) -> tuple[int, int]:
    """Encode names[first:stop] into the feature file `path` (via its .partial); resumable.

    Returns (images already done when this call started, images encoded by this call).
    """
    partial = partial_path(path)
    start = prepare_partial(partial, attrs, encoder.num_tokens, encoder.dim, names, first, batch_size)
    delay = float(os.environ.get(_DELAY_ENV, "0") or 0)
    loader = DataLoader(
        ImageFiles(names, images_dir, encoder.preprocess, start=first + start, stop=stop),
        batch_size=batch_size,
        shuffle=False,  # the stored order is the sorted name list, batch boundaries included
        num_workers=num_workers,
        collate_fn=_collate,
        # a killed extract takes its decoding workers with it (a rerun resumes beside no leftovers)
        worker_init_fn=functools.partial(end_with_parent, os.getpid()) if num_workers else None,
    )
    batches = iter(loader)  # workers fork here, before the HDF5 file is opened: they never hold it
    n_encoded = 0
    bar = tqdm(
        total=stop - first,
        initial=start,
        desc=f"extract {encoder.name}",
        unit="img",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        with open_h5(partial, "r+") as f:
            for indices, pixels, failed in batches:
                if pixels is not None:
                    with torch.inference_mode():
                        tokens, pooled = encoder(pixels.to(device))  # (B, T, D), (B, D)
                    tokens16 = tokens.to("cpu", torch.float16)
                    pooled16 = pooled.to("cpu", torch.float16)
                    # float16 overflows past 65504: check what is stored, not what was computed
                    finite = torch.isfinite(tokens16).flatten(1).all(1) & torch.isfinite(pooled16).all(1)
                    if not bool(finite.all()):
                        bad = [names[i] for i, ok in zip(indices, finite.tolist()) if not ok]
                        raise DataError(
                            f"{encoder.name} produced NaN/inf features for {len(bad)} image(s), first {bad[0]!r}; "
                            f"refused (nothing of this batch was written; {partial} keeps the progress so far)"
                        )
                    append_rows(f["tokens"], tokens16.numpy())
                    append_rows(f["pooled"], pooled16.numpy())
                    append_rows(f["names"], [names[i] for i in indices])
                    n_encoded += len(indices)
                if failed:
                    append_rows(f["failed/names"], [names[i] for i, _ in failed])
                    append_rows(f["failed/reasons"], [reason for _, reason in failed])
                # progress counters last, then flush: a crash before this point loses only this batch
                f.attrs["n_rows"] = f["tokens"].shape[0]
                f.attrs["n_failed"] = f["failed/names"].shape[0]
                f.attrs["n_done"] = int(f.attrs["n_done"]) + len(indices) + len(failed)
                f.flush()
                bar.update(len(indices) + len(failed))
                if delay:
                    time.sleep(delay)
            bar.close()
            if (
                int(f.attrs["n_done"]) != stop - first
                or f["names"].shape[0] + f["failed/names"].shape[0] != stop - first
            ):
                raise DataError(
                    f"{partial}: internal error, {int(f.attrs['n_done'])} of {stop - first} images accounted for"
                )
            f.attrs["complete"] = True
    except OSError as e:  # disk full, quota, I/O error: the progress so far stays resumable
        raise DataError(
            f"{partial}: writing failed ({e}); fix the cause and run the same command again to continue"
        ) from None
    finally:
        del batches  # stops the workers
    os.replace(partial, path)
    return start, n_encoded


def extract_features(
    images_dir: str | Path | None,
    dataset_dir: str | Path,
    encoder_name: str,
    out_path: str | Path,
    batch_size: int = 32,
    num_workers: int = 0,
    encoder_kwargs: dict | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Encode every image of the dataset folder once into `out_path` (HDF5); resumable.

    With world_size > 1, call once per rank (any order, any time): each encodes its share into
    its part file and the last to finish merges (see the module docstring); a rank that died is
    rerun alone with the same arguments.

    Returns a summary: {"out", "encoder", "num_images", "num_encoded", "num_failed",
    "failed": {name: reason}, "resumed_from", "seconds", "images_per_s", "merged", "waiting_for"}
    (with world_size > 1, "num_images" / "num_encoded" / "resumed_from" are this rank's, and
    "merged" says whether this call wrote `out_path`; "waiting_for" lists the ranks not done).
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size})")
    if num_workers < 0:
        raise ConfigError(f"--workers must be 0 or more (got {num_workers})")
    rank, world_size = launcher_rank(rank, world_size)
    out_path = Path(out_path)
    dataset_dir = Path(dataset_dir)
    images_dir = Path(images_dir) if images_dir else dataset_images_dir(dataset_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    names = dataset_image_names(dataset_dir)
    if out_path.is_dir():
        raise DataError(f"{out_path}: is a folder; --out takes a file name")
    if out_path.exists() and not overwrite:
        raise DataError(f"{out_path}: already exists; rerun with --overwrite to rebuild it")
    ensure_parent(out_path)

    # everything is checked before any file is touched: an existing F.h5 is only ever replaced
    # by a complete new one
    encoder = build_encoder(encoder_name, **(encoder_kwargs or {})).to(device)
    config = encoder.describe()
    T, D = encoder.num_tokens, encoder.dim
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder": encoder.name,
        "encoder_config": _attr_json(config),
        "weights_source": str(config.get("weights", "")),
        "preprocessing": _attr_json(config.get("preprocessing", {})),
        "dtype": "float16",
        "token_shape": np.array([T, D], dtype=np.int64),
        "versions": _attr_json(_versions()),
        "image_list_sha256": image_list_sha256(names),
        "num_images_listed": len(names),
        "images_dir": str(images_dir.resolve()),
        "dataset_dir": str(dataset_dir.resolve()),
        "dataset_manifest_sha256": dataset_manifest_sha256(dataset_dir) or "",
        "batch_size": int(batch_size),
    }
    if world_size > 1:
        check_other_parts(out_path, attrs, world_size)
    first, stop = rank_share(len(names), batch_size, rank, world_size)
    target = out_path if world_size == 1 else part_path(out_path, rank, world_size)
    part_attrs = (
        attrs
        if world_size == 1
        else {**attrs, "part": _attr_json({"rank": rank, "world_size": world_size, "first": first, "stop": stop})}
    )

    t0 = time.perf_counter()
    with claim(lock_path(target), target):
        if target.exists() and world_size > 1:
            start, n_encoded = stop - first, 0  # this rank's part is done: go on to the merge
        else:
            start, n_encoded = _encode_into(
                target, part_attrs, encoder, names, images_dir, first, stop, batch_size, num_workers, device, progress
            )
        with open_h5(target, "r") as f:
            failures = dict(zip(read_strings(f["failed/names"]), read_strings(f["failed/reasons"])))
            n_rows = int(f["tokens"].shape[0])
    waiting = (
        [k for k in range(world_size) if not part_path(out_path, k, world_size).exists()] if world_size > 1 else []
    )
    merged = world_size == 1 or (not waiting and merge_parts(out_path, attrs, world_size, progress))
    seconds = time.perf_counter() - t0
    return {
        "out": str(out_path),
        "encoder": encoder.name,
        "token_shape": [T, D],
        "num_images": stop - first,
        "num_encoded": n_rows,
        "num_failed": len(failures),
        "failed": failures,
        "resumed_from": start,
        "seconds": round(seconds, 3),
        "images_per_s": round(n_encoded / seconds, 2) if seconds > 0 else None,
        "rank": rank,
        "world_size": world_size,
        "merged": bool(merged),
        "waiting_for": waiting,
    }
