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
def test_bench_data_times_every_case_with_and_without_the_main_process_assist(tmp_path):
    out, figures = _run_tool(
        [
            "tools/bench_data.py",
            "--images",
            "150",
            "--rounds",
            "1",
            "--workers",
            "0",
            "1",
            "--assist",
            "auto",
            "never",
            "--gpu-step-ms",
            "0",
            "--workdir",
            str(tmp_path),
        ]
    )
    rates = figures["samples_per_s"]
    assert set(rates) == {f"{r} {s} step 0 ms" for r in ("hdf5", "shards") for s in ("49x768", "196x768")}
    for cell in rates.values():
        assert set(cell) == {"0", "1 auto", "1 never"} and all(v > 0 for v in cell.values())
    assert out.count("x (slowest worker count, auto)") == 4


@pytest.mark.slow
def test_retrieval_study_scores_two_checkouts_and_the_reference_points(tmp_path):
    """The study end to end on a small demo: both "checkouts" (this one twice) train the model and
    its control, are scored by one scorer, and get the targets checked; the reference tool then
    prints the probe and the linear CLIP-style model beside a run's own figures."""
    out, study = _run_tool(
        [
            "tools/retrieval_study.py",
            "--out",
            str(tmp_path),
            "--n-images",
            "90",
            "--seeds",
            "0",
            "--precisions",
            "fp32",
            "--code",
            f"a={ROOT}",
            "--code",
            f"b={ROOT}",
            "schedule.max_steps=3",
        ]
    )
    rows = study["rows"]
    assert [(r["code"], r["precision"], r["seed"]) for r in rows] == [("a", "fp32", 0), ("b", "fp32", 0)]
    assert rows[0]["model"]["image_to_emotion"] == rows[1]["model"]["image_to_emotion"]  # same code, same seed
    for r in rows:
        assert set(r["checks"]) == {"control+0.25", "majority+0.25", "R@10>=2x chance", "probe-0.1"}
        assert set(r["model"]["stats"]) == {"image", "explanation", "emotion"}
        assert 0.0 <= r["control"]["image_to_emotion"] <= 1.0
    probe = study["reference"]["logistic_probe"]
    assert 0.0 <= probe["accuracy"] <= 1.0 and probe["n"] > 0
    assert set(study["summary"]) == {"a/fp32", "b/fp32"} and "| a | fp32 | 0 |" in out

    run = tmp_path / "runs" / "a" / "fp32-seed0-model"
    out, ref = _run_tool(
        [
            "tools/retrieval_reference.py",
            "--dataset",
            str(tmp_path / "dataset"),
            "--features",
            str(tmp_path / "features.h5"),
            "--run",
            str(run),
        ]
    )
    assert ref["reference"]["logistic_probe"] == probe  # the same probe on the same data
    assert set(ref["runs"]) == {str(run)} and "logistic-regression probe" in out and "exact chance" in out


@pytest.mark.slow
def test_bench_data_bound_reads_the_slowed_reader_as_data_bound(tmp_path):
    out, figures = _run_tool(
        [
            "tools/bench_data_bound.py",
            "--steps",
            "10",
            "--log-every",
            "5",
            "--images",
            "120",
            "--delay-ms",
            "60",
            "--workdir",
            str(tmp_path),
        ]
    )
    slowed = figures["means"]["slowed"]
    assert figures["slowed_data_bound"] and slowed["data_wait_frac"] > 0.5 and slowed["rows"] == 1
    for m in figures["means"].values():
        assert m["data_wait_s"] + m["fwd_bwd_s"] + m["optim_s"] == pytest.approx(m["step_time_s"], rel=0.05)
    assert "| slowed | " in out and "| normal | " in out


def test_index_benchmark_on_a_cluster_mixture_tunes_and_reports_recall_against_exact():
    out, figures = _run_tool(
        [
            "tools/bench_retrieval.py",
            "--skip-eval",
            "--gallery",
            "4000",
            "--dim",
            "32",
            "--queries",
            "100",
            "--data",
            "mixture",
            "--clusters",
            "40",
            "--tune",
            "0.9",
            "--rounds",
            "1",
            "--threads",
            "1",
        ]
    )
    s = figures["search"]
    assert s["data"] == "mixture" and s["clusters"] == 40 and s["gallery"] == 4000
    assert s["flat"]["recall@10_vs_exact"] == 1.0 and s["flat"]["speedup_vs_flat"] == 1.0
    for kind in ("ivf", "hnsw"):
        assert s[kind]["tuned"]["target"] == 0.9 and s[kind]["queries_per_s"] > 0
        assert s[kind]["recall@10_vs_exact"] >= 0.8  # tuned on other queries of the same mixture
    assert s["ivf"]["nprobe"] == int(s["ivf"]["tuned"]["chosen"].split("=")[1])
    assert "| index | device | settings | build s | queries/s | x flat |" in out and "verdict" in s


def test_bench_cli_times_every_command_of_a_checkout():
    _, result = _run_tool([str(ROOT / "tools" / "bench_cli.py"), str(ROOT), "--repeat", "1"])
    seconds = result["seconds"][str(ROOT)]
    assert set(seconds) == {
        "--help",
        "prepare --help",
        "extract --help",
        "train --help",
        "evaluate --help",
        "retrieve --help",
    }
    assert all(len(v) == 1 and 0 < v[0] < 120 for v in seconds.values())
