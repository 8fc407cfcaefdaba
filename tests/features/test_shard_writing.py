"""Shard writing: bad flags refused, killed runs cleaned up, ranks writing in parallel, umask."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from featurekit import make_image_dataset

from sevlm import cli
from sevlm.errors import ConfigError
from sevlm.features.hdf5_writer import extract_features
from sevlm.features.shard_writer import pending_shard_parts, write_shards
from sevlm.features.shards import shard_pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def features(tmp_path):
    """17 images, all in train, extracted with tiny-random -> (features path, dataset dir)."""
    images_dir, dataset_dir, _ = make_image_dataset(tmp_path, 17, seed=7, styles=2, splits=("train",))
    out = tmp_path / "f.h5"
    extract_features(images_dir, dataset_dir, "tiny-random", out, batch_size=8, progress=False)
    return out, dataset_dir


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_samples_per_shard_zero_is_refused_naming_the_flag_before_anything_is_written(features, tmp_path, capsys):
    h5, dataset_dir = features
    rc = cli.main(
        [
            "shard",
            "--features",
            str(h5),
            "--dataset",
            str(dataset_dir),
            "--split",
            "train",
            "--out",
            str(tmp_path / "shards"),
            "--samples-per-shard",
            "0",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "--samples-per-shard must be at least 1 (got 0)" in err and "\n" not in err
    assert not (tmp_path / "shards").exists() or _listing(tmp_path / "shards") == []
    with pytest.raises(ConfigError, match="--samples-per-shard"):
        write_shards(h5, dataset_dir, "train", tmp_path / "shards", max_samples_per_shard=-3)


def test_temporary_folders_of_a_killed_shard_run_are_removed_by_the_next_run(features, tmp_path):
    h5, dataset_dir = features
    out = tmp_path / "shards"
    write_shards(h5, dataset_dir, "train", out, max_samples_per_shard=5, progress=False)
    expected = _listing(out)
    # what killed runs leave: this version's rank folders (1 or 3 ranks), an older version's mkdtemp folder
    for leftover in (".train.part-0-of-1", ".train.part-2-of-3", ".train-k2j3h4"):
        (out / leftover).mkdir()
        (out / leftover / "train-000000.tar").write_bytes(b"half a shard")
    (out / ".val.part-0-of-1").mkdir()  # another split's folder is not this run's business
    write_shards(h5, dataset_dir, "train", out, max_samples_per_shard=5, progress=False)
    assert _listing(out) == sorted(expected + [".val.part-0-of-1"])


def test_two_ranks_write_the_same_shards_and_one_manifest_as_a_single_process(features, tmp_path, capsys):
    h5, dataset_dir = features
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    ref = write_shards(h5, dataset_dir, "train", single, max_samples_per_shard=4, progress=False)  # 4+4+4+4+1
    args = [
        "shard",
        "--features",
        str(h5),
        "--dataset",
        str(dataset_dir),
        "--split",
        "train",
        "--out",
        str(parallel),
        "--samples-per-shard",
        "4",
        "--world-size",
        "2",
    ]
    assert cli.main(args + ["--rank", "1"]) == 0
    assert "waiting for rank(s) 0" in capsys.readouterr().out
    assert not (parallel / "manifest.json").exists() and pending_shard_parts(parallel, "train", 2) == [0]
    assert cli.main(args + ["--rank", "0"]) == 0
    assert "17 samples in 5 shard(s)" in capsys.readouterr().out

    assert _listing(parallel) == _listing(single) == ["manifest.json"] + [f"train-{i:06d}.tar" for i in range(5)]
    got = json.loads((parallel / "manifest.json").read_text())
    want = json.loads((single / "manifest.json").read_text())
    assert (
        got["splits"]["train"]["shards"] == want["splits"]["train"]["shards"] == ref["shards"]
    )  # names, counts, sha256
    assert got == want
    ids = [s["image_id"] for s in shard_pipeline(parallel, "train", shuffle=False)]
    assert sorted(ids) == sorted(json.loads((dataset_dir / "train.json").read_text())) and len(ids) == 17


@pytest.mark.skipif(
    shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="torchrun not installed"
)
@pytest.mark.slow
def test_torchrun_two_ranks_shard_in_parallel(features, tmp_path):
    h5, dataset_dir = features
    write_shards(h5, dataset_dir, "train", tmp_path / "single", max_samples_per_shard=3, progress=False)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            shutil.which("torchrun", path=os.path.dirname(sys.executable)),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "sevlm.cli",
            "shard",
            "--features",
            str(h5),
            "--dataset",
            str(dataset_dir),
            "--split",
            "train",
            "--out",
            str(tmp_path / "parallel"),
            "--samples-per-shard",
            "3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one rank wrote its part and left, the other put all 6 shards in place
    assert proc.stdout.count("17 samples in 6 shard(s)") == 1 and proc.stdout.count("wrote part") == 1
    assert json.loads((tmp_path / "parallel" / "manifest.json").read_text()) == json.loads(
        (tmp_path / "single" / "manifest.json").read_text()
    )
    assert _listing(tmp_path / "parallel") == _listing(tmp_path / "single")


def test_shards_and_manifest_follow_the_umask(features, tmp_path):
    h5, dataset_dir = features
    old = os.umask(0o027)
    try:
        write_shards(h5, dataset_dir, "train", tmp_path / "shards", max_samples_per_shard=10, progress=False)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "shards").iterdir()}
    assert modes == {"manifest.json": 0o640, "train-000000.tar": 0o640, "train-000001.tar": 0o640}
    assert (tmp_path / "shards").stat().st_mode & 0o777 == 0o750
