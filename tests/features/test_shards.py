"""WebDataset shards: round trip, manifest, ranks x workers, shuffling, corrupt shards, commands."""

from __future__ import annotations

import argparse
import json
import random
import warnings

import pytest
import torch
from featurekit import random_image, write_dataset
from PIL import Image
from torch.utils.data import DataLoader

from sevlm.encoders import build_encoder
from sevlm.errors import DataError
from sevlm.features.hdf5 import H5FeatureDataset
from sevlm.features.hdf5_writer import extract_features
from sevlm.features.shard_writer import write_shards
from sevlm.features.shards import shard_pipeline
from sevlm.io import sha256_file


@pytest.fixture
def features(tmp_path):
    """23 images, all in train, extracted with tiny-random -> (features path, dataset dir, images dir)."""
    rng = random.Random(5)
    images_dir, dataset_dir = tmp_path / "images", tmp_path / "ds"
    names = []
    for k in range(23):
        name = f"Style{k % 2}/work.{k:02d}.v2.jpg"  # dots in names: tar keys must not be built from them
        (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
        random_image(rng).save(images_dir / name)
        names.append(name)
    write_dataset(dataset_dir, names, images_dir, splits=("train",))
    out = tmp_path / "f.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=8, progress=False)
    return out, dataset_dir, images_dir


def test_round_trip_image_to_hdf5_to_shards_to_batch_keeps_values(features, tmp_path):
    h5, dataset_dir, images_dir = features
    entry = write_shards(h5, dataset_dir, "train", tmp_path / "shards", max_samples_per_shard=5, progress=False)
    assert [s["num_samples"] for s in entry["shards"]] == [5, 5, 5, 5, 3]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["manifest.json"] + [
        f"train-{i:06d}.tar" for i in range(5)
    ]

    samples = list(shard_pipeline(tmp_path / "shards", "train", shuffle=False))
    by_id = {}
    for s in samples:
        assert s["tokens"].shape == (16, 32) and s["tokens"].dtype == torch.float32 and s["pooled"].shape == (32,)
        by_id[s["image_id"]] = s
    h5ds = H5FeatureDataset(h5, dataset_dir, "train")
    assert sorted(by_id) == sorted(s["image_id"] for s in h5ds) and len(by_id) == 23
    enc = build_encoder("tiny-random")
    for s in h5ds:
        got = by_id[s["image_id"]]
        assert torch.equal(got["tokens"], s["tokens"]) and torch.equal(got["pooled"], s["pooled"])
        for k in ("__key__", "image_name", "emotions", "explanations", "emotion_distribution", "dominant_emotion"):
            assert got[k] == s[k], k
        # and both equal a fresh encoding of the image file, rounded to float16 as stored
        tokens, _ = enc(enc.preprocess(Image.open(images_dir / s["image_name"]))[None])
        assert torch.equal(got["tokens"], tokens[0].half().float())


def test_manifest_records_counts_checksums_encoder_and_keeps_other_splits(features, tmp_path):
    h5, dataset_dir, _ = features
    out = tmp_path / "shards"
    write_shards(h5, dataset_dir, "train", out, max_samples_per_shard=4, progress=False)
    (dataset_dir / "val.json").write_text((dataset_dir / "train.json").read_text())
    write_shards(h5, dataset_dir, "val", out, max_samples_per_shard=10, progress=False)
    write_shards(h5, dataset_dir, "train", out, max_samples_per_shard=12, progress=False)  # fewer shards now
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "sevlm-shards" and m["features"]["encoder"] == "tiny-random"
    assert m["features"]["token_shape"] == [16, 32] and m["features"]["encoder_config"]["seed"] == 0
    assert set(m["splits"]) == {"train", "val"}
    train = m["splits"]["train"]
    assert [s["num_samples"] for s in train["shards"]] == [12, 11] and train["num_samples"] == 23
    assert sorted(p.name for p in out.glob("train-*.tar")) == [
        "train-000000.tar",
        "train-000001.tar",
    ]  # stale ones gone
    for s in train["shards"] + m["splits"]["val"]["shards"]:
        assert sha256_file(out / s["name"]) == s["sha256"]
    assert len(train["dataset"]["manifest_sha256"]) == 64


def _ids_seen(shard_dir, world_size, rank, num_workers, **kw):
    pipe = shard_pipeline(shard_dir, "train", world_size=world_size, rank=rank, **kw)
    loader = DataLoader(pipe, batch_size=None, num_workers=num_workers)
    return [s["image_id"] for s in loader], pipe.samples_per_rank


def test_two_ranks_by_two_workers_see_disjoint_complete_equal_data(features, tmp_path):
    h5, dataset_dir, _ = features
    write_shards(
        h5, dataset_dir, "train", tmp_path / "shards", max_samples_per_shard=3, progress=False
    )  # 8 shards: 7x3 + 2
    seen = {r: _ids_seen(tmp_path / "shards", 2, r, 2, shuffle=True, seed=1, epoch=0) for r in (0, 1)}
    (ids0, n0), (ids1, n1) = seen[0], seen[1]
    assert len(ids0) == len(ids1) == n0 == n1 == 12  # equal per rank: the 11-sample rank repeats one
    assert set(ids0).isdisjoint(ids1)
    assert len(set(ids0) | set(ids1)) == 23  # complete
    assert len(ids0) + len(ids1) - 23 == 1  # exactly one padding repeat in the epoch

    again = _ids_seen(tmp_path / "shards", 2, 0, 2, shuffle=True, seed=1, epoch=0)[0]
    other_epoch = _ids_seen(tmp_path / "shards", 2, 0, 2, shuffle=True, seed=1, epoch=1)[0]
    assert again == ids0 and other_epoch != ids0


def test_ranks_need_a_shard_each(features, tmp_path):
    h5, dataset_dir, _ = features
    write_shards(h5, dataset_dir, "train", tmp_path / "shards", max_samples_per_shard=100, progress=False)
    with pytest.raises(DataError, match="1 shard\\(s\\) for 2 ranks"):
        shard_pipeline(tmp_path / "shards", "train", world_size=2, rank=0)


def test_corrupt_shard_error_names_it_or_is_skipped_with_a_warning(features, tmp_path):
    h5, dataset_dir, _ = features
    out = tmp_path / "shards"
    write_shards(h5, dataset_dir, "train", out, max_samples_per_shard=6, progress=False)  # 6, 6, 6, 5
    bad = out / "train-000001.tar"
    data = bad.read_bytes()
    bad.write_bytes(data[:3000])  # truncated mid-sample: caught by the size check before reading
    with pytest.raises(DataError, match=r"train-000001\.tar: shard 3000 bytes, the manifest says"):
        shard_pipeline(out, "train", shuffle=False)
    with pytest.warns(UserWarning, match=r"partial: 1 of 4 shards missing or resized, skipped .*train-000001\.tar"):
        samples = list(shard_pipeline(out, "train", shuffle=False, handle_errors="warn"))
    assert len(samples) == 17 and len({s["image_id"] for s in samples}) == 17  # the 3 other shards

    # same size, damaged inside (a tar header overwritten): its checksum fails before any sample is read
    bad.write_bytes(data[: 512 * 3] + b"\xff" * 512 + data[512 * 4 :])
    with pytest.raises(DataError, match=r"train-000001\.tar: shard content differs from the manifest \(sha256"):
        list(shard_pipeline(out, "train", shuffle=True, seed=3))
    with pytest.warns(UserWarning, match=r"train-000001\.tar: shard content differs.*skipping the rest of this shard"):
        samples = list(shard_pipeline(out, "train", shuffle=False, handle_errors="warn"))
    assert (
        len(samples) == 23 and len({s["image_id"] for s in samples}) == 17
    )  # quota kept by repeats, none from the bad one
    (out / "train-000002.tar").unlink()
    with pytest.raises(DataError, match=r"train-000002\.tar: shard missing; rewrite"):
        shard_pipeline(out, "train")


@pytest.mark.slow
def test_a_same_size_shard_with_other_content_is_refused_naming_it(features, tmp_path):
    """Issue 12 (8): the manifest's sha256 is checked when a shard is first read. Old code decoded
    the altered values and trained on them silently."""
    h5, dataset_dir, _ = features
    out = tmp_path / "shards"
    write_shards(h5, dataset_dir, "train", out, max_samples_per_shard=6, progress=False)
    clean = {s["image_id"]: s["tokens"] for s in shard_pipeline(out, "train", shuffle=False)}
    shard = out / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    at = (
        data.index(b"\x93NUMPY", data.index(b".tokens.npy")) + 200
    )  # in the first tokens.npy payload: still a valid tar and array
    data[at : at + 64] = bytes(b ^ 0x11 for b in data[at : at + 64])
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-000002\.tar: shard content differs from the manifest"):
        list(DataLoader(shard_pipeline(out, "train", shuffle=True, seed=1), batch_size=None, num_workers=2))
    # what the old reader did: the tar still decodes, with other values
    changed = [s for s in _tar_samples(shard) if not torch.equal(s["tokens"], clean[s["image_id"]])]
    assert len(changed) == 1


def _tar_samples(path):
    import webdataset as wds

    from sevlm.features.shards import decode_sample

    return [decode_sample(raw) for raw in wds.tariterators.tarfile_samples([{"url": str(path)}])]


@pytest.mark.slow
def test_each_shard_is_hashed_once_across_epochs_and_workers(features, tmp_path, monkeypatch):
    import hashlib

    from sevlm.features import shards as shards_module

    h5, dataset_dir, _ = features
    write_shards(h5, dataset_dir, "train", tmp_path / "shards", max_samples_per_shard=6, progress=False)
    opened = shards_module.open_shards(tmp_path / "shards", "train")
    hashed = []
    real = hashlib.sha256
    monkeypatch.setattr(shards_module.hashlib, "sha256", lambda b: hashed.append(len(b)) or real(b))
    for epoch in range(3):  # in-process, then 2 worker processes (forked: the flags are shared memory)
        pipe = shard_pipeline(opened, shuffle=True, epoch=epoch)
        assert len(list(DataLoader(pipe, batch_size=None, num_workers=2 if epoch else 0))) == 23
    assert opened.verified.tolist() == [True] * 4
    assert len(hashed) == 4  # in this process; worker processes found every flag already set
    fresh = shards_module.open_shards(tmp_path / "shards", "train")
    assert list(DataLoader(shard_pipeline(fresh, epoch=0), batch_size=None, num_workers=2))
    assert fresh.verified.tolist() == [True] * 4  # set by the workers, seen here


@pytest.mark.slow
def test_partial_shard_sets_warn_with_the_counts(features, tmp_path):
    """Issue 12: training from partial shards warns with the count."""
    h5, dataset_dir, _ = features
    out = tmp_path / "shards"
    write_shards(h5, dataset_dir, "train", out, max_samples_per_shard=6, progress=False)  # 6, 6, 6, 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shard_pipeline(out, "train")  # complete: no warning
    # a shard file the manifest does not list (another run's), and a killed distributed run's part folder
    (out / "train-000007.tar").write_bytes((out / "train-000000.tar").read_bytes())
    (out / ".train.part-1-of-2").mkdir()
    with pytest.warns(
        UserWarning,
        match=r"split 'train' is partial: 1 shard file\(s\) in .* not in the manifest, "
        r"ignored \(train-000007\.tar\); an unfinished `sevlm shard` run left 1 part",
    ):
        assert shard_pipeline(out, "train").samples_per_rank == 23
    # a manifest listing more shards than exist
    (out / "train-000003.tar").unlink()
    with pytest.raises(DataError, match=r"train-000003\.tar: shard missing"):
        shard_pipeline(out, "train")
    with pytest.warns(
        UserWarning, match=r"1 of 4 shards missing or resized, skipped .*reading 3 of its 4 shards \(18 of 23 samples\)"
    ):
        assert shard_pipeline(out, "train", handle_errors="warn").samples_per_rank == 18
    # a pattern naming fewer shards than the manifest
    with pytest.warns(UserWarning, match=r"reading 2 of its 4 shards \(12 of 23 samples\)"):
        pipe = shard_pipeline(str(out / "train-{000000..000001}.tar"), "train")
    assert len(list(pipe)) == 12


def _run_command(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_extract_and_shard_commands_print_summaries_with_failed_images(tmp_path, capsys):
    from sevlm.commands import extract, shard

    rng = random.Random(0)
    images_dir, dataset_dir = tmp_path / "images", tmp_path / "ds"
    names = [f"A/img{k}.jpg" for k in range(5)]
    for n in names:
        (images_dir / n).parent.mkdir(parents=True, exist_ok=True)
        random_image(rng).save(images_dir / n)
    (images_dir / "A/img3.jpg").write_text("not a jpeg")
    write_dataset(dataset_dir, names, images_dir, splits=("train",))
    h5 = tmp_path / "f.h5"
    assert (
        _run_command(
            extract, ["--dataset", str(dataset_dir), "--encoder", "tiny-random", "--out", str(h5), "--workers", "0"]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "4 of 5 images" in text and "A/img3.jpg: not an image" in text
    assert (
        _run_command(
            shard,
            [
                "--features",
                str(h5),
                "--dataset",
                str(dataset_dir),
                "--split",
                "train",
                "--out",
                str(tmp_path / "sh"),
                "--samples-per-shard",
                "2",
            ],
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "4 samples in 2 shard(s)" in text and "A/img3: not an image" in text
