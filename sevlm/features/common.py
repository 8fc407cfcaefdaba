"""What both feature readers share: the sample dict the trainer consumes, and the launcher's rank."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from sevlm.errors import ConfigError

# the annotation fields every sample carries besides the features and keys
ANNOTATION_FIELDS = ("emotions", "explanations", "emotion_distribution", "dominant_emotion")


def make_sample(
    image_id: str, record: dict, tokens: np.ndarray, pooled: np.ndarray, dtype=np.float32
) -> dict[str, Any]:
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
        raise ConfigError(
            f"rank {rank} is out of range for world size {world_size} (--rank / --world-size, or RANK / WORLD_SIZE)"
        )
    return rank, world_size
