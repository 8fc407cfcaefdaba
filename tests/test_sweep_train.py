"""tools/sweep_train.py: repeats, spread and the within-noise flags, advice that keeps the
config's setting when the winner is within noise of it, and failed cases as rows."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep_train", ROOT / "tools" / "sweep_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OWN = {"micro": 8, "accum": 1, "workers": 0, "assist": "auto", "precision": "bf16", "zero": 2}


def _row(runs, error=None, **change):
    return {**OWN, "ds_config": "zero2_bf16", **change, "runs": list(runs), "error": error}


def test_rows_get_their_median_spread_and_within_noise_flag(sweep):
    rows = [_row([60, 58, 62]), _row([61, 55, 64], micro=16), _row([40, 41, 39], zero=0), _row([], "boom", micro=4096)]
    verdict = sweep.summarise(rows, OWN)
    assert [(r["median"], r["min"], r["max"]) for r in rows[:3]] == [(60, 58, 62), (61, 55, 64), (40, 39, 41)]
    assert rows[1]["spread_pct"] == pytest.approx(100 * 9 / 61, abs=0.1)
    assert [r["within_noise_of_best"] for r in rows] == [True, True, False, False]
    assert [r["own"] for r in rows] == [True, False, False, False]
    assert rows[3]["median"] is None and rows[3]["error"] == "boom"
    # micro 16 is the fastest by its median, but within noise of the config's own setting
    assert verdict["best"]["micro"] == 16 and verdict["advice"].startswith("keep the config's setting")


def test_a_clear_winner_is_advised_as_overrides(sweep):
    rows = [_row([60, 58, 62]), _row([90, 88, 91], workers=2, precision="fp32", zero=0, ds_config="zero0_fp32")]
    verdict = sweep.summarise(rows, OWN)
    assert [r["within_noise_of_best"] for r in rows] == [False, True]
    assert verdict["advice"] == (
        "schedule.micro_batch=8 schedule.grad_accum=1 data.num_workers=2 "
        "data.main_assist=auto precision=fp32 ds_config=zero0_fp32"
    )


def test_within_noise_is_either_median_inside_the_other_spread(sweep):
    def case(lo, med, hi):
        return {"min": lo, "median": med, "max": hi}

    assert sweep.within_noise(case(50, 60, 70), case(68, 69, 75))  # 69 in 50-70
    assert sweep.within_noise(case(59, 60, 61), case(55, 62, 75))  # 60 in 55-75
    assert not sweep.within_noise(case(59, 60, 61), case(61.5, 62, 63))


def test_nothing_finished_gives_no_best(sweep):
    rows = [_row([], "out of memory: CUDA out of memory")]
    assert sweep.summarise(rows, OWN) == {"best": None, "advice": "no case finished"}
    assert "failed: out of memory" in sweep.table(rows)


def test_the_default_grid_holds_the_configs_own_precision_and_zero_stage(sweep):
    grid = sweep.default_grid(OWN)
    assert grid == {
        "micro": [8, 16],
        "accum": [1],
        "workers": [0, 2],
        "assist": ["auto"],
        "precision": ["bf16", "fp32"],
        "zero": [0, 2],
    }
    settings = sweep.settings_of(grid, [sweep.parse_add("micro=4096", OWN)])
    assert len(settings) == 17 and OWN in settings and settings[-1] == {**OWN, "micro": 4096}
    own = sweep.own_setting("demo", "cpu")  # the demo config as the trainer resolves it here
    assert own["zero"] == 2 and own["precision"] in ("bf16", "fp32") and own["micro"] == 8


def test_the_advice_names_a_shipped_ds_config_when_one_has_the_stage(sweep, tmp_path):
    assert sweep.ds_config_for(0, "bf16", tmp_path) == "zero0_fp32"  # the trainer sets bf16 itself
    assert sweep.ds_config_for(2, "bf16", tmp_path) == "zero2_bf16"
    made = Path(sweep.ds_config_for(1, "fp16", tmp_path))
    assert made.parent == tmp_path and json.loads(made.read_text())["zero_optimization"]["stage"] == 1


def test_a_failed_case_says_why(sweep):
    oom = "Traceback...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    assert sweep.error_line(oom, 1).startswith("out of memory: ")
    assert (
        sweep.error_line("x\n[rank0]: sevlm.errors.ConfigError: split has 60 images\n", 1)
        == "sevlm.errors.ConfigError: split has 60 images"
    )
    assert sweep.error_line("", -9) == "killed by signal 9 (out of memory?)"


@pytest.mark.slow
def test_the_sweep_repeats_interleaved_and_goes_on_past_an_impossible_case(tmp_path):
    dist = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # left by an earlier training test
    env = {k: v for k, v in os.environ.items() if k not in dist}
    out_dir = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "tools/sweep_train.py",
            "--grid",
            "micro=4",
            "workers=0,1",
            "precision=fp32",
            "zero=0",
            "--add",
            "micro=100000,workers=0,precision=fp32,zero=0",
            "--repeats",
            "2",
            "--steps",
            "1",
            "--images",
            "60",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out_dir),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = result["rows"]
    assert [(r["micro"], r["workers"]) for r in rows] == [(4, 0), (4, 1), (100000, 0)]
    for r in rows[:2]:
        assert len(r["runs"]) == 2 and r["min"] <= r["median"] <= r["max"] and r["error"] is None
        assert isinstance(r["within_noise_of_best"], bool) and all(0 <= w <= 1 for w in r["wait"])
    assert rows[2]["runs"] == [] and "fewer than one optimizer step" in rows[2]["error"]
    assert any(r["within_noise_of_best"] for r in rows[:2]) and result["advice"]
    assert json.loads((out_dir / "sweep.json").read_text())["rows"] == rows
    md = (out_dir / "sweep.md").read_text()
    assert md.count("\n| 4 |") == 2 and "| 100000 |" in md and "failed:" in md and "best: " in md
    assert "failed:" in proc.stderr and "round 2" in proc.stderr
