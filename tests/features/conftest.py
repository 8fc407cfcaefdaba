"""Fixtures for the feature-cache tests (helpers live in featurekit.py)."""

from __future__ import annotations

import random

import pytest
from featurekit import random_image, write_dataset


@pytest.fixture
def small_dataset(tmp_path):
    """12 good RGB images in two styles + their dataset folder -> (images_dir, dataset_dir, names)."""
    rng = random.Random(0)
    images_dir = tmp_path / "images"
    names = []
    for k in range(12):
        style = "Cubism" if k % 2 else "Rococo"
        name = f"{style}/painter_work-{k:02d}.jpg"
        (images_dir / style).mkdir(parents=True, exist_ok=True)
        random_image(rng).save(images_dir / name, quality=95)
        names.append(name)
    dataset_dir = tmp_path / "dataset"
    write_dataset(dataset_dir, names, images_dir)
    return images_dir, dataset_dir, sorted(names)
