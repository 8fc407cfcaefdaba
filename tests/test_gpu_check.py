"""tools/gpu_check.sh --dry-run: the one-shot GPU check runs end to end on the CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    # A training run earlier in this pytest process leaves its process group's port in the env.
    dist = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist}
    env.update(PYTHON=sys.executable, GPU_CHECK_WORK=str(tmp_path / "work"))
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "[gpu_check] install: " in out and "1 skipped" in out  # the GPU test collected, skipped on the CPU
    figures = json.loads([x for x in out.splitlines() if x.startswith("{")][-1])
    train = figures["train"]
    assert figures["mode"] == "dry-run" and figures["failed"] == []
    assert (train["steps"], train["micro_batch"], train["visual_tokens"], train["device"]) == (6, 4, [16, 64], "cpu")
    assert math.isfinite(train["first_loss"]) and math.isfinite(train["last_loss"])
    assert train["samples_per_s"] > 0 and train["step_time_s"] == pytest.approx(4 / train["samples_per_s"], rel=0.01)
    assert train["micro32_fits_11gb"] is None and train["mfu"] is None  # GPU-only figures
    assert (tmp_path / "work" / "run" / "export" / "model.safetensors").is_file()
    assert figures["generate"]["outputs_identical"] is True and figures["generate"]["device"] == "cpu"
    assert figures["faiss"]["path"] in ("cpu-fallback", "gpu") and figures["faiss"]["cpu_search_s"] > 0


def test_train_flops_match_torch_counter():
    """The MFU numerator against torch's FLOP counter on a real forward + backward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from gpu_check import train_flops_per_image
    finally:
        sys.path.remove(str(ROOT / "tools"))
    from sevlm.data.vad import VADLexicon
    from sevlm.model import SEVLM, SEVLMConfig
    from sevlm.text import SequenceBuilder, model_inputs
    from sevlm.vocab import load_tokenizer

    builder = SequenceBuilder(load_tokenizer(), VADLexicon.load("demo"), max_len=30)
    cfg = SEVLMConfig(n_layer=2, n_embd=128, n_head=4, n_positions=32, visual_dim=64, max_len=30).with_token_ids(
        builder.ids
    )
    model = SEVLM(cfg)
    long = "the bright sky over the calm sea makes me feel small and at peace with the whole wide world today"
    samples = [
        {
            "__key__": f"s/{i}",
            "image_id": f"s/{i}",
            "tokens": torch.randn(16, 64),
            "emotions": ["awe", "fear"],
            "explanations": [long, long],
        }
        for i in range(2)
    ]
    import numpy as np

    batch = builder.collate(samples, np.random.default_rng(0))
    with FlopCounterMode(display=False) as counter:
        model(**model_inputs(batch)).loss.backward()
    measured = counter.get_total_flops() / len(samples)
    estimate = train_flops_per_image({**vars(cfg), "max_len": batch["input_ids"].shape[1]}, n_visual=16)
    assert estimate == pytest.approx(measured, rel=0.2), (estimate, measured)  # measured: +10%


def test_a_failing_stage_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "tools"))

    def broken(*args):
        raise RuntimeError("`sevlm train` failed with exit code 1")

    monkeypatch.setattr(gpu_check, "train_check", broken)
    monkeypatch.setattr(gpu_check, "generate_check", lambda cuda, size: {"speedup": 2.0})
    monkeypatch.setattr(gpu_check, "faiss_check", lambda size: {"path": "cpu-fallback"})
    figures = gpu_check.main(["--dry-run", "--work", str(tmp_path)])
    assert figures["failed"] == ["train"] and figures["train"]["error"].startswith("RuntimeError: `sevlm train` failed")
    assert figures["generate"] == {"speedup": 2.0} and figures["faiss"] == {"path": "cpu-fallback"}
    assert "[gpu_check] train: FAILED" in capsys.readouterr().out
