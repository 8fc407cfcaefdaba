"""What both feature readers share: the dataset-folder view and the sample dict the trainer consumes."""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sevlm.constants import SPLITS
from sevlm.errors import ConfigError, DataError
from sevlm.io import read_json, sha256_file

# the annotation fields every sample carries besides the features and keys
ANNOTATION_FIELDS = ("emotions", "explanations", "emotion_distribution", "dominant_emotion")


def load_split_records(dataset_dir: str | Path, split: str) -> dict[str, dict]:
    """`<dataset_dir>/<split>.json` -> {image_id: record}; DataError naming the file if absent/bad."""
    from sevlm.data.artemis import load_split

    records = load_split(dataset_dir, split)
    for image_id, rec in records.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("image_name"), str):
            raise DataError(f"{Path(dataset_dir) / f'{split}.json'}: record {image_id!r} has no string 'image_name'")
    return records


def dataset_image_names(dataset_dir: str | Path) -> list[str]:
    """Sorted union of image_name over the splits present: each image is encoded once."""
    names: set[str] = set()
    found = []
    for split in SPLITS:
        if (Path(dataset_dir) / f"{split}.json").exists():
            found.append(split)
            names.update(rec["image_name"] for rec in load_split_records(dataset_dir, split).values())
    if not found:
        raise DataError(f"{dataset_dir}: no split file ({', '.join(s + '.json' for s in SPLITS)}) found")
    return sorted(names)


def image_list_sha256(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def dataset_manifest_sha256(dataset_dir: str | Path) -> str | None:
    path = Path(dataset_dir) / "manifest.json"
    return sha256_file(path) if path.exists() else None


def dataset_images_dir(dataset_dir: str | Path) -> Path:
    """The image folder recorded by `sevlm prepare` in manifest.json (the default for --images)."""
    path = Path(dataset_dir) / "manifest.json"
    images_dir = read_json(path).get("images_dir") if path.exists() else None
    if not images_dir:
        raise DataError(f"{path}: no 'images_dir' recorded; pass the image folder explicitly (--images DIR)")
    return Path(images_dir)


def resolve_image(images_dir: Path, name: str) -> Path | None:
    """images_dir/name, also trying the NFC and NFD spellings (macOS and some archives store NFD)."""
    for variant in dict.fromkeys((name, unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name))):
        path = images_dir / variant
        if path.is_file():
            return path
    return None


def make_sample(image_id: str, record: dict, tokens: np.ndarray, pooled: np.ndarray, dtype=np.float32) -> dict[str, Any]:
    """The sample dict of DESIGN.md; features become float32 tensors (stored as float16; training
    readers keep float16 until the device with `dtype=np.float16`)."""
    sample = {
        "__key__": image_id,
        "image_id": image_id,
        "image_name": record["image_name"],
        "tokens": torch.from_numpy(np.asarray(tokens, dtype=dtype)),  # (T, D)
        "pooled": None if pooled is None else torch.from_numpy(np.asarray(pooled, dtype=dtype)),  # (D,)
    }
    for field in ANNOTATION_FIELDS:
        sample[field] = record.get(field)
    return sample


def launcher_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size) of this process: the arguments where given, else what torchrun and the
    `deepspeed` launcher export (RANK, WORLD_SIZE), else (0, 1)."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    except ValueError as e:
        raise ConfigError(f"RANK / WORLD_SIZE environment variables must be integers ({e})") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is out of range for world size {world_size} (--rank / --world-size, or RANK / WORLD_SIZE)")
    return rank, world_size
