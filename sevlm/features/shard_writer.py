"""Writing WebDataset shards of cached features: `write_shards` turns one split of the HDF5 store
into `{split}-%06d.tar` shards, each sample holding `tokens.npy`, `pooled.npy` (float16, as
stored) and `json` (keys + annotations), and records per-shard counts and sha256 in
`<out_dir>/manifest.json` (one entry per split, written atomically after the shards are in place).
Ranks may write disjoint shard ranges in parallel; the last to finish puts them in place and
writes the manifest entry. The format and the reader: `sevlm.features.shards`.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from sevlm.data.folder import dataset_manifest_sha256, load_split_records
from sevlm.errors import ConfigError, DataError
from sevlm.features.common import launcher_rank
from sevlm.features.hdf5 import FeatureStore
from sevlm.features.shards import FORMAT, FORMAT_VERSION, MANIFEST
from sevlm.io import read_json, sha256_file, write_json
from sevlm.locks import claim

PART_RECORD = "part.json"  # written last into a rank's temporary folder: its shards are complete


def _part_dir(out_dir: Path, split: str, rank: int, world_size: int) -> Path:
    return out_dir / f".{split}.part-{rank}-of-{world_size}"


def pending_shard_parts(out_dir: str | Path, split: str, world_size: int) -> list[int]:
    """Ranks whose share of a distributed `write_shards` is not finished yet."""
    return [k for k in range(world_size) if not (_part_dir(Path(out_dir), split, k, world_size) / PART_RECORD).exists()]


def write_shards(
    features_path: str | Path,
    dataset_dir: str | Path,
    split: str,
    out_dir: str | Path,
    max_samples_per_shard: int = 1000,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any] | None:
    """Write one split as tar shards plus its manifest entry; returns that entry.

    Samples are in sorted image_id order (shuffling happens when reading). Images without
    features (failed extraction) are left out and listed under "missing" in the entry.

    With world_size > 1, call once per rank (e.g. under torchrun): rank K writes a contiguous
    range of the split's shards into `<out_dir>/.{split}.part-K-of-N/`, and whichever rank
    finishes last moves every shard into place and writes the manifest entry (the others return
    None). The shards are the same files as a single process writes. A killed run's temporary
    folders are removed by the next run.
    """
    if max_samples_per_shard < 1:
        raise ConfigError(f"--samples-per-shard must be at least 1 (got {max_samples_per_shard})")
    rank, world_size = launcher_rank(rank, world_size)
    store = FeatureStore(features_path)
    records = load_split_records(dataset_dir, split)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    ids = sorted(records)
    if not ids:
        raise DataError(f"{Path(dataset_dir) / f'{split}.json'}: split {split!r} has no images")
    missing = {
        i: store.failed.get(records[i]["image_name"], "not in the feature file")
        for i in ids
        if records[i]["image_name"] not in store
    }
    ids = [i for i in ids if i not in missing]
    if not ids:
        raise DataError(f"{features_path}: no image of split {split!r} has features")
    chunks = [ids[i : i + max_samples_per_shard] for i in range(0, len(ids), max_samples_per_shard)]
    first, stop = rank * len(chunks) // world_size, (rank + 1) * len(chunks) // world_size
    inputs = {  # what every part must agree on to be put together
        "image_list_sha256": store.attrs.get("image_list_sha256"),
        "encoder_config": store.attrs.get("encoder_config"),
        "split_sha256": sha256_file(Path(dataset_dir) / f"{split}.json"),
        "max_samples_per_shard": max_samples_per_shard,
        "num_shards": len(chunks),
    }

    # write into this rank's own temporary folder; shards move into place only when all are done
    part_dir = _part_dir(out_dir, split, rank, world_size)
    with claim(part_dir.with_name(part_dir.name + ".lock"), part_dir):
        shutil.rmtree(part_dir, ignore_errors=True)  # what a killed run of this rank left
        part_dir.mkdir()
        shards = []
        bar = tqdm(
            total=sum(len(c) for c in chunks[first:stop]), desc=f"shard {split}", unit="sample", disable=not progress
        )
        for s in range(first, stop):
            name = f"{split}-{s:06d}.tar"
            # mtime fixed so that the same input gives byte-identical shards (and sha256)
            with wds.TarWriter(str(part_dir / name), mtime=0, user="sevlm", group="sevlm") as sink:
                for n, image_id in enumerate(chunks[s]):
                    rec = records[image_id]
                    row = store.index_of(rec["image_name"])
                    meta = {"image_id": image_id, "image_name": rec["image_name"]}
                    meta.update(
                        {
                            k: rec.get(k)
                            for k in ("emotions", "explanations", "emotion_distribution", "dominant_emotion")
                        }
                    )
                    sink.write(
                        {
                            # tar keys must not contain dots or slashes: image_id lives in the json
                            "__key__": f"{split}-{s:06d}-{n:06d}",
                            "tokens.npy": np.ascontiguousarray(store.tokens(row)),  # (T, D) float16
                            "pooled.npy": np.ascontiguousarray(store.pooled(row)),  # (D,) float16
                            "json": meta,
                        }
                    )
                    bar.update(1)
            shards.append(
                {
                    "name": name,
                    "num_samples": len(chunks[s]),
                    "sha256": sha256_file(part_dir / name),
                    "bytes": (part_dir / name).stat().st_size,
                }
            )
        bar.close()
        write_json(part_dir / PART_RECORD, {"inputs": inputs, "shards": shards})  # last: marks the part done
    store.close()
    if pending_shard_parts(out_dir, split, world_size):
        return None

    manifest_path = out_dir / MANIFEST
    with claim(out_dir / ".manifest.lock", manifest_path, wait=True):
        if pending_shard_parts(out_dir, split, world_size):
            return None  # another rank has just put the parts together
        shards, moves = [], []
        for k in range(world_size):
            part_dir = _part_dir(out_dir, split, k, world_size)
            part = read_json(part_dir / PART_RECORD)
            if part["inputs"] != inputs:
                raise DataError(
                    f"{part_dir}: written from other inputs than this run "
                    f"(features, split or --samples-per-shard); rerun rank {k} with the same arguments"
                )
            shards += part["shards"]
            moves += [(part_dir / sh["name"], out_dir / sh["name"]) for sh in part["shards"]]
        # swap: unlist the split first, so a crash while shards are replaced leaves no manifest
        # entry pointing at a mix of old and new shards (the reader then says the split is absent)
        manifest = read_json(manifest_path) if manifest_path.exists() else {}
        if split in manifest.get("splits", {}):
            del manifest["splits"][split]
            write_json(manifest_path, manifest)
        for old in out_dir.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
            old.unlink()
        for src, dst in moves:
            os.replace(src, dst)
        # this split's temporary folders, including those of killed runs with another rank count
        # or of older versions (.{split}-XXXXXXXX)
        for tmp in [*out_dir.glob(f".{split}.part-*-of-*"), *out_dir.glob(f".{split}-*")]:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)

        entry = {
            "split": split,
            "num_samples": len(ids),
            "num_shards": len(shards),
            "shards": shards,
            "missing": missing,
            "sample_fields": {
                "tokens.npy": "float16 [T, D]",
                "pooled.npy": "float16 [D]",
                "json": "image_id, image_name, annotations",
            },
            "dataset": {
                "dir": str(Path(dataset_dir).resolve()),
                "manifest_sha256": dataset_manifest_sha256(dataset_dir),
                "split_sha256": inputs["split_sha256"],
            },
        }
        encoder = {
            "encoder": store.attrs.get("encoder"),
            "encoder_config": store.attrs.get("encoder_config"),
            "token_shape": list(store.token_shape),
            "dtype": store.attrs.get("dtype"),
            "image_list_sha256": store.attrs.get("image_list_sha256"),
            "features_path": str(Path(features_path).resolve()),
        }
        if manifest.get("features", {}).get("encoder_config") not in (None, encoder["encoder_config"]):
            # one folder holds one encoder's features: other splits of another encoder would be silently mixed
            stale = [s for s in manifest.get("splits", {}) if s != split]
            warnings.warn(f"{manifest_path}: encoder changed; dropping stale split entries {stale}")
            for s in stale:
                for sh in manifest["splits"][s]["shards"]:
                    (out_dir / sh["name"]).unlink(missing_ok=True)
            manifest["splits"] = {}
        manifest.update({"format": FORMAT, "format_version": FORMAT_VERSION, "features": encoder})
        manifest.setdefault("splits", {})[split] = entry
        write_json(manifest_path, manifest)
    return entry
