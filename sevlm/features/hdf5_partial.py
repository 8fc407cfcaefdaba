"""The feature file while it is written: `F.h5.partial`, created with its attributes, appended in
whole batches, and trimmed to a batch boundary on resume. Kept apart from the encoding loop because
this is what makes a crashed extraction resumable, and the merge of part files reuses it.

Extraction appends whole batches, then updates the progress counters and flushes. After a crash
(kill -9 or a full disk included) the same command reopens the partial file, checks that encoder
and image list are unchanged, checks the stored names against the image list, and redoes the last
recorded batch (a failed flush may have left its counters written but its rows not), continuing
at a batch boundary of the same sorted list, so the result equals an uninterrupted run. A partial
file is never truncated: one that cannot be read is moved aside to `F.h5.partial.damaged`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py

from sevlm.errors import DataError
from sevlm.features.hdf5 import CHECKSUM, decode_attr, read_strings


def open_h5(path: Path, mode: str) -> h5py.File:
    # HDF5's own flock would be shared with forked workers; sevlm.locks guards the writers instead
    return h5py.File(path, mode, locking=False)


def lock_path(path: Path) -> Path:
    """The lock file that keeps one writer per output file."""
    return path.with_name(path.name + ".lock")


_CHECKSUM_ENV = "SEVLM_FEATURES_NO_CHECKSUM"  # tools/bench_data.py only: write a file without checksums, to time both


def create_partial(path: Path, attrs: dict, T: int, D: int) -> None:
    """A new, empty store at `path` with `attrs`: T tokens of width D per image, no progress yet."""
    check = not os.environ.get(_CHECKSUM_ENV)
    with open_h5(path, "x") as f:  # "x": never truncate a file that is there
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


def prepare_partial(partial: Path, attrs: dict, T: int, D: int, names: list[str], first: int, batch_size: int) -> int:
    """Create `partial`, or trim an existing one to its resume point; returns the images already done."""
    if partial.exists():
        try:
            with open_h5(partial, "r+") as f:
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
    create_partial(partial, attrs, T, D)
    return 0


def append_rows(ds, values) -> None:
    """Grow the resizable dataset `ds` by `values` along its first axis."""
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values
