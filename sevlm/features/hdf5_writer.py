"""Writing the HDF5 feature store (`extract_features`): every image of a dataset folder encoded once
with a frozen image encoder; the layout and the readers are `sevlm.features.hdf5`'s.

Crash safety: extraction writes `F.h5.partial`, appends whole batches, then updates the
progress counters and flushes. After a crash (kill -9 or a full disk included) the same command
reopens the partial file, checks that encoder and image list are unchanged, checks the stored
names against the image list, and redoes the last recorded batch (a failed flush may have left
its counters written but its rows not), continuing at a batch boundary of the same sorted list,
so the result equals an uninterrupted run. Only a finished file replaces F.h5, with
complete=True; readers refuse anything else. A partial file is never truncated: one that cannot
be read is moved aside to `F.h5.partial.damaged`.

One writer per output: `F.h5.lock` is claimed with a POSIX lock (sevlm.locks), which DataLoader
workers do not inherit and which dies with its process, and the HDF5 file is opened only after
the workers have started, so orphaned workers of a killed run never block a restart.

Distributed (`torchrun ... -m sevlm.cli extract`, or RANK/WORLD_SIZE): rank K of N encodes a
contiguous share of the sorted list, cut at batch boundaries (so its batches are exactly those of
a single process), into `F.h5.part-K-of-N` by the same resumable path; whichever rank finishes
last merges the parts, in rank order, into F.h5, equal to a single-process file.
"""

from __future__ import annotations

import functools
import glob
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sevlm.data.folder import (
    dataset_image_names,
    dataset_images_dir,
    dataset_manifest_sha256,
    image_list_sha256,
    resolve_image,
)
from sevlm.encoders.base import ImageError, load_pixels
from sevlm.errors import ConfigError, DataError
from sevlm.features.common import launcher_rank
from sevlm.features.hdf5 import CHECKSUM, FORMAT, FORMAT_VERSION, decode_attr, partial_path, read_strings
from sevlm.io import ensure_parent
from sevlm.locks import InUseError, claim
from sevlm.workers import end_with_parent

_DELAY_ENV = "SEVLM_EXTRACT_TEST_DELAY"


def _versions() -> dict:
    import PIL

    import sevlm

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


def _open(path: Path, mode: str) -> h5py.File:
    # HDF5's own flock would be shared with forked workers; sevlm.locks guards the writers instead
    return h5py.File(path, mode, locking=False)


_CHECKSUM_ENV = "SEVLM_FEATURES_NO_CHECKSUM"  # tools/bench_data.py only: write a file without checksums, to time both


def _create_partial(path: Path, attrs: dict, T: int, D: int) -> None:
    check = not os.environ.get(_CHECKSUM_ENV)
    with _open(path, "x") as f:  # "x": never truncate a file that is there
        str_dt = h5py.string_dtype("utf-8")
        f.create_dataset(
            "tokens", shape=(0, T, D), maxshape=(None, T, D), dtype="float16", chunks=(1, T, D), fletcher32=check
        )
        f.create_dataset(
            "pooled",
            shape=(0, D),
            maxshape=(None, D),
            dtype="float16",
            chunks=(max(1, min(1024, 65536 // D)), D),
            fletcher32=check,
        )
        # (HDF5 filters cannot apply to variable-length strings: the names carry no checksum)
        f.create_dataset("names", shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(1024,))
        g = f.create_group("failed")
        g.create_dataset("names", shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(256,))
        g.create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(256,))
        for k, v in attrs.items():
            f.attrs[k] = v
        if check:
            f.attrs["checksum"] = CHECKSUM
        f.attrs["complete"] = False
        f.attrs["n_done"] = 0
        f.attrs["n_rows"] = 0
        f.attrs["n_failed"] = 0


def _resume_point(f: h5py.File, names: list[str], first: int, batch_size: int) -> tuple[int, int, int, str | None]:
    """(images done, rows, failures) to keep, and a note if stored names disagreed with the list.

    The stored rows and failures must be exactly names[first:first + n_done], in order. Kept:
    everything before the batch holding the first image not confirmed that way, or, if all are
    confirmed, before the last recorded batch (its counters may have outlived a failed flush).
    """
    n_done, n_rows, n_failed = int(f.attrs["n_done"]), int(f.attrs["n_rows"]), int(f.attrs["n_failed"])
    rows = read_strings(f["names"], n_rows)
    failed = read_strings(f["failed/names"], n_failed)
    r = q = good = 0
    marks = {0: (0, 0)}  # images done -> (rows, failures) at each batch boundary
    while good < n_done and first + good < len(names):
        expected = names[first + good]
        if r < len(rows) and rows[r] == expected:
            r += 1
        elif q < len(failed) and failed[q] == expected:
            q += 1
        else:
            break
        good += 1
        if good % batch_size == 0:
            marks[good] = (r, q)
    note = None
    if good < n_done:
        note = f"stored names stop matching the image list at {names[first + good]!r}"
    keep = (good - 1) // batch_size * batch_size if good else 0
    return (keep, *marks[keep], note)


def _prepare_partial(partial: Path, attrs: dict, T: int, D: int, names: list[str], first: int, batch_size: int) -> int:
    """Create `partial`, or trim an existing one to its resume point; returns the images already done."""
    if partial.exists():
        try:
            with _open(partial, "r+") as f:
                for key in ("format_version", "encoder_config", "image_list_sha256", "batch_size", "part"):
                    found = f.attrs.get(key)
                    if found != attrs.get(key):
                        raise DataError(
                            f"{partial}: an unfinished extraction with a different {key} is in the way (it has "
                            f"{decode_attr(found)!r}, this run {decode_attr(attrs.get(key))!r}); delete it or use the "
                            "same settings to resume"
                        )
                done, n_rows, n_failed, note = _resume_point(f, names, first, batch_size)
                if note:
                    warnings.warn(f"{partial}: {note}; continuing from image {done} of this run's list")
                for name in ("tokens", "pooled", "names"):
                    f[name].resize(n_rows, axis=0)
                for name in ("failed/names", "failed/reasons"):
                    f[name].resize(n_failed, axis=0)
                f.attrs.update({"n_done": done, "n_rows": n_rows, "n_failed": n_failed, "complete": False})
            return done
        except DataError:
            raise
        except Exception as e:  # a crash inside an HDF5 flush can leave the file unreadable
            aside = partial.with_name(partial.name + ".damaged")
            os.replace(partial, aside)
            warnings.warn(
                f"{partial}: damaged partial file ({type(e).__name__}: {e}); kept as {aside.name}, starting over"
            )
    _create_partial(partial, attrs, T, D)
    return 0


def _append(ds, values) -> None:
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


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
    from tqdm import tqdm

    partial = partial_path(path)
    start = _prepare_partial(partial, attrs, encoder.num_tokens, encoder.dim, names, first, batch_size)
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
        with _open(partial, "r+") as f:
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
                    _append(f["tokens"], tokens16.numpy())
                    _append(f["pooled"], pooled16.numpy())
                    _append(f["names"], [names[i] for i in indices])
                    n_encoded += len(indices)
                if failed:
                    _append(f["failed/names"], [names[i] for i, _ in failed])
                    _append(f["failed/reasons"], [reason for _, reason in failed])
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


def part_path(out_path: str | Path, rank: int, world_size: int) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.name}.part-{rank}-of-{world_size}")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def rank_share(num_images: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[first, stop) of the sorted image list for `rank`: contiguous, cut at batch boundaries."""
    num_batches = -(-num_images // batch_size)
    lo, hi = rank * num_batches // world_size, (rank + 1) * num_batches // world_size
    return min(lo * batch_size, num_images), min(hi * batch_size, num_images)


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
    from sevlm.encoders import build_encoder

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
        _check_other_parts(out_path, attrs, world_size)
    first, stop = rank_share(len(names), batch_size, rank, world_size)
    target = out_path if world_size == 1 else part_path(out_path, rank, world_size)
    part_attrs = (
        attrs
        if world_size == 1
        else {**attrs, "part": _attr_json({"rank": rank, "world_size": world_size, "first": first, "stop": stop})}
    )

    t0 = time.perf_counter()
    with claim(_lock_path(target), target):
        if target.exists() and world_size > 1:
            start, n_encoded = stop - first, 0  # this rank's part is done: go on to the merge
        else:
            start, n_encoded = _encode_into(
                target, part_attrs, encoder, names, images_dir, first, stop, batch_size, num_workers, device, progress
            )
        with _open(target, "r") as f:
            failures = dict(zip(read_strings(f["failed/names"]), read_strings(f["failed/reasons"])))
            n_rows = int(f["tokens"].shape[0])
    waiting = (
        [k for k in range(world_size) if not part_path(out_path, k, world_size).exists()] if world_size > 1 else []
    )
    merged = world_size == 1 or (not waiting and _merge_parts(out_path, attrs, world_size, progress))
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


_PART_KEYS = ("encoder_config", "image_list_sha256", "batch_size")  # what the parts of one store share


def _check_other_parts(out_path: Path, attrs: dict, world_size: int) -> None:
    """Refuse up front, not at the merge, when part files from other settings are in the way."""
    pattern = re.compile(re.escape(out_path.name) + r"\.part-(\d+)-of-(\d+)(\.partial)?")
    for p in sorted(out_path.parent.glob(glob.escape(out_path.name) + ".part-*")):
        m = pattern.fullmatch(p.name)
        if not m:
            continue
        if int(m[2]) != world_size:
            raise DataError(
                f"{p}: a part of a {m[2]}-rank extraction is in the way; finish it with --world-size {m[2]} "
                f"(same other flags) or delete its part files"
            )
        try:
            with _open(p, "r") as f:
                found = {key: decode_attr(f.attrs.get(key)) for key in _PART_KEYS}
        except Exception:  # a damaged partial is its own rank's business
            continue
        for key in _PART_KEYS:
            if found[key] != decode_attr(attrs[key]):
                raise DataError(
                    f"{p}: made with a different {key} (it has {found[key]!r}, this run {decode_attr(attrs[key])!r}); "
                    f"use the same flags on every rank, or delete the part files"
                )


def _merge_parts(out_path: Path, attrs: dict, world_size: int, progress: bool) -> bool:
    """Concatenate the finished part files, in rank order, into `out_path`; False if another rank
    is merging or already has. Parts are removed only once `out_path` is in place."""
    try:
        with claim(_lock_path(out_path), out_path):
            return _merge_claimed(out_path, attrs, world_size, progress)
    except InUseError:
        return False  # another rank is merging


def _merge_claimed(out_path: Path, attrs: dict, world_size: int, progress: bool, block: int = 256) -> bool:
    parts = [part_path(out_path, k, world_size) for k in range(world_size)]
    if not all(p.exists() for p in parts):
        return False  # merged meanwhile by another rank
    T, D = (int(x) for x in attrs["token_shape"])
    merging = out_path.with_name(out_path.name + ".merging")
    merging.unlink(missing_ok=True)  # a merge killed halfway is simply redone
    _create_partial(merging, attrs, T, D)
    try:
        _concatenate(merging, parts, attrs, progress, block)
    except BaseException:
        merging.unlink(missing_ok=True)
        raise
    os.replace(merging, out_path)
    for p in parts:
        p.unlink()
    return True


def _concatenate(merging: Path, parts: list[Path], attrs: dict, progress: bool, block: int) -> None:
    from tqdm import tqdm

    bar = tqdm(
        total=int(attrs["num_images_listed"]), desc="merge parts", unit="img", disable=not progress, file=sys.stderr
    )
    with _open(merging, "r+") as out:
        for p in parts:
            with _open(p, "r") as f:
                for key in _PART_KEYS:
                    if f.attrs.get(key) != attrs[key]:
                        raise DataError(
                            f"{p}: made with a different {key} than this run; delete the part files and extract again"
                        )
                n = f["tokens"].shape[0]
                for i in range(0, n, block):  # blockwise: parts may be larger than memory
                    for name in ("tokens", "pooled", "names"):
                        _append(out[name], f[name][i : i + block])
                    bar.update(min(block, n - i))
                for name in ("failed/names", "failed/reasons"):
                    _append(out[name], f[name][()])
                bar.update(f["failed/names"].shape[0])
        bar.close()
        out.attrs["n_rows"] = out["tokens"].shape[0]
        out.attrs["n_failed"] = out["failed/names"].shape[0]
        out.attrs["n_done"] = int(out.attrs["n_rows"]) + int(out.attrs["n_failed"])
        if int(out.attrs["n_done"]) != int(attrs["num_images_listed"]):
            raise DataError(
                f"{parts[0].parent}: the part files hold {int(out.attrs['n_done'])} of {attrs['num_images_listed']} "
                "images; "
                f"delete them and extract again"
            )
        out.attrs["complete"] = True
