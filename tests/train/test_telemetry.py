"""Step telemetry (sevlm.train.telemetry): every figure in log.jsonl and TensorBoard, consistent
with itself, and the FLOP count MFU is taken from checked against torch's FlopCounterMode.

No figure's size is asserted (the machine's speed is not the code's): only that each is present,
finite and agrees with the others."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from sevlm.train import train

TIMINGS = (
    "step_time_s",
    "data_wait_s",
    "fwd_bwd_s",
    "optim_s",
    "data_wait_frac",
    "samples_per_s",
    "tokens_per_s",
    "tokens",
    "mfu",
    "grad_norm",
    "mem_peak_rss_gib",
)


@pytest.fixture(scope="module")
def recipe(tiny_data, tmp_path_factory):
    """The tiny config's recipe, set up (model, engine and data source), not trained."""
    from sevlm.train import load_train_config
    from sevlm.train.recipe import TrainRecipe
    from sevlm.train.run_folder import prepare_run
    from tests.train.conftest import tiny_overrides

    cfg, run_dir, _ = prepare_run(
        load_train_config("tiny", tiny_overrides(tiny_data)), None, tmp_path_factory.mktemp("flops") / "run"
    )
    r = TrainRecipe(cfg, run_dir)
    r.setup()
    return r


def _counted(model, inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(**inputs).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"w_align": 0.0},
        {"mode": "prefix"},
        {"mode": "none"},
        {"contrastive_features": "image"},
        {"use_vad_input": False},
    ],
)
def test_the_flop_count_matches_flopcountermode_on_forward_and_backward(recipe, change):
    import torch

    from sevlm.model import SEVLM
    from sevlm.model.flops import batch_flops
    from sevlm.train.data import split_inputs

    batch = next(iter(recipe.source.epoch(0, 0)))
    inputs, _ = split_inputs(batch, recipe.engine.device, recipe.rt.dtype)
    cfg = dataclasses.replace(recipe.model_config, **change)
    torch.manual_seed(0)
    model = SEVLM(cfg) if change else recipe.engine.module
    counted = _counted(model, inputs)
    assert batch_flops(cfg, batch) == pytest.approx(counted, rel=0.10), change


def test_the_flop_count_follows_the_batch_shapes(recipe):
    from sevlm.model.flops import batch_flops

    batch = next(iter(recipe.source.epoch(0, 0)))
    half = {
        k: (v[: len(v) // 2] if k in ("input_ids", "attention_mask", "labels", "segment_ids") else v)
        for k, v in batch.items()
    }
    assert (
        0.3 * batch_flops(recipe.model_config, batch)
        < batch_flops(recipe.model_config, half)
        < 0.7 * batch_flops(recipe.model_config, batch)
    )


@pytest.fixture(scope="module")
def telemetry_run(tiny_data, tmp_path_factory):
    """Six steps of two accumulated micro-batches, a row every 2 steps, validation at step 4;
    the batches each step saw are recorded (to recount the FLOPs)."""
    from sevlm.train import load_train_config
    from sevlm.train.telemetry import StepTelemetry
    from tests.train.conftest import tiny_overrides

    seen = []
    real = StepTelemetry.forward_start

    def spy(self, batch):
        seen.append(batch)
        return real(self, batch)

    mp = pytest.MonkeyPatch()
    mp.setattr(StepTelemetry, "forward_start", spy)
    try:
        cfg = load_train_config(
            "tiny",
            tiny_overrides(
                tiny_data,
                "schedule.max_steps=6",
                "schedule.grad_accum=2",
                "schedule.log_every=2",
                "schedule.val_every=4",
                "schedule.checkpoint_every=100",
            ),
        )
        run_dir = train(cfg, out_dir=tmp_path_factory.mktemp("telemetry") / "run")
    finally:
        mp.undo()
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return run_dir, rows, seen


def test_every_row_has_a_wall_clock_time_in_order(telemetry_run):
    _, rows, _ = telemetry_run
    times = [r["time"] for r in rows]
    assert all(isinstance(t, float) and t > 1.7e9 for t in times)  # Unix seconds
    assert times == sorted(times) and {"val_loss" in r for r in rows} == {True, False} and rows[-1]["event"] == "done"


def test_logged_steps_carry_every_figure_finite_and_consistent(telemetry_run):
    from sevlm.model.flops import batch_flops

    run_dir, rows, seen = telemetry_run
    steps = [r for r in rows if "loss" in r and "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    logged = [r for r in steps if r["step"] % 2 == 0]
    assert all(not set(TIMINGS) & set(r) for r in steps if r["step"] % 2)  # figures only every log_every steps
    run = json.loads((run_dir / "run.json").read_text())
    peak = run["peak_flops_per_s"]
    assert peak["flops_per_s"] > 0 and peak["source"].startswith("measured")
    assert len(seen) == 12  # 6 steps x 2 micro-batches
    model_config = _model_config(run)
    for i, r in enumerate(logged):
        assert set(TIMINGS) <= set(r), r
        assert all(math.isfinite(r[k]) and r[k] >= 0 for k in TIMINGS), r
        parts = r["data_wait_s"] + r["fwd_bwd_s"] + r["optim_s"]
        assert parts == pytest.approx(r["step_time_s"], rel=0.05), r
        window = 2 * r["step_time_s"]  # two optimizer steps per row
        assert r["samples_per_s"] == pytest.approx(2 * run["global_batch"] / window, rel=1e-3)
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / window, rel=1e-3)
        assert r["data_wait_frac"] == pytest.approx(r["data_wait_s"] / r["step_time_s"], rel=1e-3)
        batches = seen[4 * i : 4 * i + 4]  # the window's micro-batches
        assert r["tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)
        flops = sum(batch_flops(model_config, b) for b in batches)
        assert r["mfu"] == pytest.approx(flops / window / peak["flops_per_s"], rel=1e-3)
        assert 0 < r["mfu"] < 1 and r["grad_norm"] > 0


def _model_config(run: dict):
    from sevlm.model import SEVLMConfig

    return SEVLMConfig(**run["model_config"])


def test_tensorboard_lists_the_same_figures(telemetry_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, rows, _ = telemetry_run
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {f"train/{k}" for k in TIMINGS} <= tags and "train/time" not in tags
    assert [e.step for e in acc.Scalars("train/step_time_s")] == [2, 4, 6]


def test_validation_time_is_not_a_steps_time(telemetry_run):
    """The row after a validation (step 6; validated at 4) holds no more than its steps: its
    wall time still equals the sum of its parts."""
    _, rows, _ = telemetry_run
    after = next(r for r in rows if r.get("step") == 6 and "step_time_s" in r)
    assert after["data_wait_s"] + after["fwd_bwd_s"] + after["optim_s"] == pytest.approx(after["step_time_s"], rel=0.05)


def test_a_slow_reader_reads_as_data_bound(tiny_config, tmp_path, monkeypatch):
    """Every sample read sleeps 50 ms (200 ms a micro-batch of 4, far above the tiny model's
    step): the wait is the bulk of the step, and the parts still add up."""
    import time

    from sevlm.features.hdf5 import H5FeatureDataset

    read = H5FeatureDataset.__getitem__

    def slow(self, i):
        time.sleep(0.05)
        return read(self, i)

    monkeypatch.setattr(H5FeatureDataset, "__getitem__", slow)
    run_dir = train(
        tiny_config(
            "schedule.max_steps=4",
            "schedule.log_every=2",
            "schedule.val_every=0",
            "schedule.val_gen_images=0",
            "schedule.checkpoint_every=100",
        ),
        out_dir=tmp_path / "run",
    )
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "step_time_s" in r]
    assert [r["step"] for r in logged] == [2, 4]
    for r in logged:
        assert r["data_wait_s"] >= 0.2 and r["data_wait_frac"] > 0.5, r
        assert r["data_wait_s"] + r["fwd_bwd_s"] + r["optim_s"] == pytest.approx(r["step_time_s"], rel=0.05)


def test_gpu_peaks_come_from_the_table():
    from sevlm.train.telemetry import gpu_peak_flops

    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert gpu_peak_flops("NVIDIA H100 NVL", "bf16") == 835e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 156e12
    assert gpu_peak_flops("Some Future GPU", "bf16") is None and gpu_peak_flops("Tesla T4", "bf16") is None


# ---- start-up ----------------------------------------------------------------------------------------
STARTUP_PHASES = (
    "before_setup_s",
    "checks_s",
    "process_group_s",
    "data_setup_s",
    "model_build_s",
    "engine_build_s",
    "peak_flops_s",
    "run_folder_s",
    "first_batch_s",
    "first_step_s",
)


def test_run_json_and_the_start_up_line_give_the_time_to_the_first_step(tiny_config, tmp_path, capsys):
    run_dir = train(tiny_config("schedule.max_steps=1", "schedule.val_gen_images=0"), out_dir=tmp_path / "run")
    startup = json.loads((run_dir / "run.json").read_text())["startup"]
    assert list(startup) == ["time_to_first_step_s", *STARTUP_PHASES]
    assert all(v >= 0 for v in startup.values()) and startup["model_build_s"] > 0 and startup["first_step_s"] > 0
    # the phases follow one another from the process's start to the first step
    assert sum(startup[k] for k in STARTUP_PHASES) == pytest.approx(startup["time_to_first_step_s"], abs=0.1)
    err = capsys.readouterr().err
    assert "sevlm train: first step " in err and "engine build" in err and "first batch" in err
    peak = json.loads((run_dir / "run.json").read_text())["peak_flops_per_s"]
    assert f"sevlm train: MFU is taken against {peak['flops_per_s'] / 1e12:.3g} TFLOP/s (measured: 512x512" in err


def test_a_single_cpu_process_neither_builds_nor_loads_the_shared_memory_op(tiny_data, tmp_path):
    """With DeepSpeed's JIT cache empty, as on a fresh machine: a one-process CPU run builds
    nothing into it (the two-rank test checks that several ranks still load the op)."""
    import subprocess

    from tests.train.conftest import tiny_overrides
    from tests.train.runkit import ROOT, child_env, sevlm_argv

    cache = tmp_path / "torch_extensions"
    cache.mkdir()
    argv = sevlm_argv(
        "train",
        "--config",
        "tiny",
        "--out",
        str(tmp_path / "run"),
        *tiny_overrides(tiny_data, "schedule.max_steps=1", "schedule.val_gen_images=0"),
    )
    out = subprocess.run(
        argv, cwd=ROOT, env=child_env(TORCH_EXTENSIONS_DIR=str(cache)), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "shm_comm" not in out.stdout + out.stderr
    assert not [p for p in cache.rglob("*") if "shm" in p.name], list(cache.rglob("*"))
