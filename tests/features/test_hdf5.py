"""HDF5 feature store: values, layout, bad images, NaN refusal, kill -9 and resume."""

from __future__ import annotations

import os
import random
import struct
import unicodedata
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from featurekit import kill_9_after, make_image_dataset, random_image, start_extract, write_dataset
from PIL import Image

from sevlm.encoders import build_encoder
from sevlm.errors import DataError
from sevlm.features.hdf5 import FeatureStore, H5FeatureDataset, partial_path
from sevlm.features.hdf5_writer import extract_features


def test_extract_stores_each_image_once_with_exact_values_and_self_describing_attrs(small_dataset, tmp_path):
    images_dir, dataset_dir, names = small_dataset
    out = tmp_path / "f.h5"
    summary = extract_features(None, dataset_dir, "tiny-random", out, batch_size=5, progress=False)
    assert summary["num_images"] == summary["num_encoded"] == 12 and summary["failed"] == {}
    assert not partial_path(out).exists()

    with h5py.File(out, "r") as f:
        assert f["tokens"].shape == (12, 16, 32) and f["tokens"].dtype == np.float16
        assert f["tokens"].chunks == (1, 16, 32) and f["pooled"].shape == (12, 32)
        assert [n.decode() for n in f["names"][()]] == names  # sorted, once each
        assert f["failed/names"].shape == (0,)
        assert bool(f.attrs["complete"]) and f.attrs["encoder"] == "tiny-random" and f.attrs["dtype"] == "float16"

    store = FeatureStore(out)
    assert store.token_shape == (16, 32) and store.encoder["seed"] == 0
    spec = store.encoder_spec
    assert spec == {"name": "tiny-random", "settings": {"seed": 0, "image_size": 32, "patch_size": 8, "dim": 32}}
    assert build_encoder(spec["name"], **spec["settings"]).describe() == store.encoder
    assert store.attrs["num_images_listed"] == 12 and len(store.attrs["image_list_sha256"]) == 64
    assert {"torch", "h5py", "sevlm"} <= set(store.attrs["versions"]) and store.attrs["preprocessing"][
        "center_crop"
    ] == 32
    enc = build_encoder("tiny-random")
    pixels = torch.stack([enc.preprocess(Image.open(images_dir / n)) for n in names])
    tokens, pooled = enc(pixels)
    for n in names:
        i = store.index_of(n)
        np.testing.assert_array_equal(store.tokens(i), tokens[names.index(n)].half().numpy())
        np.testing.assert_array_equal(store.pooled(i), pooled[names.index(n)].half().numpy())

    ds = H5FeatureDataset(out, dataset_dir, "val")
    assert len(ds) == 4
    s = ds[0]
    assert set(s) >= {
        "__key__",
        "image_id",
        "image_name",
        "tokens",
        "pooled",
        "emotions",
        "explanations",
        "emotion_distribution",
    }
    assert s["tokens"].dtype == torch.float32 and s["tokens"].shape == (16, 32) and len(s["emotion_distribution"]) == 9
    assert s["__key__"] == s["image_id"] and s["image_name"] == s["image_id"] + ".jpg"
    assert torch.equal(s["tokens"], tokens[names.index(s["image_name"])].half().float())


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims width x height: PIL judges its size before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _write_bad_images(images_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Every awkward case of the issue; returns (all names as in the JSON, {name: expected failure})."""
    rng = random.Random(1)
    d = images_dir / "Odd"
    d.mkdir(parents=True)
    random_image(rng).save(d / "good.jpg")
    (d / "zero.jpg").write_bytes(b"")
    jpeg = d / "truncated.jpg"
    random_image(rng, (64, 64)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    (d / "text.jpg").write_text("this is not an image\n")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    random_image(rng, mode="L").save(d / "gray.jpg")
    Image.new("RGBA", (40, 30), (255, 0, 0, 100)).save(d / "alpha.png")
    random_image(rng).convert("P").save(d / "palette.png", transparency=3)
    Image.new("RGB", (8000, 8000), (90, 90, 90)).save(d / "huge.jpg", quality=50)
    (d / "bomb.png").write_bytes(_png_header(30000, 30000))  # 900 Mpx: over PIL's decompression-bomb limit
    nfc = unicodedata.normalize("NFC", "Odd/Zoë Café-Ωmega.jpg")
    random_image(rng).save(images_dir / unicodedata.normalize("NFD", nfc))  # on disk in NFD, NFC in the JSON
    names = [
        "Odd/good.jpg",
        "Odd/zero.jpg",
        "Odd/truncated.jpg",
        "Odd/text.jpg",
        "Odd/cmyk.jpg",
        "Odd/gray.jpg",
        "Odd/alpha.png",
        "Odd/palette.png",
        "Odd/huge.jpg",
        "Odd/bomb.png",
        nfc,
        "Odd/missing.jpg",
    ]
    expected_failures = {
        "Odd/zero.jpg": "empty file",
        "Odd/truncated.jpg": "truncated",
        "Odd/text.jpg": "not an image",
        "Odd/bomb.png": "too large",
        "Odd/missing.jpg": "file not found",
    }
    return names, expected_failures


def test_bad_images_are_decoded_where_possible_else_recorded_with_reasons(tmp_path):
    images_dir, dataset_dir = tmp_path / "images", tmp_path / "ds"
    names, expected = _write_bad_images(images_dir)
    write_dataset(dataset_dir, names, images_dir)
    out = tmp_path / "f.h5"
    summary = extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=4, progress=False)

    assert set(summary["failed"]) == set(expected)
    for name, why in expected.items():
        assert why in summary["failed"][name], (name, summary["failed"][name])
    store = FeatureStore(out)
    assert sorted(store.names) == sorted(set(names) - set(expected)) and len(store) == 7
    assert store.failed == summary["failed"]
    for name in store.names:
        assert np.isfinite(store.tokens(store.index_of(name))).all()
    with pytest.raises(DataError, match="truncated"):
        store.index_of("Odd/truncated.jpg")
    # the split readers leave failed images out and say so
    with pytest.warns(UserWarning, match="have no features"):
        ds = H5FeatureDataset(out, dataset_dir, "train")
    assert len(ds) + len(ds.missing) == 4


def test_nan_or_float16_overflow_features_are_refused(small_dataset, tmp_path, monkeypatch):
    images_dir, dataset_dir, names = small_dataset
    from sevlm.encoders.tiny import TinyRandomEncoder

    real_forward = TinyRandomEncoder.forward

    def overflowing(self, pixels):
        tokens, pooled = real_forward(self, pixels)
        return tokens * 1e6, pooled  # fine in float32, inf in float16

    monkeypatch.setattr(TinyRandomEncoder, "forward", overflowing)
    out = tmp_path / "f.h5"
    with pytest.raises(DataError, match=r"NaN/inf features .* first 'Cubism/painter_work-01.jpg'"):
        extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=4, progress=False)
    assert not out.exists()
    with pytest.raises(DataError, match="unfinished extraction"):
        FeatureStore(out)


def test_existing_output_and_mismatched_partial_are_refused(small_dataset, tmp_path):
    images_dir, dataset_dir, _ = small_dataset
    out = tmp_path / "f.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=8, progress=False)
    with pytest.raises(DataError, match="already exists"):
        extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=8, progress=False)
    # an unfinished file from another encoder setting must not be continued
    os.replace(out, partial_path(out))
    with h5py.File(partial_path(out), "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(DataError, match="incomplete feature file"):
        FeatureStore(partial_path(out))
    with pytest.raises(DataError, match="different encoder_config"):
        extract_features(
            images_dir, dataset_dir, "tiny-random", out, batch_size=8, encoder_kwargs={"seed": 1}, progress=False
        )


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_same_file_as_an_uninterrupted_run(tmp_path):
    # S0/p03.jpg empty: a failure too, so failed/ must survive the resume
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 24, empty=(3,))
    out = tmp_path / "resumed.h5"
    kill_9_after(start_extract(images_dir, dataset_dir, out, delay=0.25), partial_path(out), 6)
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out), "r") as f:
        done = int(f.attrs["n_done"])
    assert 0 < done < 24

    summary = extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=2, progress=False)
    # the last recorded batch is redone (a failed flush may have left its counters but not its rows)
    assert summary["resumed_from"] == done - 2 and not partial_path(out).exists()
    ref = tmp_path / "straight.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", ref, batch_size=2, progress=False)
    with h5py.File(out, "r") as a, h5py.File(ref, "r") as b:
        assert list(a["names"][()]) == list(b["names"][()]) and len(set(a["names"][()])) == 23
        np.testing.assert_array_equal(a["tokens"][()], b["tokens"][()])
        np.testing.assert_array_equal(a["pooled"][()], b["pooled"][()])
        assert list(a["failed/names"][()]) == [b"S0/p03.jpg"] == list(b["failed/names"][()])
        assert a.attrs["image_list_sha256"] == b.attrs["image_list_sha256"]


def test_h5_dataset_works_in_dataloader_workers(small_dataset, tmp_path):
    from torch.utils.data import DataLoader

    _, dataset_dir, _ = small_dataset
    out = tmp_path / "f.h5"
    extract_features(None, dataset_dir, "tiny-random", out, batch_size=4, progress=False)
    ds = H5FeatureDataset(out, dataset_dir, "train")
    direct = {s["image_id"]: s["tokens"] for s in ds}
    via_workers = list(DataLoader(ds, batch_size=None, num_workers=2))  # each worker opens its own HDF5 handle
    assert sorted(s["image_id"] for s in via_workers) == sorted(direct)
    for s in via_workers:
        assert torch.equal(s["tokens"], direct[s["image_id"]])


def test_flipped_bytes_in_a_tokens_chunk_are_reported_naming_the_image(small_dataset, tmp_path):
    from featurekit import flip_token_bytes

    images_dir, dataset_dir, names = small_dataset
    out = tmp_path / "f.h5"
    extract_features(None, dataset_dir, "tiny-random", out, batch_size=5, progress=False)
    store = FeatureStore(out)
    assert store.checksummed and store.attrs["checksum"] == "fletcher32"
    good = store.content_sha256()
    before = [store.tokens(i).copy() for i in range(len(store))]
    store.close()
    with h5py.File(out, "r") as f:
        assert f["tokens"].fletcher32 and f["pooled"].fletcher32
    name = flip_token_bytes(out, 7)
    assert name == names[7]
    store = FeatureStore(out)
    with pytest.raises(
        DataError,
        match=rf"f\.h5: image '{names[7]}' \(row 7\): its tokens fail their fletcher32 "
        r"checksum \(HDF5: .*\); the file is damaged: extract it again",
    ):
        store.tokens(7)
    for i in (6, 8):  # the other images read as before
        assert np.array_equal(store.tokens(i), before[i])
    with pytest.raises(DataError, match=rf"image '{names[7]}' \(row 7\)"):
        store.content_sha256()  # the training fingerprint reads every row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sets = [H5FeatureDataset(out, dataset_dir, split) for split in ("train", "val", "test")]
    ds, bad = next((ds, i) for ds in sets for i, (_, rec, row) in enumerate(ds.items) if row == 7)
    with pytest.raises(DataError, match=rf"image '{names[7]}'"):
        ds[bad]  # what generation, evaluation and training read through
    assert len(good) == 64
