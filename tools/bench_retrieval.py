"""Benchmark: FAISS vs numpy top-K search on a large explanation gallery, and evaluation wall time.

1. Search: a gallery of random L2-normalised embeddings (default 100k x 256-d) and a batch of
   queries; exact top-K by numpy (matmul + argpartition) vs FAISS IndexFlatIP, IVF and HNSW
   (build time separate; recall@K of the approximate indices against the exact result).
2. Evaluation: `sevlm.evaluation.metrics.evaluate` on N synthetic predictions (default 10k
   images x 5 human explanations each): PTB tokenizer, BLEU, METEOR, ROUGE-L, CIDEr, emotion
   metrics, end to end, including the Java start-up.

The last line printed is one JSON object with every figure.

    .venv/bin/python tools/bench_retrieval.py                  # full run
    .venv/bin/python tools/bench_retrieval.py --gallery 20000 --predictions 1000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def numpy_topk(queries: np.ndarray, gallery: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """Exact top-k ids by inner product, in query blocks (bounded memory)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), block):
        scores = queries[s : s + block] @ gallery.T  # [b, N]
        part = np.argpartition(-scores, k, axis=1)[:, :k]  # [b, k] unordered
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[s : s + block] = np.take_along_axis(part, order, axis=1)
    return out


def timed(fn, repeat: int = 3):
    """(best wall seconds over `repeat` runs, last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def bench_search(n_gallery: int, dim: int, n_queries: int, k: int, seed: int, data: str = "random") -> dict:
    import faiss

    from sevlm.evaluation.retrieval import Index, IndexOptions, gpu_available, normalize

    rng = np.random.default_rng(seed)
    if data == "random":  # no structure at all: the hardest case for IVF/HNSW
        gallery = normalize(rng.standard_normal((n_gallery, dim), dtype=np.float32))
        queries = normalize(rng.standard_normal((n_queries, dim), dtype=np.float32))
    else:  # 1000 clusters, closer to real embeddings
        centers = normalize(rng.standard_normal((1000, dim), dtype=np.float32))
        noisy = lambda n: normalize(centers[rng.integers(0, 1000, n)] + 0.05 * rng.standard_normal((n, dim), dtype=np.float32))  # noqa: E731
        gallery, queries = noisy(n_gallery), noisy(n_queries)
    res: dict = {"data": data, "gallery": n_gallery, "dim": dim, "queries": n_queries, "k": k,
                 "faiss_version": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
                 "faiss_gpu": gpu_available()}
    t_np, exact = timed(lambda: numpy_topk(queries, gallery, k))
    res["numpy_exact_s"] = t_np
    for kind in ("flat", "ivf", "hnsw"):
        t0 = time.perf_counter()
        index = Index(gallery, IndexOptions(kind=kind, use_gpu=False))
        build = time.perf_counter() - t0
        t_search, (_, ids) = timed(lambda: index.search(queries, k))
        recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(ids, exact)]))
        res[kind] = {"build_s": build, "search_s": t_search, "queries_per_s": n_queries / t_search,
                     "speedup_vs_numpy": t_np / t_search, f"recall@{k}_vs_exact": recall, **index.params}
        print(f"{kind:5s} build {build:7.2f}s  search {t_search:7.3f}s  ({t_np / t_search:6.1f}x numpy)  recall {recall:.4f}", file=sys.stderr)
    print(f"numpy exact search {t_np:.3f}s for {n_queries} queries x {n_gallery} items", file=sys.stderr)
    return res


WORDS = ("sky sea tree woman man light dark colour colours red blue green calm storm face eyes sad happy bright "
         "lonely strange beautiful peaceful violent soft warm cold shadow flowers house field water night").split()


def _sentence(rng: random.Random) -> str:
    return f"the {' '.join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))}."


def bench_evaluation(n_pred: int, refs_per_image: int, seed: int) -> dict:
    from sevlm.constants import EMOTIONS
    from sevlm.data.artemis import dominant_emotion
    from sevlm.evaluation.metrics import evaluate

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        refs, lines = {}, []
        for i in range(n_pred):
            emos = [rng.choice(EMOTIONS) for _ in range(refs_per_image)]
            refs[f"Style/p{i}"] = {"image_name": f"Style/p{i}.jpg", "emotions": emos,
                                   "explanations": [_sentence(rng) for _ in emos], "dominant_emotion": dominant_emotion(emos)}
            lines.append(json.dumps({"image_id": f"Style/p{i}", "emotion": rng.choice(EMOTIONS), "explanation": _sentence(rng)}))
        (Path(tmp) / "refs.json").write_text(json.dumps(refs))
        (Path(tmp) / "pred.jsonl").write_text("\n".join(lines) + "\n")
        t0 = time.perf_counter()
        ev = evaluate(Path(tmp) / "pred.jsonl", Path(tmp) / "refs.json")
        wall = time.perf_counter() - t0
    print(f"evaluate: {n_pred} predictions x {refs_per_image} references in {wall:.1f}s "
          f"(BLEU-4 {ev.report['BLEU-4']:.4f}, METEOR {ev.report['METEOR']:.4f})", file=sys.stderr)
    return {"predictions": n_pred, "references_per_image": refs_per_image, "wall_s": wall,
            "predictions_per_s": n_pred / wall, "includes": "JSON load, PTB tokenizer, BLEU, METEOR (JVM start), ROUGE-L, CIDEr, emotion metrics"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--predictions", type=int, default=10_000)
    p.add_argument("--refs-per-image", type=int, default=5)
    p.add_argument("--data", choices=("random", "clustered"), default="random",
                   help="random normalised vectors (default) or 1000 noisy clusters")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "search": bench_search(args.gallery, args.dim, args.queries, args.k, args.seed, args.data)}
    if not args.skip_eval:
        result["evaluation"] = bench_evaluation(args.predictions, args.refs_per_image, args.seed)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
