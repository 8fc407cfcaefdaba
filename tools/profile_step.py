"""Where one training step of the demo-size SEVLM spends its time (plain torch, no DeepSpeed).

Builds the demo model (sevlm/configs/demo.json sizes, real GPT-2 tokenizer, random weights)
and a realistic batch with SequenceBuilder.collate (32 synthetic images of 49 x 1280 visual
tokens, two short English explanations each), then times collate, forward, backward and the
AdamW step at each torch thread count, and prints torch.profiler's top operators.

With --baseline REV the same steps also run on the model code of git revision REV
(sevlm/model/model.py as of REV, same weights, same batch), interleaved with the current
code, so before/after figures come from one run on a shared, loaded machine.

    python tools/profile_step.py                        # threads 1 and 2, current code
    python tools/profile_step.py --baseline HEAD~1 --steps 5 --no-profile
    python tools/profile_step.py --mode none            # the no-image control
    python tools/profile_step.py --vocab full corpus --threads 1 --no-profile
    python tools/profile_step.py --config demo --vocab full corpus --threads 1   # sizes of a train config

With --vocab full corpus the same step runs on a model over the full GPT-2 vocabulary
(50,260 rows) and on one over a corpus vocabulary (vocab.VocabMap built from the batch's
annotations plus 3,000 demo-style utterances from sevlm/demo/, a few hundred ids),
same architecture and seed, same texts, interleaved.

Last line: one JSON object with the median times (seconds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = {
    "n_layer": 3,
    "n_embd": 192,
    "n_head": 4,
    "n_positions": 32,
    "max_len": 30,
    "dropout": 0.1,
    "vad_ffn": 64,
    "contrastive_dim": 128,
}
WORDS = (
    "the dark sky over a calm sea makes me feel sad because the storm is coming and the woman "
    "looks alone in the bright field of flowers while colors swirl with joy and fear"
).split()
EMOTIONS = ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness", "something else"]


def synthetic_samples(n: int, rng: np.random.Generator, tokens=(49, 1280)) -> list[dict]:
    """Feature-reader-style samples: random visual tokens, 3-5 annotations of 8-20 words."""
    out = []
    for i in range(n):
        k = int(rng.integers(3, 6))
        out.append(
            {
                "__key__": f"synthetic/p{i}",
                "image_id": f"synthetic/p{i}",
                "tokens": rng.standard_normal(tokens, dtype=np.float32),
                "emotions": [EMOTIONS[int(rng.integers(len(EMOTIONS)))] for _ in range(k)],
                "explanations": [" ".join(rng.choice(WORDS, int(rng.integers(8, 21)))) for _ in range(k)],
            }
        )
    return out


def demo_corpus(n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(emotion, explanation) pairs written like the demo data set's utterances."""
    from sevlm.demo.crowd import write_utterance
    from sevlm.demo.tables import LOOKS

    out = []
    for _ in range(n):
        emotion = EMOTIONS[int(rng.integers(len(EMOTIONS)))]
        look = LOOKS[emotion]
        colours = [name for name, _ in look.colours]
        colours = [colours[int(i)] for i in rng.permutation(len(colours))[:3]]
        out.append((emotion, write_utterance(emotion, colours, look.shapes, rng).lower().strip(".!")))
    return out


def load_module(rev: str, rel: str):
    """The file `rel` (e.g. sevlm/model/model.py) as of git revision `rev`, imported as a
    separate module (its own imports resolve to the current package)."""
    src = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    name = "baseline_" + Path(rel).stem
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def make_optimizer(model):
    """The trainer's AdamW over the model's param groups (sevlm.train.recipe), demo-style rates."""
    from sevlm.train.config import OptimConfig
    from sevlm.train.engine import build_optimizer

    return build_optimizer(model, OptimConfig(decoder_lr=1e-3, emotion_lr=2e-3, weight_decay=0.01), total_steps=10**6)[
        0
    ]


def timed_step(model, opt, batch) -> dict[str, float]:
    t0 = time.perf_counter()
    out = model(**batch)
    t1 = time.perf_counter()
    out.loss.backward()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return {
        "forward": t1 - t0,
        "backward": t2 - t1,
        "optim": t3 - t2,
        "step": t3 - t0,
        "loss": float(out.loss.detach()),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=4, help="timed steps per case (after one warm-up)")
    p.add_argument(
        "--images", type=int, default=None, help="images per batch (default 32, or the config's micro_batch)"
    )
    p.add_argument(
        "--config",
        default=None,
        help="take model sizes and images per batch from a train config (name in sevlm/configs or a path); "
        "default: the built-in 3 x 192 sizes",
    )
    p.add_argument("--mode", default="cross", choices=["cross", "prefix", "none"])
    p.add_argument("--baseline", default=None, help="git revision whose model.py to time alongside")
    p.add_argument(
        "--vocab",
        nargs="+",
        default=["full"],
        choices=["full", "corpus"],
        help="vocabularies to time side by side (full: 50,260 GPT-2 ids; corpus: vocab.VocabMap)",
    )
    p.add_argument("--lexicon", default=str(ROOT.parent / "shared" / "assets" / "nrc-vad" / "NRC-VAD-Lexicon.txt"))
    p.add_argument("--no-profile", action="store_true")
    args = p.parse_args(argv)

    from sevlm.data.vad import VADLexicon
    from sevlm.model import SEVLM, SEVLMConfig
    from sevlm.text import SequenceBuilder, model_inputs
    from sevlm.vocab import VocabMap, load_tokenizer

    sizes = dict(DEMO)
    if args.config:
        from sevlm.config import load_config

        train_cfg = load_config(args.config)
        sizes.update({k: v for k, v in train_cfg.get("model", {}).items() if k in DEMO})
        if args.images is None:
            args.images = int(train_cfg.get("schedule", {}).get("micro_batch", 32))
    args.images = args.images or 32
    print(f"model sizes: {sizes}; {args.images} images per batch", flush=True)

    tok = load_tokenizer()
    lex = VADLexicon.from_file(args.lexicon) if Path(args.lexicon).is_file() else VADLexicon.demo()
    builder = SequenceBuilder(tok, lex, max_len=sizes["max_len"])
    rng = np.random.default_rng(0)
    samples = synthetic_samples(args.images, rng)
    builders = {"full" if "corpus" in args.vocab else "current": builder}
    if args.baseline:
        builders = {
            "baseline": load_module(args.baseline, "sevlm/text.py").SequenceBuilder(tok, lex, sizes["max_len"]),
            **builders,
        }
    collate_s: dict[str, dict[int, float]] = {name: {} for name in builders}
    for th in args.threads:
        torch.set_num_threads(th)
        for _ in range(3):
            for name, b in builders.items():
                t0 = time.perf_counter()
                batch = b.collate(samples, np.random.default_rng(1))
                collate_s[name][th] = min(collate_s[name].get(th, 1e9), time.perf_counter() - t0)
    batches = [b.collate(samples, np.random.default_rng(1)) for b in builders.values()]
    for k in batches[0]:  # the batch itself must not change
        v0, v1 = batches[0][k], batches[-1][k]
        assert torch.equal(v0, v1) if torch.is_tensor(v0) else v0 == v1, f"collate differs in {k}"
    batch = model_inputs(batches[-1])
    if args.baseline and "corpus" in args.vocab:
        p.error("--baseline and --vocab corpus do not combine; time one comparison at a time")
    vocab = None
    if "corpus" in args.vocab:
        pairs = [(e, x) for s in samples for e, x in zip(s["emotions"], s["explanations"])]
        vocab = VocabMap.from_annotations(tok, pairs + demo_corpus(3000, np.random.default_rng(2)))
        cbuilder = SequenceBuilder(tok, lex, max_len=sizes["max_len"], vocab=vocab)
        cbatch = model_inputs(cbuilder.collate(samples, np.random.default_rng(1)))
        # the same sequences in the compact id space
        assert torch.equal(torch.from_numpy(vocab.to_compact(batch["input_ids"].numpy())), cbatch["input_ids"])
        collate_s["corpus"] = {}
        for th in args.threads:
            torch.set_num_threads(th)
            for _ in range(3):
                t0 = time.perf_counter()
                cbuilder.collate(samples, np.random.default_rng(1))
                collate_s["corpus"][th] = min(collate_s["corpus"].get(th, 1e9), time.perf_counter() - t0)
        print(f"corpus vocabulary: {len(vocab)} ids (of {len(tok)})", flush=True)
    n_tgt = int((batch["labels"][:, 1:] != -100).sum())
    print(
        f"batch: {tuple(batch['input_ids'].shape)} sequences, {n_tgt} target tokens; collate (best of 3) "
        + ", ".join(f"{name} threads={th}: {t * 1e3:.1f} ms" for name, d in collate_s.items() for th, t in d.items()),
        flush=True,
    )

    cfg = SEVLMConfig(**sizes, mode=args.mode, visual_dim=1280).with_token_ids(builder.ids)
    models, model_batch = {}, {}
    if "full" in args.vocab:
        torch.manual_seed(0)
        name = "current" if args.vocab == ["full"] else "full"
        models[name], model_batch[name] = SEVLM(cfg), batch
    if vocab is not None:
        torch.manual_seed(0)
        models["corpus"] = SEVLM(cfg.with_token_ids(cbuilder.ids))
        model_batch["corpus"] = cbatch
    if args.baseline:
        mod = load_module(args.baseline, "sevlm/model/model.py")
        base = mod.SEVLM(cfg)
        base.load_state_dict(models["current"].state_dict())
        models = {"baseline": base, **models}
        model_batch["baseline"] = batch
    for m in models.values():
        m.train()
    if args.baseline:  # same weights, same dropout draws: the losses must agree
        losses = {}
        for name, m in models.items():
            torch.manual_seed(123)
            losses[name] = float(m(**batch).loss)
        print("loss (same seed):", losses, flush=True)

    result: dict = {
        "collate_s": collate_s,
        "target_tokens": n_tgt,
        "mode": args.mode,
        "sizes": sizes,
        "images": args.images,
        "threads": {},
        "vocab_size": {name: m.config.vocab_size for name, m in models.items()},
        "parameters": {name: sum(q.numel() for q in m.parameters()) for name, m in models.items()},
    }
    if len(models) > 1:
        print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in result["parameters"].items()), flush=True)
    for th in args.threads:
        torch.set_num_threads(th)
        opts = {name: make_optimizer(m) for name, m in models.items()}
        times: dict[str, list[dict]] = {name: [] for name in models}
        for i in range(args.steps + 1):
            for name, m in models.items():  # interleaved: load changes hit both alike
                t = timed_step(m, opts[name], model_batch[name])
                if i:
                    times[name].append(t)
        row = {}
        for name, ts in times.items():
            med = {k: statistics.median(t[k] for t in ts) for k in ("forward", "backward", "optim", "step")}
            row[name] = med
            print(f"threads={th} {name:9s} " + " ".join(f"{k} {v:.3f}s" for k, v in med.items()), flush=True)
        result["threads"][th] = row

    if not args.no_profile:
        from torch.profiler import ProfilerActivity, profile

        torch.set_num_threads(args.threads[0])
        for name, m in models.items():
            opt = make_optimizer(m)
            timed_step(m, opt, model_batch[name])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                timed_step(m, opt, model_batch[name])
            print(f"\n== {name}, threads={args.threads[0]}: top operators by self CPU time ==")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
