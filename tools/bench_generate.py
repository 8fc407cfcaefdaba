"""Benchmark: batched KV-cached greedy decoding vs the reference style, plus model size and
training-step memory, for a distilgpt2-size SEVLM (random init: no hub access needed).

Reference style (the authors' decoding): one image at a time, and at every step the whole
sequence is re-embedded, its VAD re-looked-up and re-encoded, and the full forward re-run with
no cache (image projection, cross-attention keys/values of the visual tokens, logits at every
position), i.e. `generate(..., use_cache=False)` per image. The fast path decodes all images
as one batch with the GPT-2 KV cache (the visual keys/values computed once) and the emotion
encoder's cache, computing logits only for the newest position. Both paths decode the same
images with the same model; the outputs must be identical.

    .venv/bin/python tools/bench_generate.py [--images 16] [--threads 1] [--max-new-tokens 25] [--device cpu]

The last line printed is a JSON object of the figures (`speedup` among them).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from sevlm.data.vad import VADLexicon
from sevlm.generate import DecodingConfig, generate
from sevlm.model import SEVLM, SEVLMConfig
from sevlm.text import SequenceBuilder, model_inputs
from sevlm.train.checks import peak_resident_bytes
from sevlm.vocab import load_tokenizer


def rss_mb() -> float:
    return (peak_resident_bytes() or 0) / 2**20


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16, help="images decoded (one batch for the cached path)")
    p.add_argument("--max-new-tokens", type=int, default=25)
    p.add_argument("--visual-tokens", type=int, default=196, help="visual tokens per image (CLIP ViT-B/16: 196)")
    p.add_argument("--visual-dim", type=int, default=768)
    p.add_argument("--train-images", type=int, default=8, help="images per training step (2 sequences each)")
    p.add_argument("--lexicon", default="demo", help="VAD lexicon path or 'demo'")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is faster on a loaded shared machine",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    rss0 = rss_mb()
    tok = load_tokenizer()
    lex = VADLexicon.load(args.lexicon)
    builder = SequenceBuilder(tok, lex, max_len=30)
    torch.manual_seed(args.seed)
    cfg = SEVLMConfig(n_layer=6, n_embd=768, n_head=12, n_positions=1024, visual_dim=args.visual_dim, dropout=0.1)
    model = SEVLM(cfg.with_token_ids(builder.ids)).to(device)
    counts = model.num_parameters()
    print(f"device {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)")
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))

    # ---- training step memory (one step of AdamW on a pair batch) -----------------------------
    g = torch.Generator().manual_seed(args.seed)
    samples = [
        {
            "__key__": f"s/{i}",
            "image_id": f"s/{i}",
            "tokens": torch.randn(args.visual_tokens, args.visual_dim, generator=g),
            "emotions": ["awe", "fear"],
            "explanations": ["the bright sky makes me feel small and calm", "the dark storm is coming for the boat"],
        }
        for i in range(args.train_images)
    ]
    batch = {k: v.to(device) for k, v in model_inputs(builder.collate(samples, np.random.default_rng(0))).items()}
    opt = torch.optim.AdamW(model.param_groups(2e-5, 4e-5, 0.0))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    rss_before = rss_mb()
    t = time.perf_counter()
    out = model(**batch)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - t
    train_mem = {
        "train_images": args.train_images,
        "train_sequences": int(batch["input_ids"].shape[0]),
        "train_step_s": round(step_s, 3),
        "peak_rss_mb": round(rss_mb(), 1),
        "rss_before_step_mb": round(rss_before, 1),
        "process_start_rss_mb": round(rss0, 1),
    }
    if device.type == "cuda":
        train_mem["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(f"training step: {json.dumps(train_mem)}")
    del opt, out
    model.eval()

    # ---- decoding -------------------------------------------------------------------------------
    visual = torch.randn(args.images, args.visual_tokens, args.visual_dim, generator=g)
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens)
    generate(model, tok, lex, visual[:2].to(device), DecodingConfig(max_new_tokens=3))  # warm-up

    t = time.perf_counter()
    fast = generate(model, tok, lex, visual.to(device), decoding)
    fast_s = time.perf_counter() - t

    t = time.perf_counter()
    ref = [
        generate(model, tok, lex, visual[i : i + 1].to(device), decoding, use_cache=False)[0]
        for i in range(args.images)
    ]
    ref_s = time.perf_counter() - t

    same = [a.tokens for a in fast] == [b.tokens for b in ref]
    assert same, "cached batched decoding differs from the reference"
    # generated tokens, the EOS included where one was produced
    n_tokens = sum(min(len(h.tokens) + 1, args.max_new_tokens) for h in fast)
    figures = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "model": "distilgpt2-size (6 layers, 768-d, 12 heads), random init, cross-attention",
        "images": args.images,
        "visual_tokens": args.visual_tokens,
        "max_new_tokens": args.max_new_tokens,
        "generated_tokens": n_tokens,
        "cached_batched_s": round(fast_s, 3),
        "reference_s": round(ref_s, 3),
        "cached_tokens_per_s": round(n_tokens / fast_s, 1),
        "reference_tokens_per_s": round(n_tokens / ref_s, 1),
        "speedup": round(ref_s / fast_s, 2),
        "outputs_identical": same,
        "parameters": counts,
        **train_mem,
    }
    print(
        f"cached batched greedy: {figures['cached_tokens_per_s']} tokens/s; reference: "
        f"{figures['reference_tokens_per_s']} tokens/s; "
        f"speed-up {figures['speedup']}x; outputs identical: {same}"
    )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
