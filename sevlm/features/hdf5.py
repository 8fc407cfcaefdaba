"""HDF5 feature store: every image encoded once, stored as float16 tokens, read by name.
This module holds the format and the readers (`FeatureStore`, `H5FeatureDataset`).

Layout of F.h5 (all attributes JSON-readable; see `FeatureStore.attrs`):
    tokens   [N, T, D] float16, chunked one image per chunk (random access by the readers)
    pooled   [N, D]    float16
    names    [N]       UTF-8 image names as in the dataset JSON, sorted
    failed/names, failed/reasons   images that could not be used, and why
    attrs: format, encoder, encoder_config, preprocessing, dtype, token_shape, versions,
           image_list_sha256, dataset manifest hash, complete, progress counters, checksum

Checksums: `tokens` and `pooled` are written with HDF5's fletcher32 filter (attribute checksum =
"fletcher32"), a checksum per chunk, i.e. per image for `tokens`, that HDF5 checks on every
read; a mismatch is a DataError naming the image (`FeatureStore.tokens/pooled`).
`FeatureStore.content_sha256` reads every row through those checks (the training fingerprint, so
a damaged or rewritten cache is named at the start of a run and refused at --resume). Files
written before the checksum carry none; they still read, unchecked (`checksum` absent).

Written by `sevlm.features.hdf5_writer.extract_features`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
from torch.utils.data import Dataset

from sevlm.data.folder import load_split_records
from sevlm.errors import DataError
from sevlm.features.common import make_sample

FORMAT = "sevlm-features"
FORMAT_VERSION = 1
CHECKSUM = "fletcher32"


def partial_path(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".partial")


def read_strings(ds, n: int | None = None) -> list[str]:
    values = ds[()] if n is None else ds[:n]
    return [s.decode("utf-8") if isinstance(s, bytes) else s for s in values]


class FeatureStore:
    """Read side of F.h5: names, attributes, and features by row or by image name.

    The HDF5 handle opens lazily in each process, so a store can be handed to DataLoader workers.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            hint = (
                " (an unfinished extraction exists: rerun `sevlm extract` to finish it)"
                if partial_path(self.path).exists()
                else ""
            )
            raise DataError(f"{self.path}: feature file not found{hint}")
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path}: not a readable HDF5 file ({e})") from None
        with f:
            self._check_open(f)

    def _check_open(self, f: h5py.File) -> None:
        try:
            if f.attrs.get("format") != FORMAT:
                raise DataError(f"{self.path}: not a sevlm feature file (format attribute {f.attrs.get('format')!r})")
            if not bool(f.attrs.get("complete", False)):
                raise DataError(
                    f"{self.path}: incomplete feature file ({int(f.attrs.get('n_done', 0))} of "
                    f"{int(f.attrs.get('num_images_listed', 0))} images); finish it with `sevlm extract`"
                )
            self.attrs = {k: decode_attr(v) for k, v in f.attrs.items()}
            self.names = read_strings(f["names"])
            self.failed = dict(zip(read_strings(f["failed/names"]), read_strings(f["failed/reasons"])))
        except OSError as e:  # a damaged list of names (its checksum) or metadata
            raise DataError(
                f"{self.path}: damaged feature file, its image list cannot be read "
                f"({' '.join(str(e).split())}); extract it again"
            ) from None
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

    def _damaged(self, what: str, idx: int, e: OSError) -> DataError:
        why = "fail their fletcher32 checksum" if self.checksummed else "cannot be read"
        return DataError(
            f"{self.path}: image {self.names[idx]!r} (row {idx}): its {what} {why} "
            f"(HDF5: {' '.join(str(e).split()) or type(e).__name__}); the file is damaged: extract it again "
            "(sevlm extract --overwrite) or restore it from a copy"
        )

    def tokens(self, idx: int) -> np.ndarray:
        try:
            return self._h5()["tokens"][idx]  # (T, D) float16; HDF5 checks the chunk's fletcher32
        except OSError as e:
            raise self._damaged("tokens", idx, e) from None

    def pooled(self, idx: int) -> np.ndarray:
        try:
            return self._h5()["pooled"][idx]  # (D,) float16
        except OSError as e:
            raise self._damaged("pooled features", idx, e) from None

    @property
    def checksummed(self) -> bool:
        return self.attrs.get("checksum") == CHECKSUM

    def content_sha256(self, block: int = 256) -> str:
        """sha256 over the attributes, names and every row's features, read through HDF5's
        checksums (a damaged image raises the DataError that names it)."""
        h = hashlib.sha256(
            json.dumps([{k: str(v) for k, v in self.attrs.items()}, self.names], sort_keys=True).encode()
        )
        f = self._h5()
        n = len(self.names)
        for name, read in (("tokens", self.tokens), ("pooled", self.pooled)):
            for i in range(0, n, block):
                try:
                    rows = f[name][i : i + block]
                except OSError:  # find the image at fault
                    for j in range(i, min(n, i + block)):
                        read(j)
                    raise
                h.update(np.ascontiguousarray(rows).tobytes())
        return h.hexdigest()

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None  # handles never cross processes
        return state


def decode_attr(v):
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
    Features come as float32 tensors, or as stored (float16) with `dtype=np.float16` (training).
    With `min_emotions` > 1 only images whose annotations hold that many distinct emotions are
    kept (the authors' training set); `.n_few_emotions` counts those left out.
    """

    def __init__(
        self, features_path: str | Path, dataset_dir: str | Path, split: str, dtype=np.float32, min_emotions: int = 1
    ):
        self.store = FeatureStore(features_path)
        self.split, self.dtype = split, dtype
        records = load_split_records(dataset_dir, split)
        self.items: list[tuple[str, dict, int]] = []
        self.missing: dict[str, str] = {}
        self.n_few_emotions = 0
        for image_id in sorted(records):
            rec = records[image_id]
            if min_emotions > 1 and len(set(rec.get("emotions") or ())) < min_emotions:
                self.n_few_emotions += 1
                continue
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
        return make_sample(image_id, rec, self.store.tokens(row), self.store.pooled(row), dtype=self.dtype)
