"""HDF5 feature store: every image encoded once, stored as float16 tokens, read by name.

Layout of F.h5 (all attributes JSON-readable; see `FeatureStore.attrs`):
    tokens   [N, T, D] float16, chunked one image per chunk (random access by the readers)
    pooled   [N, D]    float16
    names    [N]       UTF-8 image names as in the dataset JSON, sorted
    failed/names, failed/reasons   images that could not be used, and why
    attrs: format, encoder, encoder_config, preprocessing, dtype, token_shape, versions,
           image_list_sha256, dataset manifest hash, complete, progress counters

Crash safety: extraction writes `F.h5.partial`, appends whole batches, then updates the
progress counters and flushes. After a crash (kill -9 included) the same command reopens the
partial file, drops any rows past the last recorded counter, checks that encoder and image list
are unchanged, and continues at the next batch boundary of the same sorted list, so the result
equals an uninterrupted run. Only a finished file is renamed to F.h5, with complete=True;
readers refuse anything else.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from sevlm.errors import DataError
from sevlm.features.common import (
    dataset_image_names,
    dataset_images_dir,
    dataset_manifest_sha256,
    image_list_sha256,
    load_split_records,
    make_sample,
    resolve_image,
)

FORMAT = "sevlm-features"
FORMAT_VERSION = 1
# test-only: seconds to sleep after each written batch, so a test can kill -9 mid-run
_DELAY_ENV = "SEVLM_EXTRACT_TEST_DELAY"


def partial_path(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".partial")


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
    if "transformers" in sys.modules:
        v["transformers"] = sys.modules["transformers"].__version__
    return v


def load_image(path: Path | None, name: str, preprocess) -> tuple[torch.Tensor | None, str | None]:
    """Decode + preprocess one image; (pixels, None) or (None, reason) for images that cannot be used."""
    if path is None:
        return None, "file not found"
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        with Image.open(path) as img:
            return preprocess(img), None
    except UnidentifiedImageError:
        return None, "not an image (PIL cannot identify the format)"
    except Image.DecompressionBombError as e:
        return None, f"too large to decode safely: {e}"
    except (OSError, SyntaxError, ValueError) as e:
        # truncated JPEGs ("image file is truncated"), broken PNG chunks, bad headers ...
        return None, f"corrupt or truncated image: {e}"


class ImageFiles(Dataset):
    """names[i] -> (i, pixels [3,H,W] | None, reason | None); decoding runs in DataLoader workers."""

    def __init__(self, names: list[str], images_dir: Path, preprocess, offset: int = 0):
        self.names, self.images_dir, self.preprocess, self.offset = names, Path(images_dir), preprocess, offset

    def __len__(self):
        return len(self.names) - self.offset

    def __getitem__(self, i):
        i += self.offset
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


def _create_partial(path: Path, attrs: dict, T: int, D: int) -> h5py.File:
    f = h5py.File(path, "w")
    str_dt = h5py.string_dtype("utf-8")
    f.create_dataset("tokens", shape=(0, T, D), maxshape=(None, T, D), dtype="float16", chunks=(1, T, D))
    f.create_dataset("pooled", shape=(0, D), maxshape=(None, D), dtype="float16", chunks=(max(1, min(1024, 65536 // D)), D))
    f.create_dataset("names", shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(1024,))
    g = f.create_group("failed")
    g.create_dataset("names", shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(256,))
    g.create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(256,))
    for k, v in attrs.items():
        f.attrs[k] = v
    f.attrs["complete"] = False
    f.attrs["n_done"] = 0
    f.attrs["n_rows"] = 0
    f.attrs["n_failed"] = 0
    f.flush()
    return f


def _reopen_partial(path: Path, attrs: dict) -> h5py.File | None:
    """Reopen a partial file if it was made for the same encoder and image list; None = start over."""
    try:
        f = h5py.File(path, "r+")
    except OSError as e:
        warnings.warn(f"{path}: unreadable partial file ({e}); starting over")
        return None
    for key in ("format_version", "encoder_config", "image_list_sha256", "batch_size"):
        found = f.attrs.get(key)
        if found != attrs[key]:
            f.close()
            raise DataError(
                f"{path}: an unfinished extraction with a different {key} is in the way "
                f"(it has {found!r}, this run {attrs[key]!r}); delete it or use the same settings to resume"
            )
    try:
        n_rows, n_failed = int(f.attrs["n_rows"]), int(f.attrs["n_failed"])
        # rows written after the last recorded progress belong to an unfinished batch: drop them
        for name in ("tokens", "pooled", "names"):
            f[name].resize(n_rows, axis=0)
        for name in ("failed/names", "failed/reasons"):
            f[name].resize(n_failed, axis=0)
    except Exception as e:  # a crash inside an HDF5 flush can leave metadata half-written
        f.close()
        warnings.warn(f"{path}: damaged partial file ({type(e).__name__}: {e}); starting over")
        return None
    return f


def _append(ds, values) -> None:
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


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
) -> dict[str, Any]:
    """Encode every image of the dataset folder once into `out_path` (HDF5); resumable.

    Returns a summary: {"out", "encoder", "num_images", "num_encoded", "num_failed",
    "failed": {name: reason}, "resumed_from", "seconds", "images_per_s"}.
    """
    from tqdm import tqdm

    from sevlm.encoders import build_encoder

    out_path = Path(out_path)
    dataset_dir = Path(dataset_dir)
    images_dir = Path(images_dir) if images_dir else dataset_images_dir(dataset_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    names = dataset_image_names(dataset_dir)
    partial = partial_path(out_path)
    if out_path.exists():
        if not overwrite:
            raise DataError(f"{out_path}: already exists; pass overwrite=True (--overwrite) to rebuild it")
        out_path.unlink()

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

    f = _reopen_partial(partial, attrs) if partial.exists() else None
    if f is None:
        f = _create_partial(partial, attrs, T, D)
    start = int(f.attrs["n_done"])
    delay = float(os.environ.get(_DELAY_ENV, "0") or 0)

    loader = DataLoader(
        ImageFiles(names, images_dir, encoder.preprocess, offset=start),
        batch_size=batch_size,
        shuffle=False,  # the stored order is the sorted name list, batch boundaries included
        num_workers=num_workers,
        collate_fn=_collate,
    )
    t0, n_encoded_now = time.perf_counter(), 0
    bar = tqdm(total=len(names), initial=start, desc=f"extract {encoder.name}", unit="img", disable=not progress, file=sys.stderr)
    try:
        for indices, pixels, failed in loader:
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
                n_encoded_now += len(indices)
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
        if int(f.attrs["n_done"]) != len(names) or f["names"].shape[0] + f["failed/names"].shape[0] != len(names):
            raise DataError(f"{partial}: internal error, {int(f.attrs['n_done'])} of {len(names)} images accounted for")
        f.attrs["complete"] = True
        failures = dict(zip(_strings(f["failed/names"]), _strings(f["failed/reasons"])))
        n_rows = int(f["tokens"].shape[0])
    finally:
        f.close()
    os.replace(partial, out_path)
    seconds = time.perf_counter() - t0
    return {
        "out": str(out_path),
        "encoder": encoder.name,
        "token_shape": [T, D],
        "num_images": len(names),
        "num_encoded": n_rows,
        "num_failed": len(failures),
        "failed": failures,
        "resumed_from": start,
        "seconds": round(seconds, 3),
        "images_per_s": round(n_encoded_now / seconds, 2) if seconds > 0 else None,
    }


def _strings(ds) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else s for s in ds[()]]


class FeatureStore:
    """Read side of F.h5: names, attributes, and features by row or by image name.

    The HDF5 handle opens lazily in each process, so a store can be handed to DataLoader workers.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            hint = " (an unfinished extraction exists: rerun `sevlm extract` to finish it)" if partial_path(self.path).exists() else ""
            raise DataError(f"{self.path}: feature file not found{hint}")
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path}: not a readable HDF5 file ({e})") from None
        with f:
            if f.attrs.get("format") != FORMAT:
                raise DataError(f"{self.path}: not a sevlm feature file (format attribute {f.attrs.get('format')!r})")
            if not bool(f.attrs.get("complete", False)):
                raise DataError(
                    f"{self.path}: incomplete feature file ({int(f.attrs.get('n_done', 0))} of "
                    f"{int(f.attrs.get('num_images_listed', 0))} images); finish it with `sevlm extract`"
                )
            self.attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
            self.names = _strings(f["names"])
            self.failed = dict(zip(_strings(f["failed/names"]), _strings(f["failed/reasons"])))
        self._index = {n: i for i, n in enumerate(self.names)}
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @property
    def token_shape(self) -> tuple[int, int]:
        T, D = self.attrs["token_shape"]
        return int(T), int(D)

    @property
    def encoder(self) -> dict:
        return self.attrs["encoder_config"]

    @property
    def encoder_spec(self) -> dict:
        """{"name", "settings"}: `build_encoder(spec["name"], **spec["settings"])` rebuilds the encoder."""
        return {"name": self.attrs["encoder"], "settings": dict(self.encoder.get("settings") or {})}

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def index_of(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            reason = self.failed.get(name)
            why = f"it failed extraction: {reason}" if reason else "not in the store"
            raise DataError(f"{self.path}: image {name!r} has no features ({why})") from None

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def tokens(self, idx: int) -> np.ndarray:
        return self._h5()["tokens"][idx]  # (T, D) float16

    def pooled(self, idx: int) -> np.ndarray:
        return self._h5()["pooled"][idx]  # (D,) float16

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None  # handles never cross processes
        return state


def _decode_attr(v):
    if isinstance(v, bytes):
        v = v.decode("utf-8")
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


class H5FeatureDataset(Dataset):
    """Map-style dataset over one split, reading features straight from F.h5 (one sample per image).

    Images of the split without features (failed extraction) are left out and listed in `.missing`.
    """

    def __init__(self, features_path: str | Path, dataset_dir: str | Path, split: str):
        self.store = FeatureStore(features_path)
        self.split = split
        records = load_split_records(dataset_dir, split)
        self.items: list[tuple[str, dict, int]] = []
        self.missing: dict[str, str] = {}
        for image_id in sorted(records):
            rec = records[image_id]
            if rec["image_name"] in self.store:
                self.items.append((image_id, rec, self.store.index_of(rec["image_name"])))
            else:
                self.missing[image_id] = self.store.failed.get(rec["image_name"], "not in the feature file")
        if self.missing:
            warnings.warn(
                f"{features_path}: {len(self.missing)} image(s) of split {split!r} have no features and are left out "
                f"(first: {next(iter(self.missing))!r}: {next(iter(self.missing.values()))})"
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        image_id, rec, row = self.items[i]
        return make_sample(image_id, rec, self.store.tokens(row), self.store.pooled(row))
