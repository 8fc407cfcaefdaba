"""Distributed extraction: rank K of N encodes a contiguous share of the sorted image list, cut at
batch boundaries (so its batches are exactly those of a single process), into `F.h5.part-K-of-N`;
whichever rank finishes last merges the parts, in rank order, into F.h5, equal to a
single-process file. Kept apart so the single-process writer reads without the multi-rank rules.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path

from tqdm import tqdm

from sevlm.errors import DataError
from sevlm.features.hdf5 import decode_attr
from sevlm.features.hdf5_partial import append_rows, create_partial, lock_path, open_h5
from sevlm.locks import InUseError, claim


def part_path(out_path: str | Path, rank: int, world_size: int) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.name}.part-{rank}-of-{world_size}")


def rank_share(num_images: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[first, stop) of the sorted image list for `rank`: contiguous, cut at batch boundaries."""
    num_batches = -(-num_images // batch_size)
    lo, hi = rank * num_batches // world_size, (rank + 1) * num_batches // world_size
    return min(lo * batch_size, num_images), min(hi * batch_size, num_images)


PART_KEYS = ("encoder_config", "image_list_sha256", "batch_size")  # what the parts of one store share


def check_other_parts(out_path: Path, attrs: dict, world_size: int) -> None:
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
            with open_h5(p, "r") as f:
                found = {key: decode_attr(f.attrs.get(key)) for key in PART_KEYS}
        except Exception:  # a damaged partial is its own rank's business
            continue
        for key in PART_KEYS:
            if found[key] != decode_attr(attrs[key]):
                raise DataError(
                    f"{p}: made with a different {key} (it has {found[key]!r}, this run {decode_attr(attrs[key])!r}); "
                    f"use the same flags on every rank, or delete the part files"
                )


def merge_parts(out_path: Path, attrs: dict, world_size: int, progress: bool) -> bool:
    """Concatenate the finished part files, in rank order, into `out_path`; False if another rank
    is merging or already has. Parts are removed only once `out_path` is in place."""
    try:
        with claim(lock_path(out_path), out_path):
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
    create_partial(merging, attrs, T, D)
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
    bar = tqdm(
        total=int(attrs["num_images_listed"]), desc="merge parts", unit="img", disable=not progress, file=sys.stderr
    )
    with open_h5(merging, "r+") as out:
        for p in parts:
            with open_h5(p, "r") as f:
                for key in PART_KEYS:
                    if f.attrs.get(key) != attrs[key]:
                        raise DataError(
                            f"{p}: made with a different {key} than this run; delete the part files and extract again"
                        )
                n = f["tokens"].shape[0]
                for i in range(0, n, block):  # blockwise: parts may be larger than memory
                    for name in ("tokens", "pooled", "names"):
                        append_rows(out[name], f[name][i : i + block])
                    bar.update(min(block, n - i))
                for name in ("failed/names", "failed/reasons"):
                    append_rows(out[name], f[name][()])
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
