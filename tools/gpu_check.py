"""The Python part of tools/gpu_check.sh: train, decode and search on the GPU, and print figures.

1. Training: the `paper` config through `sevlm train` (the trainer's own setup), with the
   paper's model size (6 layers, 768-d, 12 heads, cross-attention, GPT-2 vocabulary) built with
   random weights (the GPU machine reaches no hub), fp16 ZeRO-2, micro-batch 32, 50 steps, on
   CLIP-shaped features: 196 x 768 tokens, written by `extract` with the tiny-random encoder
   at CLIP ViT-B/16's geometry (224 px, 16 px patches, 768-d) from the demo paintings.
   Prints step time, samples/s, peak memory, MFU and whether micro-batch 32 fits 11 GB.
2. `tools/bench_generate.py` on the GPU (cached batched decoding vs the reference style).
3. FAISS on the GPU (flat index, checked against the CPU one), or its CPU fallback.

`--dry-run` runs the same stages on this CPU at tiny sizes (fp32, 6 steps), to prove the
script before a GPU is lent. The last line printed is one JSON object with every figure.

    python tools/gpu_check.py [--dry-run] [--work DIR] [--steps 50] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Dense fp16/bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,
    "T4": 65.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "RTX 2080 Ti": 57.0,
}
FITS_GIB = 11.0 - 0.5  # an 11 GB card, less ~0.5 GiB of CUDA context

SIZES = {
    "gpu": {
        "n_images": 720,
        "image_px": 64,
        "workers": 2,
        "micro": 32,
        "steps": 50,
        "epochs": 3,
        "log_every": 10,
        "encoder": {"image_size": 224, "patch_size": 16, "dim": 768},  # 196 x 768, CLIP ViT-B/16's shape
        "model": {"n_layer": 6, "n_embd": 768, "n_head": 12, "n_positions": 1024},  # distilgpt2's size
        "precision": "fp16",
        "ds_config": "zero2_fp16",
        "generate": [],
        "faiss": (100_000, 256, 1000),
    },
    "dry-run": {
        "n_images": 60,
        "image_px": 32,
        "workers": 0,
        "micro": 4,
        "steps": 6,
        "epochs": 3,
        "log_every": 2,
        "encoder": {"image_size": 32, "patch_size": 8, "dim": 64},  # 16 x 64
        "model": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64},
        "precision": "fp32",
        "ds_config": "zero2_fp32",
        "generate": [
            "--images",
            "2",
            "--max-new-tokens",
            "4",
            "--visual-tokens",
            "16",
            "--visual-dim",
            "64",
            "--train-images",
            "2",
            "--threads",
            "1",
        ],
        "faiss": (5_000, 64, 100),
    },
}


def _say(msg: str) -> None:
    print(f"[gpu_check] {msg}", flush=True)


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def train_flops_per_image(model: dict, n_visual: int) -> float:
    """Approximate training FLOPs per image: two sequences of max_len tokens (the annotation pair)
    through the decoder with cross-attention over n_visual tokens, the LM head and the visual
    projection; x3 for forward + backward. The emotion heads and the VAD encoder are left out."""
    T, V, d, L = model["max_len"], n_visual, model["n_embd"], model["n_layer"]
    per_layer = 28 * T * d * d + 4 * V * d * d + 4 * T * T * d + 4 * T * V * d  # matmuls, attention
    forward = L * per_layer + 2 * T * d * model["vocab_size"] + 2 * V * model["visual_dim"] * d
    return 3.0 * 2 * forward


def _dataset(work: Path, size: dict, device: str) -> tuple[Path, Path]:
    """Demo paintings -> dataset folder -> feature file of the requested token geometry."""
    from sevlm.cli import main
    from sevlm.features.hdf5_writer import extract_features

    raw, ds, feats = work / "raw", work / "dataset", work / "features.h5"
    if not (ds / "manifest.json").exists():
        assert (
            main(
                [
                    "demo-data",
                    "--out",
                    str(raw),
                    "--n-images",
                    str(size["n_images"]),
                    "--image-size",
                    str(size["image_px"]),
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "prepare",
                    "--artemis-csv",
                    str(raw / "artemis_dataset_release_v0.csv"),
                    "--protocol",
                    "sevlm",
                    "--images",
                    str(raw / "images"),
                    "--out",
                    str(ds),
                ]
            )
            == 0
        )
    if not feats.exists():
        extract_features(
            raw / "images",
            ds,
            "tiny-random",
            feats,
            batch_size=64,
            num_workers=size["workers"],
            encoder_kwargs=size["encoder"],
            device=device,
            progress=False,
        )
    return ds, feats


def train_check(work: Path, size: dict, cuda: bool, peak: float | None) -> dict:
    import torch

    from sevlm.cli import main
    from sevlm.train.checks import peak_resident_bytes

    t0 = time.perf_counter()
    ds, feats = _dataset(work, size, "cuda" if cuda else "cpu")
    prep_s = time.perf_counter() - t0
    run = work / "run"
    overrides = [
        f"data.dataset_dir={ds}",
        f"data.features={feats}",
        "data.encoder=tiny-random",
        "data.lexicon=demo",
        "data.image_preprocess=encoder",  # the features above are the tiny encoder's own (paper.json squashes)
        f"data.num_workers={size['workers']}",
        "model.decoder=null",
        *(f"model.{k}={v}" for k, v in size["model"].items()),
        f"precision={size['precision']}",
        f"ds_config={size['ds_config']}",
        f"schedule.micro_batch={size['micro']}",
        "schedule.grad_accum=1",
        f"schedule.max_steps={size['steps']}",
        f"schedule.epochs={size['epochs']}",
        f"schedule.log_every={size['log_every']}",
        "schedule.val_every=100000",
        "schedule.val_batches=1",
        "schedule.val_gen_images=4",
        "schedule.checkpoint_every=100000",
    ]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rc = main(["train", "--config", "paper", "--out", str(run), *overrides])
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"`sevlm train` failed with exit code {rc} (its message is above)")

    rows = [json.loads(x) for x in (run / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [r for r in rows if "loss" in r and "step" in r and "event" not in r]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
    timed = rates[1:] or rates  # the first window holds the warm-up (allocator, kernels, workers)
    samples_per_s = statistics.median(timed)
    model = json.loads((run / "export" / "config.json").read_text(encoding="utf-8"))["model"]
    n_visual = (size["encoder"]["image_size"] // size["encoder"]["patch_size"]) ** 2
    flops = train_flops_per_image(model, n_visual)
    out = {
        "steps": len(steps),
        "micro_batch": size["micro"],
        "precision": size["precision"],
        "ds_config": size["ds_config"],
        "visual_tokens": [n_visual, size["encoder"]["dim"]],
        "model": {k: model[k] for k in ("n_layer", "n_embd", "n_head", "max_len", "vocab_size", "mode")},
        "first_loss": steps[0]["loss"],
        "last_loss": steps[-1]["loss"],
        "step_time_s": round(size["micro"] / samples_per_s, 4),
        "samples_per_s": round(samples_per_s, 1),
        "train_wall_s": round(wall, 1),
        "data_prep_s": round(prep_s, 1),
        "train_tflops_per_image": round(flops / 1e12, 4),
        "achieved_tflops": round(flops * samples_per_s / 1e12, 2),
    }
    if cuda:
        name = torch.cuda.get_device_name()
        reserved = torch.cuda.max_memory_reserved() / 2**30
        out.update(
            {
                "device": name,
                "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "peak_reserved_gib": round(reserved, 2),
                "peak_tflops": peak,
                "mfu": round(out["achieved_tflops"] / peak, 4) if peak else None,
                "micro32_fits_11gb": (reserved <= FITS_GIB) if size["micro"] == 32 else None,
            }
        )
    else:
        out.update(
            {
                "device": "cpu",
                "peak_rss_gib": round((peak_resident_bytes() or 0) / 2**30, 2),
                "peak_tflops": peak,
                "mfu": round(out["achieved_tflops"] / peak, 4) if peak else None,
                "micro32_fits_11gb": None,
            }
        )
    mfu = f"{out['mfu']:.1%}" if out["mfu"] is not None else "n/a (unknown peak: pass --peak-tflops)"
    mem = (
        f"peak {out['peak_allocated_gib']} GiB allocated, {out['peak_reserved_gib']} GiB reserved"
        if cuda
        else f"peak RSS {out['peak_rss_gib']} GiB (whole process)"
    )
    fits = {True: "yes", False: "NO", None: "not measured (dry run: micro-batch %d)" % size["micro"]}[
        out["micro32_fits_11gb"]
    ]
    _say(
        f"train: {out['steps']} steps on {out['device']}, loss {out['first_loss']:.3f} -> {out['last_loss']:.3f}; "
        f"step {out['step_time_s'] * 1000:.1f} ms, {out['samples_per_s']} samples/s, {mem}, MFU {mfu}; "
        f"micro-batch 32 fits 11 GB: {fits}"
    )
    return out


def generate_check(cuda: bool, size: dict) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "bench_generate.py"),
        "--device",
        "cuda" if cuda else "cpu",
        *size["generate"],
    ]
    _say("bench_generate: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode != 0:
        raise RuntimeError(f"bench_generate failed:\n{proc.stdout[-1000:]}\n{proc.stderr[-1500:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    _say(
        f"bench_generate: cached {figures['cached_tokens_per_s']} tokens/s vs reference "
        f"{figures['reference_tokens_per_s']}, "
        f"speed-up {figures['speedup']}x, identical outputs: {figures['outputs_identical']}"
    )
    return figures


def faiss_check(size: dict) -> dict:
    import numpy as np

    from sevlm.evaluation import retrieval as R

    n, dim, nq = size["faiss"]
    rng = np.random.default_rng(0)
    gallery = R.normalize(rng.standard_normal((n, dim)).astype(np.float32))
    queries = R.normalize(rng.standard_normal((nq, dim)).astype(np.float32))

    def timed(use_gpu: bool):
        index = R.Index(gallery, R.IndexOptions(kind="flat", use_gpu=use_gpu))
        index.search(queries[:10], 10)  # warm-up
        t = time.perf_counter()
        scores, ids = index.search(queries, 10)
        return index.device, time.perf_counter() - t, ids

    cpu_device, cpu_s, cpu_ids = timed(False)
    out = {"gallery": n, "dim": dim, "queries": nq, "cpu_search_s": round(cpu_s, 4)}
    if R.gpu_available():
        device, gpu_s, gpu_ids = timed(True)
        out.update(
            {
                "path": "gpu",
                "device": device,
                "gpu_search_s": round(gpu_s, 4),
                "top10_agreement": float((gpu_ids == cpu_ids).mean()),
            }
        )
        _say(
            f"faiss: GPU flat search {gpu_s * 1000:.1f} ms vs CPU {cpu_s * 1000:.1f} ms for {nq} queries over {n}; "
            f"top-10 agreement {out['top10_agreement']:.4f}"
        )
    else:
        out.update(
            {
                "path": "cpu-fallback",
                "device": cpu_device,
                "reason": "faiss has no GPU support here (faiss-gpu-cu12 needs CUDA 12 libraries: see gpu_check.sh)",
            }
        )
        _say(f"faiss: fallback, {out['reason']}; CPU flat search {cpu_s * 1000:.1f} ms for {nq} queries over {n}")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU; GPU-only parts say why they are skipped"
    )
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 50, dry run 6)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense fp16 peak, for MFU")
    args = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        raise SystemExit("gpu_check: no CUDA device visible; use --dry-run to exercise the check on the CPU")
    size = dict(SIZES["dry-run" if args.dry_run else "gpu"])
    if args.steps:
        size["steps"] = args.steps
    if args.dry_run and cuda:
        _say("dry run: the CUDA device is left unused")
    cuda = cuda and not args.dry_run
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name()) if cuda else None)
    work = args.work or Path(tempfile.mkdtemp(prefix="sevlm-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    _say(
        f"{'GPU ' + torch.cuda.get_device_name() if cuda else 'dry run on the CPU'}; torch {torch.__version__}; work "
        f"folder {work}"
    )

    figures = {"mode": "dry-run" if args.dry_run else "gpu", "torch": torch.__version__}
    if not cuda:
        _say("skipped on the CPU: fp16 (fp32 here), CUDA peak memory, MFU and the 11 GB question")
    # A GPU is lent rarely and briefly: a failing stage is reported and the next one still runs.
    stages = {
        "train": lambda: train_check(work, size, cuda, peak),
        "generate": lambda: generate_check(cuda, size),
        "faiss": lambda: faiss_check(size),
    }
    for name, stage in stages.items():
        try:
            figures[name] = stage()
        except (Exception, SystemExit) as e:  # noqa: BLE001 - reported, and the exit code says so
            figures[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            _say(f"{name}: FAILED: {figures[name]['error']}")
    figures["failed"] = [n for n in stages if "error" in figures[n]]
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
