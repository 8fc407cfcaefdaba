"""The throughput benchmarks run end to end on small data and report what they claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_tool(args: list[str]) -> tuple[str, dict]:
    dist = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # left by an earlier training test
    env = {k: v for k, v in os.environ.items() if k not in dist}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sweep_runs_through_the_recipe_and_names_the_best_setting(tmp_path):
    out, figures = _run_tool(["tools/bench_train.py", "--sweep", "--grid", "micro=4", "workers=0,1",
                              "assist=auto,never", "zero=0", "--steps", "1", "--images", "60",
                              "--workdir", str(tmp_path)])
    rows = figures["rows"]
    # workers=0 has no assist to vary: 3 settings, not 4
    assert [(r["workers"], r["assist"]) for r in rows] == [(0, "auto"), (1, "auto"), (1, "never")]
    assert all(r["samples_per_s"] > 0 and r["peak_mem_mib"] > 0 for r in rows)
    best = max(rows, key=lambda r: r["samples_per_s"])
    assert figures["best"] == (f"schedule.micro_batch=4 schedule.grad_accum=1 data.num_workers={best['workers']} "
                               f"data.main_assist={best['assist']} precision=fp32 ds_config=zero0_fp32")
    assert "| main assist |" in out


@pytest.mark.slow
def test_bench_data_times_every_case_with_and_without_the_main_process_assist(tmp_path):
    out, figures = _run_tool(["tools/bench_data.py", "--images", "150", "--rounds", "1", "--workers", "0", "1",
                              "--assist", "auto", "never", "--gpu-step-ms", "0", "--workdir", str(tmp_path)])
    rates = figures["samples_per_s"]
    assert set(rates) == {f"{r} {s} step 0 ms" for r in ("hdf5", "shards") for s in ("49x768", "196x768")}
    for cell in rates.values():
        assert set(cell) == {"0", "1 auto", "1 never"} and all(v > 0 for v in cell.values())
    assert out.count("x (slowest worker count, auto)") == 4
