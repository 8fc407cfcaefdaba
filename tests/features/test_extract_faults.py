"""Extraction under faults: kill -9 and immediate restart, two writers, a failed flush, --overwrite, bad flags."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from featurekit import assert_same_feature_files, kill_9_after, make_image_dataset, start_extract, wait_for_progress

from sevlm import cli
from sevlm.errors import ConfigError, DataError, SevlmError
from sevlm.features.hdf5 import FeatureStore, partial_path
from sevlm.features.hdf5_writer import extract_features
from tests.train.runkit import alive, wait_for


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_sigkill_with_workers_then_immediate_restart_completes_equal_to_an_uninterrupted_run(tmp_path):
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 24, empty=(3,))
    out = tmp_path / "resumed.h5"
    workers = kill_9_after(start_extract(images_dir, dataset_dir, out, workers=2), partial_path(out), 6)
    assert len(workers) == 2
    wait_for(lambda: not alive(workers), 1.0, what="its DataLoader workers ending")  # with it, not ~5 s later
    assert partial_path(out).stat().st_size > 0

    summary = extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=2, num_workers=2, progress=False)
    assert summary["resumed_from"] >= 4  # continued from the partial file, not from scratch
    ref = tmp_path / "straight.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", ref, batch_size=2, progress=False)
    assert_same_feature_files(out, ref)
    assert FeatureStore(out).failed == {"S0/p03.jpg": "empty file (0 bytes)"}


@pytest.mark.slow
def test_a_second_extract_on_the_same_output_is_refused_and_the_first_finishes_intact(tmp_path, capsys):
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 24)  # 12 batches of 2, 0.3 s each: time for the second
    out = tmp_path / "f.h5"
    child = start_extract(images_dir, dataset_dir, out)
    try:
        wait_for_progress(child, partial_path(out), 2)
        rc = cli.main(
            [
                "extract",
                "--images",
                str(images_dir),
                "--dataset",
                str(dataset_dir),
                "--encoder",
                "tiny-random",
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--workers",
                "0",
            ]
        )
        err = capsys.readouterr().err.strip()
        assert child.poll() is None, "the first extract finished before the second could be tried"
        assert rc == 1 and "\n" not in err
        assert f"{out}: in use by another process (pid {child.pid})" in err
        assert child.wait(timeout=120) == 0, child.stderr.read().decode()[-2000:]
    finally:
        if child.poll() is None:
            child.kill()
    ref = tmp_path / "straight.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", ref, batch_size=2, progress=False)
    assert_same_feature_files(out, ref)


@pytest.mark.parametrize("damage", ["tail-rows-lost", "tail-names-wrong"])
def test_a_failed_flush_then_a_rerun_redoes_the_unconfirmed_batches(tmp_path, monkeypatch, damage):
    images_dir, dataset_dir, names = make_image_dataset(tmp_path, 12, empty=(3,))  # S0/p03: sorted position 1
    out = tmp_path / "f.h5"
    real_flush = h5py.File.flush

    def flush_then_disk_full(self):
        if self.attrs.get("n_done") == 8:  # the flush of the 4th batch of 2
            raise OSError(28, "No space left on device")
        return real_flush(self)

    monkeypatch.setattr(h5py.File, "flush", flush_then_disk_full)
    with pytest.raises((SevlmError, OSError)) as failure:
        extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=2, progress=False)
    monkeypatch.setattr(h5py.File, "flush", real_flush)

    # what a full disk can leave: counters written for the batch, its rows not (or rows of the wrong images)
    with h5py.File(partial_path(out), "r+") as f:
        assert int(f.attrs["n_done"]) == 8 and int(f.attrs["n_rows"]) == 7
        if damage == "tail-rows-lost":
            f["tokens"][5:7] = 0
            f["pooled"][5:7] = 0
        else:
            f["names"][2] = names[9]  # the row of image 3 (sorted) claims another image: redo from its batch on
    if damage == "tail-rows-lost":
        summary = extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=2, progress=False)
    else:
        with pytest.warns(UserWarning, match=f"stored names stop matching the image list at '{names[3]}'"):
            summary = extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=2, progress=False)
    assert summary["resumed_from"] == (6 if damage == "tail-rows-lost" else 2)
    ref = tmp_path / "straight.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", ref, batch_size=2, progress=False)
    assert_same_feature_files(out, ref)
    # one line for the user, naming the file and what to do
    assert isinstance(failure.value, DataError)
    assert str(failure.value).startswith(f"{partial_path(out)}: writing failed ([Errno 28] No space left on device)")
    assert "run the same command again" in str(failure.value)


def test_overwrite_replaces_the_finished_file_only_with_a_complete_new_one(tmp_path, capsys):
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 6)
    out = tmp_path / "f.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=4, progress=False)
    before = _sha(out)
    args = [
        "extract",
        "--images",
        str(images_dir),
        "--dataset",
        str(dataset_dir),
        "--out",
        str(out),
        "--overwrite",
        "--workers",
        "0",
    ]
    assert cli.main(args + ["--encoder", "tiny-randm"]) == 1  # typo
    assert "unknown image encoder 'tiny-randm'" in capsys.readouterr().err
    assert _sha(out) == before and not partial_path(out).exists()
    assert cli.main(args + ["--encoder", "tiny-random", "--batch-size", "0"]) == 1
    assert _sha(out) == before and not partial_path(out).exists()

    extract_features(
        images_dir,
        dataset_dir,
        "tiny-random",
        out,
        batch_size=4,
        encoder_kwargs={"seed": 1},
        overwrite=True,
        progress=False,
    )
    assert FeatureStore(out).encoder["seed"] == 1 and not partial_path(out).exists()


@pytest.mark.parametrize("flags, named", [(["--batch-size", "0"], "--batch-size"), (["--workers", "-1"], "--workers")])
def test_bad_extract_flags_are_refused_up_front_naming_the_flag(tmp_path, capsys, flags, named):
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 4)
    out = tmp_path / "f.h5"
    rc = cli.main(
        [
            "extract",
            "--images",
            str(images_dir),
            "--dataset",
            str(dataset_dir),
            "--encoder",
            "tiny-random",
            "--out",
            str(out),
            *flags,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 1 and named in err and "\n" not in err
    assert not out.exists() and not partial_path(out).exists()  # nothing left to block the next run
    with pytest.raises(ConfigError, match=named):
        extract_features(
            images_dir,
            dataset_dir,
            "tiny-random",
            out,
            **{"batch_size" if "batch" in named else "num_workers": int(flags[1])},
        )


def test_an_unreadable_partial_is_kept_aside_never_truncated(tmp_path):
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 4)
    out = tmp_path / "f.h5"
    partial_path(out).write_bytes(b"not hdf5 at all" * 100)
    with pytest.warns(UserWarning, match="damaged partial file"):
        extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=2, progress=False)
    assert (tmp_path / "f.h5.partial.damaged").read_bytes() == b"not hdf5 at all" * 100
    assert len(FeatureStore(out)) == 4


def test_extract_output_follows_the_umask(tmp_path):
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 2)
    old = os.umask(0o027)
    try:
        extract_features(
            images_dir, dataset_dir, "tiny-random", tmp_path / "new" / "f.h5", batch_size=2, progress=False
        )
    finally:
        os.umask(old)
    assert (tmp_path / "new" / "f.h5").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["f.h5"]  # no lock or partial left
    np.testing.assert_array_equal(FeatureStore(tmp_path / "new" / "f.h5").token_shape, (16, 32))
