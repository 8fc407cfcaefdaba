"""Distributed extraction: ranks write part files, the last one merges into a single-process-equal store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from featurekit import ROOT, assert_same_feature_files, kill_9_after, make_image_dataset, start_extract

from sevlm import cli
from sevlm.errors import ConfigError, DataError
from sevlm.features.hdf5 import FeatureStore, partial_path
from sevlm.features.hdf5_parts import part_path, rank_share
from sevlm.features.hdf5_writer import extract_features


def test_rank_shares_are_contiguous_batch_aligned_and_cover_the_list():
    assert [rank_share(14, 3, r, 2) for r in range(2)] == [(0, 6), (6, 14)]
    assert [rank_share(5, 2, r, 4) for r in range(4)] == [
        (0, 0),
        (0, 2),
        (2, 4),
        (4, 5),
    ]  # 3 batches, 4 ranks: one gets none
    with pytest.raises(ConfigError, match="rank 2 is out of range for world size 2"):
        extract_features(None, ".", "tiny-random", "f.h5", rank=2, world_size=2)


def test_two_ranks_run_one_after_the_other_give_the_single_process_store(tmp_path, capsys):
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 14, empty=(4,))
    out = tmp_path / "dist.h5"
    common = [
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
        "3",
        "--workers",
        "0",
        "--world-size",
        "2",
    ]
    assert cli.main(common + ["--rank", "1"]) == 0
    printed = capsys.readouterr().out
    assert "part 1 of 2: 7 of 8 images" in printed and "waiting for rank(s) 0" in printed
    assert part_path(out, 1, 2).exists() and not out.exists()
    with pytest.raises(Exception, match="feature file not found"):
        FeatureStore(out)

    # the other rank, rerun alone later, finishes its share and merges
    assert cli.main(common + ["--rank", "0"]) == 0
    assert "merged 2 parts into" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.h5", "ds", "images"]  # parts and locks gone

    ref = tmp_path / "single.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", ref, batch_size=3, progress=False)
    assert_same_feature_files(out, ref)
    assert FeatureStore(out).failed == {"S1/p04.jpg": "empty file (0 bytes)"}


_LAUNCHERS = {
    "torchrun": ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "sevlm.cli"],
    "deepspeed": ["deepspeed", "--num_gpus", "2", "--module", "sevlm.cli"],  # DS_ACCELERATOR=cpu: processes only
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_two_cpu_ranks_under_a_launcher_equal_a_single_process_run(tmp_path, launcher):
    exe = shutil.which(launcher, path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip(f"{launcher} not installed")
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 17, empty=(7,))
    out = tmp_path / "dist.h5"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    proc = subprocess.run(
        [
            exe,
            *_LAUNCHERS[launcher][1:],
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
            "4",
            "--workers",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "merged 2 parts into" in proc.stdout and "part 0 of 2" in proc.stdout and "part 1 of 2" in proc.stdout
    ref = tmp_path / "single.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", ref, batch_size=4, progress=False)
    assert_same_feature_files(out, ref)
    assert not any(p.name.startswith("dist.h5.") for p in tmp_path.iterdir())


def test_more_ranks_than_batches_leave_empty_parts_and_still_merge_equal(tmp_path):
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 5)
    out, ref = tmp_path / "dist.h5", tmp_path / "single.h5"
    merged = [
        extract_features(
            images_dir, dataset_dir, "tiny-random", out, batch_size=2, rank=r, world_size=4, progress=False
        )["merged"]
        for r in (3, 0, 2, 1)
    ]
    assert merged == [False, False, False, True]
    extract_features(images_dir, dataset_dir, "tiny-random", ref, batch_size=2, progress=False)
    assert_same_feature_files(out, ref)


def test_parts_from_other_settings_are_refused_before_any_encoding(tmp_path):
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 8)
    out = tmp_path / "dist.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=2, rank=1, world_size=2, progress=False)
    before = part_path(out, 1, 2).read_bytes()
    with pytest.raises(
        DataError, match=r"dist\.h5\.part-1-of-2: made with a different batch_size \(it has 2, this run 4\)"
    ):
        extract_features(
            images_dir, dataset_dir, "tiny-random", out, batch_size=4, rank=0, world_size=2, progress=False
        )
    with pytest.raises(
        DataError,
        match=r"dist\.h5\.part-1-of-2: a part of a 2-rank extraction is in the way; finish it with --world-size 2",
    ):
        extract_features(
            images_dir, dataset_dir, "tiny-random", out, batch_size=2, rank=0, world_size=3, progress=False
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.h5.part-1-of-2", "ds", "images"]  # nothing new written
    assert part_path(out, 1, 2).read_bytes() == before


@pytest.mark.slow
def test_a_rank_killed_mid_share_is_rerun_alone_and_resumes_its_part(tmp_path):
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 20, empty=(1,))
    out = tmp_path / "dist.h5"
    child = start_extract(images_dir, dataset_dir, out, workers=1, rank=0, world_size=2)
    kill_9_after(child, partial_path(part_path(out, 0, 2)), 4)
    # rank 1 finishes meanwhile; rank 0 is rerun alone, at once, and resumes its part
    assert not extract_features(
        images_dir, dataset_dir, "tiny-random", out, batch_size=2, rank=1, world_size=2, progress=False
    )["merged"]
    again = extract_features(
        images_dir, dataset_dir, "tiny-random", out, batch_size=2, num_workers=1, rank=0, world_size=2, progress=False
    )
    assert again["merged"] and again["resumed_from"] >= 2
    ref = tmp_path / "single.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", ref, batch_size=2, progress=False)
    assert_same_feature_files(out, ref)
