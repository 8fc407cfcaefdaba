"""Training throughput and peak memory on this machine (CPU unless a GPU is present).

Two comparisons, each case in its own subprocess so peak memory (max RSS, or CUDA peak
allocated) belongs to that case alone:

1. DeepSpeed ZeRO-2 vs plain PyTorch (same model, batch, AdamW param groups, clipping) on a
   demo-size model and a distilgpt2-size one (6 layers, 768-d, cross-attention; random
   weights: no hub access). Target: DeepSpeed overhead under 15%.
2. Cached features vs encoding the images every step with the same encoder (JPEG decode +
   preprocess + frozen forward per step, what the paper's code does): EfficientNet-Lite0 with
   the demo-size model, and a CLIP ViT-B/16-size vision tower (random weights, same FLOPs)
   with the distilgpt2-size model. Target: cached >= 3x.

    python tools/bench_train.py                 # all cases; last line: one JSON object
    python tools/bench_train.py --steps 4 --quick

Timings exclude the first (warm-up) step. Samples are images; each image trains two sequences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKIART = ROOT.parent / "shared" / "data" / "wikiart"

MODELS = {
    "demo": {"n_layer": 3, "n_embd": 192, "n_head": 4, "n_positions": 32, "max_len": 30, "vad_ffn": 64,
             "contrastive_dim": 128},
    "distilgpt2": {"n_layer": 6, "n_embd": 768, "n_head": 12, "n_positions": 64, "max_len": 30,
                   "contrastive_scorer": "mlp", "contrastive_dim": 768},
}
ENCODERS = {"demo": "efficientnet-lite0", "distilgpt2": "clip-vit-b16-random"}


# ---- one case (runs in a subprocess) ----------------------------------------------------------
def _images(n: int) -> list[Path]:
    paths = sorted(WIKIART.glob("*/*.jpg"))[:n] if WIKIART.exists() else []
    if len(paths) < n:  # no shared paintings: synthesise JPEGs so decode cost stays realistic
        import numpy as np
        from PIL import Image

        out = Path(os.environ.get("TMPDIR", "/tmp")) / "sevlm_bench_images"
        out.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        paths = []
        for i in range(n):
            p = out / f"{i}.jpg"
            if not p.exists():
                Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(p)
            paths.append(p)
    return paths


class _RandomCLIPTower:
    """CLIP ViT-B/16 vision tower shape and cost (random weights); CLIP preprocessing."""

    name = "clip-vit-b16-random"

    def __init__(self):
        import torch
        from transformers import CLIPVisionConfig, CLIPVisionModel

        self.model = CLIPVisionModel(CLIPVisionConfig(patch_size=16, image_size=224)).eval()
        self.mean = torch.tensor([0.4815, 0.4578, 0.4082]).view(3, 1, 1)
        self.std = torch.tensor([0.2686, 0.2613, 0.2758]).view(3, 1, 1)
        self.num_tokens, self.dim = 196, 768

    def preprocess(self, img):
        import numpy as np
        import torch

        img = img.convert("RGB").resize((224, 224))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std

    def __call__(self, pixels):
        h = self.model(pixel_values=pixels).last_hidden_state  # (B, 197, 768)
        return h[:, 1:], h[:, 0]


def _encoder(name: str):
    if name == "clip-vit-b16-random":
        return _RandomCLIPTower()
    from sevlm.encoders import build_encoder

    return build_encoder(name).eval()


def _batch_builder(model_name: str, micro: int):
    """(SequenceBuilder, samples with annotations) using the shipped tokenizer and demo lexicon."""
    import numpy as np

    from sevlm.constants import EMOTIONS
    from sevlm.data.vad import VADLexicon
    from sevlm.text import SequenceBuilder, load_tokenizer

    tok = load_tokenizer()
    builder = SequenceBuilder(tok, VADLexicon.demo(), max_len=MODELS[model_name]["max_len"])
    rng = np.random.default_rng(0)
    words = "the colors feel calm and bright while dark shapes make me uneasy about the scene".split()
    annotations = []
    for i in range(micro):
        emos = [EMOTIONS[int(rng.integers(9))] for _ in range(3)]
        exps = [" ".join(rng.choice(words, size=int(rng.integers(8, 18)))) for _ in range(3)]
        annotations.append({"emotions": emos, "explanations": exps, "image_id": str(i)})
    return tok, builder, annotations


def run_case(case: dict) -> dict:
    import numpy as np
    import torch

    from sevlm.config import from_dict
    from sevlm.model import SEVLM, SEVLMConfig
    from sevlm.text import TokenIds

    torch.manual_seed(0)
    model_name, micro, steps = case["model"], case["micro"], case["steps"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok, builder, annotations = _batch_builder(model_name, micro)
    encoder = _encoder(case["encoder"])
    mcfg = from_dict(SEVLMConfig, {**MODELS[model_name], "visual_dim": encoder.dim}).with_token_ids(
        TokenIds.from_tokenizer(tok))
    model = SEVLM(mcfg).to(device)
    groups = model.param_groups(2e-5, 4e-5, 0.0)
    optimizer = torch.optim.AdamW(groups)

    if case["engine"] == "deepspeed":
        from sevlm.train.distributed import init_distributed

        import deepspeed

        from sevlm.train.config import resolve_ds_config

        init_distributed(device)
        precision = "fp16" if device == "cuda" else "fp32"
        ds_cfg = resolve_ds_config("auto", precision, micro, 1, 1)
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg)
        dtype = torch.float16 if precision == "fp16" else torch.float32

        def train_step(batch):
            out = engine(**batch)
            engine.backward(out.loss)
            engine.step()
    else:
        dtype = torch.float32

        def train_step(batch):
            out = model(**batch)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    paths = _images(micro)
    cached = None
    if case["features"] == "cached":
        from PIL import Image

        with torch.no_grad():
            pixels = torch.stack([encoder.preprocess(Image.open(p)) for p in paths])
            cached, _ = encoder(pixels)  # (B, N, D): encoded once, as the feature cache does
        cached = cached.float()

    def visual_for_step():
        if cached is not None:
            return cached
        from PIL import Image

        with torch.no_grad():  # the frozen encoder, every step, from the JPEG files
            pixels = torch.stack([encoder.preprocess(Image.open(p)) for p in paths]).to(device)
            tokens, _ = encoder(pixels)
        return tokens.float()

    rng = np.random.default_rng(0)
    times, cpu_times = [], []
    for step in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        samples = [{**a, "tokens": None} for a in annotations]
        visual = visual_for_step()
        for s, v in zip(samples, visual):
            s["tokens"] = v
        batch = builder.collate(samples, rng)
        batch.pop("image_ids")
        batch = {k: (v.to(device).to(dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}
        train_step(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:  # step 0 is warm-up
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    n_params = sum(p.numel() for p in model.parameters())
    return {**case, "device": device, "samples_per_s": micro * len(times) / sum(times),
            "s_per_step": sum(times) / len(times),
            # CPU seconds (all threads): far less sensitive than wall time to other jobs on a shared machine
            "samples_per_cpu_s": micro * len(cpu_times) / sum(cpu_times), "peak_mem_mib": round(peak, 1), "parameters": n_params}


def _run_subprocess(case: dict) -> dict:
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))
    out = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"case {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="timed steps per case (after one warm-up step)")
    p.add_argument("--quick", action="store_true", help="demo-size model only")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None, help="models to run (default: all)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))), flush=True)
        return 0

    models = args.models or (["demo"] if args.quick else ["demo", "distilgpt2"])
    micro = {"demo": 32, "distilgpt2": 16}
    results: dict = {"machine": f"{os.cpu_count()} CPU cores", "steps": args.steps, "cases": []}
    summary: dict = {}
    for m in models:
        enc = ENCODERS[m]
        cases = {
            "torch": {"model": m, "engine": "torch", "features": "cached", "encoder": enc},
            "deepspeed": {"model": m, "engine": "deepspeed", "features": "cached", "encoder": enc},
            "deepspeed_encode": {"model": m, "engine": "deepspeed", "features": "encode", "encoder": enc},
        }
        r = {}
        for key, case in cases.items():
            case.update(micro=micro[m], steps=args.steps)
            r[key] = _run_subprocess(case)
            results["cases"].append(r[key])
            print(f"{m:>11} {key:>17}: {r[key]['samples_per_s']:7.2f} images/s, "
                  f"{r[key]['samples_per_cpu_s']:7.2f} images/cpu-s, "
                  f"{r[key]['s_per_step']:6.2f} s/step, peak {r[key]['peak_mem_mib']:8.1f} MiB", file=sys.stderr,
                  flush=True)
        summary[m] = {
            "encoder": enc,
            "micro_batch": micro[m],
            "torch_samples_per_s": round(r["torch"]["samples_per_s"], 3),
            "deepspeed_samples_per_s": round(r["deepspeed"]["samples_per_s"], 3),
            "deepspeed_overhead": round(1 - r["deepspeed"]["samples_per_s"] / r["torch"]["samples_per_s"], 4),
            "deepspeed_overhead_cpu_time": round(
                1 - r["deepspeed"]["samples_per_cpu_s"] / r["torch"]["samples_per_cpu_s"], 4),
            "torch_peak_mib": r["torch"]["peak_mem_mib"],
            "deepspeed_peak_mib": r["deepspeed"]["peak_mem_mib"],
            "encode_every_step_samples_per_s": round(r["deepspeed_encode"]["samples_per_s"], 3),
            "cached_speedup": round(r["deepspeed"]["samples_per_s"] / r["deepspeed_encode"]["samples_per_s"], 3),
            "cached_speedup_cpu_time": round(
                r["deepspeed"]["samples_per_cpu_s"] / r["deepspeed_encode"]["samples_per_cpu_s"], 3),
        }
    results["summary"] = summary
    print(json.dumps(results["summary"] | {"machine": results["machine"], "steps": args.steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
