"""Training throughput and peak memory on this machine (CPU unless a GPU is present).

Two comparisons, each case in its own subprocess so peak memory (max RSS, or CUDA peak
allocated) belongs to that case alone:

1. DeepSpeed ZeRO-2 vs plain PyTorch (same model, batch, AdamW param groups, clipping; the
   trainer's own set-up, sevlm.train.recipe) on a
   demo-size model (full GPT-2 vocabulary), the shipped demo run (`demo-corpus`: model sizes,
   micro-batch, optimiser, encoder and corpus vocabulary all read from sevlm/configs/demo.json)
   and a distilgpt2-size one (6 layers, 768-d, cross-attention; random weights: no hub
   access). Target: DeepSpeed overhead under 15%.
2. Cached features vs encoding the images every step with the same encoder (JPEG decode +
   preprocess + frozen forward per step, what the paper's code does): EfficientNet-Lite0 with
   the demo-size models, and a CLIP ViT-B/16-size vision tower (random weights, same FLOPs)
   with the distilgpt2-size model. Target: cached >= 3x.

    python tools/bench_train.py                 # all cases; last line: one JSON object
    python tools/bench_train.py --steps 4 --quick     # demo and demo-corpus only
    python tools/bench_train.py --models demo-corpus --steps 6

Timings exclude the first (warm-up) step. Samples are images; each image trains two sequences.

The throughput sweep over micro-batch, accumulation, workers, precision and ZeRO stage (once
`--sweep` here) is tools/sweep_train.py.
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
    "demo": {
        "n_layer": 3,
        "n_embd": 192,
        "n_head": 4,
        "n_positions": 32,
        "max_len": 30,
        "vad_ffn": 64,
        "contrastive_dim": 128,
    },
    "distilgpt2": {
        "n_layer": 6,
        "n_embd": 768,
        "n_head": 12,
        "n_positions": 64,
        "max_len": 30,
        "contrastive_scorer": "mlp",
        "contrastive_dim": 768,
    },
}
ENCODERS = {"demo": "efficientnet-lite0", "distilgpt2": "clip-vit-b16-random"}
MICRO = {"demo": 32, "distilgpt2": 16}
# Cases read from a shipped training config (sevlm/configs/<name>.json), so the benchmark
# follows the config instead of a copy of its numbers.
CONFIG_MODELS = {"demo-corpus": "demo"}
MODEL_NAMES = ["demo", "demo-corpus", "distilgpt2"]


def _spec(model_name: str) -> dict:
    """Everything a case needs to know about its model: SEVLMConfig fields, micro-batch,
    encoder, AdamW settings and (for config cases) the corpus-vocabulary settings."""
    if model_name not in CONFIG_MODELS:
        return {
            "model": MODELS[model_name],
            "micro": MICRO[model_name],
            "encoder": ENCODERS[model_name],
            "optim": {"decoder_lr": 2e-5, "emotion_lr": 4e-5, "weight_decay": 0.0},
            "corpus_vocab": False,
            "vocab_min_count": 1,
            "config": None,
        }
    from sevlm.config import CONFIG_DIR, load_config
    from sevlm.train.config import load_train_config

    name = CONFIG_MODELS[model_name]
    cfg = load_train_config(name)
    if cfg.data.encoder is None:
        raise SystemExit(f"{CONFIG_DIR / (name + '.json')}: data.encoder is unset; the benchmark needs an encoder")
    o = cfg.optim
    return {
        "model": load_config(name).get("model", {}),
        "micro": cfg.schedule.micro_batch,
        "encoder": cfg.data.encoder,
        "optim": {
            "decoder_lr": o.decoder_lr,
            "emotion_lr": o.emotion_lr,
            "weight_decay": o.weight_decay,
            "betas": tuple(o.betas),
            "eps": o.eps,
        },
        "corpus_vocab": cfg.data.corpus_vocab,
        "vocab_min_count": cfg.data.vocab_min_count,
        "config": os.path.relpath(CONFIG_DIR / f"{name}.json", ROOT),
    }


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


def _batch_builder(spec: dict, micro: int):
    """(tokenizer, SequenceBuilder, annotations, VocabMap or None) using the shipped tokenizer
    and demo lexicon. With `corpus_vocab` the vocabulary is built from the synthetic
    annotations exactly as the trainer builds it from the training split."""
    import numpy as np

    from sevlm.data.vad import VADLexicon
    from sevlm.emotions import EMOTIONS
    from sevlm.text import SequenceBuilder
    from sevlm.vocab import VocabMap, load_tokenizer

    tok = load_tokenizer()
    rng = np.random.default_rng(0)
    words = "the colors feel calm and bright while dark shapes make me uneasy about the scene".split()
    annotations = []
    for i in range(micro):
        emos = [EMOTIONS[int(rng.integers(9))] for _ in range(3)]
        exps = [" ".join(rng.choice(words, size=int(rng.integers(8, 18)))) for _ in range(3)]
        annotations.append({"emotions": emos, "explanations": exps, "image_id": str(i)})
    vocab = None
    if spec["corpus_vocab"]:  # as TrainRecipe._corpus_vocab: every (emotion, explanation) pair
        pairs = [(e, x) for a in annotations for e, x in zip(a["emotions"], a["explanations"])]
        vocab = VocabMap.from_annotations(tok, pairs, min_count=spec["vocab_min_count"])
    max_len = spec["model"].get("max_len", 30)
    builder = SequenceBuilder(tok, VADLexicon.demo(), max_len=max_len, vocab=vocab)
    return tok, builder, annotations, vocab


def run_case(case: dict) -> dict:
    import numpy as np
    import torch

    from sevlm.config import from_dict
    from sevlm.model import SEVLM
    from sevlm.text import model_inputs
    from sevlm.train.config import TrainConfig
    from sevlm.train.engine import build_engine, build_optimizer
    from sevlm.train.resolve import start_runtime
    from sevlm.vocab import TokenIds

    torch.manual_seed(0)
    model_name, micro, steps = case["model"], case["micro"], case["steps"]
    spec = _spec(model_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok, builder, annotations, vocab = _batch_builder(spec, micro)
    encoder = _encoder(case["encoder"])
    # the trainer's own config, runtime, optimiser and engine set-up (sevlm.train.recipe)
    cfg = from_dict(
        TrainConfig,
        {
            "model": {**spec["model"], "visual_dim": encoder.dim},
            "optim": spec["optim"],
            "schedule": {"micro_batch": micro, "grad_accum": 1},
            "device": device,
            "precision": "fp16" if device == "cuda" else "fp32",
        },
        where=model_name,
    )
    mcfg = cfg.model.with_token_ids(TokenIds.from_tokenizer(tok, vocab))
    model = SEVLM(mcfg).to(device)

    if case["engine"] == "deepspeed":
        runtime = start_runtime(cfg)
        engine, optimizer, _ = build_engine(model, cfg.optim, steps + 1, runtime.ds_config)
        dtype = runtime.dtype

        def train_step(batch):
            out = engine(**batch)
            engine.backward(out.loss)
            engine.step()
    else:
        dtype = torch.float32
        optimizer, _ = build_optimizer(model, cfg.optim, steps + 1)

        def train_step(batch):
            out = model(**batch)
            out.loss.backward()
            if cfg.optim.clip_grad:  # as DeepSpeed's gradient_clipping
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
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
        batch = model_inputs(builder.collate(samples, rng))
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
        from sevlm.train.checks import peak_resident_bytes

        peak = (peak_resident_bytes() or 0) / 2**20
    n_params = sum(p.numel() for p in model.parameters())
    return {
        **case,
        "device": device,
        "samples_per_s": micro * len(times) / sum(times),
        "s_per_step": sum(times) / len(times),
        # CPU seconds (all threads): far less sensitive than wall time to other jobs on a shared machine
        "samples_per_cpu_s": micro * len(cpu_times) / sum(cpu_times),
        "peak_mem_mib": round(peak, 1),
        "parameters": n_params,
        "vocab_size": mcfg.vocab_size,
    }


def _run_subprocess(case: dict) -> dict:
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))
    out = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"case {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="timed steps per case (after one warm-up step)")
    p.add_argument("--quick", action="store_true", help="demo-size models only (demo, demo-corpus)")
    p.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=None, help="models to run (default: all)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(run_case(case)), flush=True)
        return 0

    models = args.models or (["demo", "demo-corpus"] if args.quick else MODEL_NAMES)
    results: dict = {"machine": f"{os.cpu_count()} CPU cores", "steps": args.steps, "cases": []}
    load_before = os.getloadavg()[0]  # the 1-minute load: on a shared machine it decides how far to trust the figures
    summary: dict = {}
    for m in models:
        spec = _spec(m)
        enc, micro = spec["encoder"], spec["micro"]
        cases = {
            "torch": {"model": m, "engine": "torch", "features": "cached", "encoder": enc},
            "deepspeed": {"model": m, "engine": "deepspeed", "features": "cached", "encoder": enc},
            "deepspeed_encode": {"model": m, "engine": "deepspeed", "features": "encode", "encoder": enc},
        }
        r = {}
        for key, case in cases.items():
            case.update(micro=micro, steps=args.steps)
            r[key] = _run_subprocess(case)
            results["cases"].append(r[key])
            print(
                f"{m:>11} {key:>17}: {r[key]['samples_per_s']:7.2f} images/s, "
                f"{r[key]['samples_per_cpu_s']:7.2f} images/cpu-s, "
                f"{r[key]['s_per_step']:6.2f} s/step, peak {r[key]['peak_mem_mib']:8.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
        summary[m] = {
            "encoder": enc,
            "micro_batch": micro,
            "config": spec["config"],  # None: sizes defined in this script
            "vocab_size": r["torch"]["vocab_size"],
            "parameters": r["torch"]["parameters"],
            "torch_samples_per_s": round(r["torch"]["samples_per_s"], 3),
            "deepspeed_samples_per_s": round(r["deepspeed"]["samples_per_s"], 3),
            "deepspeed_overhead": round(1 - r["deepspeed"]["samples_per_s"] / r["torch"]["samples_per_s"], 4),
            "deepspeed_overhead_cpu_time": round(
                1 - r["deepspeed"]["samples_per_cpu_s"] / r["torch"]["samples_per_cpu_s"], 4
            ),
            "torch_peak_mib": r["torch"]["peak_mem_mib"],
            "deepspeed_peak_mib": r["deepspeed"]["peak_mem_mib"],
            "encode_every_step_samples_per_s": round(r["deepspeed_encode"]["samples_per_s"], 3),
            "cached_speedup": round(r["deepspeed"]["samples_per_s"] / r["deepspeed_encode"]["samples_per_s"], 3),
            "cached_speedup_cpu_time": round(
                r["deepspeed"]["samples_per_cpu_s"] / r["deepspeed_encode"]["samples_per_cpu_s"], 3
            ),
        }
    results["summary"] = summary
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(results["summary"] | {"machine": results["machine"], "steps": args.steps, "load_avg_1min": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
