"""Benchmark: FAISS vs numpy top-K search on a large explanation gallery, and evaluation wall time.

1. Search: a gallery of random L2-normalised embeddings (default 100k x 256-d) and a batch of
   queries; exact top-K by numpy (matmul + argpartition) vs FAISS IndexFlatIP, IVF and HNSW
   (build time separate; recall@K of the approximate indices against the exact result).
   The contenders take turns over `--rounds` rounds (the order rotates each round), so a load
   that swings during the run hits them alike; each reports its median, min and max, and the
   load average is printed before and after. Importing sevlm sets the passive OpenMP wait,
   without which FAISS's threads spin on a shared CPU.
2. Evaluation: `sevlm.evaluation.metrics.evaluate` on N synthetic predictions (default 10k
   images x 5 human explanations each): PTB tokenizer, BLEU, METEOR, ROUGE-L, CIDEr, emotion
   metrics, end to end, including the Java start-up.

The last line printed is one JSON object with every figure.

    .venv/bin/python tools/bench_retrieval.py                  # full run
    .venv/bin/python tools/bench_retrieval.py --gallery 20000 --predictions 1000   # quick
    nice .venv/bin/python tools/bench_retrieval.py --skip-eval --rounds 7 --threads 2
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

import numpy as np  # noqa: E402

import sevlm  # noqa: F401  first: it sets the passive OpenMP wait before faiss or torch loads OpenMP


def numpy_topk(queries: np.ndarray, gallery: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """Exact top-k ids by inner product, in query blocks (bounded memory)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), block):
        scores = queries[s : s + block] @ gallery.T  # [b, N]
        part = np.argpartition(-scores, k, axis=1)[:, :k]  # [b, k] unordered
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[s : s + block] = np.take_along_axis(part, order, axis=1)
    return out


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def alternate(contenders: dict, rounds: int) -> tuple[dict, dict]:
    """Time each contender once per round, rotating the order; ({name: stats}, {name: last result})."""
    times: dict = {name: [] for name in contenders}
    results: dict = {}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            results[name] = contenders[name]()
            times[name].append(time.perf_counter() - t)
    stats = {n: {"median_s": float(np.median(t)), "min_s": min(t), "max_s": max(t), "runs": len(t)} for n, t in times.items()}
    return stats, results


def bench_search(n_gallery: int, dim: int, n_queries: int, k: int, seed: int, data: str = "random",
                 rounds: int = 5, threads: int | None = None) -> dict:
    import faiss

    from sevlm.evaluation.retrieval import Index, IndexOptions, gpu_available, normalize

    if threads:
        faiss.omp_set_num_threads(threads)
        try:  # numpy's BLAS gets the same number of threads, for a fair comparison
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads)
        except ImportError:
            pass
    rng = np.random.default_rng(seed)
    if data == "random":  # no structure at all: the hardest case for IVF/HNSW
        gallery = normalize(rng.standard_normal((n_gallery, dim), dtype=np.float32))
        queries = normalize(rng.standard_normal((n_queries, dim), dtype=np.float32))
    else:  # 1000 clusters, closer to real embeddings
        centers = normalize(rng.standard_normal((1000, dim), dtype=np.float32))
        noisy = lambda n: normalize(centers[rng.integers(0, 1000, n)] + 0.05 * rng.standard_normal((n, dim), dtype=np.float32))  # noqa: E731
        gallery, queries = noisy(n_gallery), noisy(n_queries)
    res: dict = {"data": data, "gallery": n_gallery, "dim": dim, "queries": n_queries, "k": k, "rounds": rounds,
                 "faiss_version": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "faiss_gpu": gpu_available(),
                 "load_before": load()}
    indices, builds = {}, {}
    for kind in ("flat", "ivf", "hnsw"):
        t0 = time.perf_counter()
        indices[kind] = Index(gallery, IndexOptions(kind=kind, use_gpu=False))
        builds[kind] = time.perf_counter() - t0
    contenders = {"numpy": lambda: numpy_topk(queries, gallery, k)}
    contenders.update({kind: (lambda i=index: i.search(queries, k)[1]) for kind, index in indices.items()})
    stats, ids = alternate(contenders, rounds)
    res["load_after"] = load()
    t_np = stats["numpy"]["median_s"]
    res["numpy"] = stats["numpy"]
    for kind, index in indices.items():
        recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(ids[kind], ids["numpy"])]))
        res[kind] = {"build_s": builds[kind], **stats[kind], "queries_per_s": n_queries / stats[kind]["median_s"],
                     "speedup_vs_numpy": t_np / stats[kind]["median_s"], f"recall@{k}_vs_exact": recall, **index.params}
        print(f"{kind:5s} build {builds[kind]:7.2f}s  search median {stats[kind]['median_s']:7.3f}s "
              f"[{stats[kind]['min_s']:.3f}-{stats[kind]['max_s']:.3f}]  ({res[kind]['speedup_vs_numpy']:5.2f}x numpy)  "
              f"recall {recall:.4f}", file=sys.stderr)
    print(f"numpy exact search median {t_np:.3f}s [{stats['numpy']['min_s']:.3f}-{stats['numpy']['max_s']:.3f}] "
          f"for {n_queries} queries x {n_gallery} items; {rounds} rounds, load {res['load_before']} -> {res['load_after']}",
          file=sys.stderr)
    return res


WORDS = ("sky sea tree woman man light dark colour colours red blue green calm storm face eyes sad happy bright "
         "lonely strange beautiful peaceful violent soft warm cold shadow flowers house field water night").split()


def _sentence(rng: random.Random) -> str:
    return f"the {' '.join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))}."


def bench_evaluation(n_pred: int, refs_per_image: int, seed: int) -> dict:
    from sevlm.emotions import EMOTIONS, dominant_emotion
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
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per contender, taken in turns (default 5)")
    p.add_argument("--threads", type=int, help="threads for FAISS and numpy's BLAS (default: all cores)")
    args = p.parse_args(argv)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "search": bench_search(args.gallery, args.dim, args.queries, args.k, args.seed, args.data,
                                        args.rounds, args.threads)}
    if not args.skip_eval:
        result["evaluation"] = bench_evaluation(args.predictions, args.refs_per_image, args.seed)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
