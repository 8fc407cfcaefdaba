"""One tiny dataset + feature cache (tiny-random encoder) shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    from sevlm.data.artemis import prepare_dataset
    from sevlm.demo import make_demo_data
    from sevlm.features.hdf5_writer import extract_features

    root = tmp_path_factory.mktemp("train_data")
    make_demo_data(root / "raw", n_images=48, seed=0, image_size=32, progress=False)
    prepare_dataset(
        root / "raw" / "artemis_dataset_release_v0.csv",
        root / "dataset",
        images_dir=root / "raw" / "images",
        protocol="sevlm",
    )
    extract_features(None, root / "dataset", "tiny-random", root / "features.h5", progress=False)
    return {"root": root, "dataset": root / "dataset", "features": root / "features.h5"}


@pytest.fixture(scope="session")
def shard_dir(tiny_data, tmp_path_factory) -> Path:
    """The tiny features as shards, train and val."""
    from sevlm.features.shard_writer import write_shards

    out = tmp_path_factory.mktemp("shards")
    for split in ("train", "val"):
        # 5-sample shards: two workers get unequal sample counts, hence unequal batch counts
        write_shards(tiny_data["features"], tiny_data["dataset"], split, out, max_samples_per_shard=5, progress=False)
    return out


@pytest.fixture()
def fresh_pool(monkeypatch):
    """This process's pool of pack buffers, empty (tests that pack in the main process share it)."""
    from sevlm.train import handoff as data

    monkeypatch.setattr(data, "_pool", (-1, [], []))


def tiny_overrides(data: dict, *extra: str) -> list[str]:
    return [f"data.dataset_dir={data['dataset']}", f"data.features={data['features']}", *extra]


@pytest.fixture()
def tiny_config(tiny_data):
    """A TrainConfig factory: the shipped `tiny` config pointed at the tiny data, plus overrides."""
    from sevlm.train import load_train_config

    def make(*extra: str):
        return load_train_config("tiny", tiny_overrides(tiny_data, *extra))

    return make
