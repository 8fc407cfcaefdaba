"""Benchmark: FAISS vs numpy top-K search on a large explanation gallery, and evaluation wall time.

1. Search: a gallery of L2-normalised embeddings (default 100k x 256-d) and a batch of
   queries; exact top-K by numpy (matmul + argpartition) vs FAISS IndexFlatIP, IVF and HNSW
   (build time separate; recall@K of the approximate indices against the exact result).
   `--data mixture` draws gallery and queries from a mixture of `--clusters` Gaussian
   clusters (default 4000) as real embeddings are grouped; on `random` (uniform on the sphere,
   no structure) no approximate index can work. `--tune 0.95` sets each approximate index
   to the fastest nprobe / efSearch reaching that recall@K on a separate set of tuning queries
   (`sevlm.evaluation.retrieval.tune_index`, faiss's ParameterSpace) before it is timed; the
   verdict line says whether IVF or HNSW reaches it at >= 5x flat's queries/s. With a GPU
   build of faiss and a device, flat and IVF are also timed on the GPU.
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
    .venv/bin/python tools/bench_retrieval.py --skip-eval --gallery 1000000 --data mixture --tune 0.95 --rounds 3
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
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            results[name] = contenders[name]()
            times[name].append(time.perf_counter() - t)
    stats = {
        n: {"median_s": float(np.median(t)), "min_s": min(t), "max_s": max(t), "runs": len(t)} for n, t in times.items()
    }
    return stats, results


def mixture(n: int, dim: int, clusters: int, rng, spread: float = 1.0, centres=None):
    """n unit vectors from a mixture of Gaussian clusters: a random unit centre plus isotropic noise
    of norm ~`spread` (1.0: cosine ~0.7 to the centre, ~0.5 between two members), then normalised.
    Returns (vectors, centres)."""
    from sevlm.evaluation.scoring import normalize

    if centres is None:
        centres = normalize(rng.standard_normal((clusters, dim), dtype=np.float32))
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):  # bounded temporaries
        b = min(100_000, n - s)
        noise = rng.standard_normal((b, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        out[s : s + b] = normalize(centres[rng.integers(0, len(centres), b)] + noise)
    return out, centres


def bench_search(
    n_gallery: int,
    dim: int,
    n_queries: int,
    k: int,
    seed: int,
    data: str = "random",
    rounds: int = 5,
    threads: int | None = None,
    clusters: int = 4000,
    options: dict | None = None,
    tune: float | None = None,
    kinds=("flat", "ivf", "hnsw"),
    spread: float = 1.0,
) -> dict:
    import faiss

    from sevlm.evaluation.retrieval import Index, IndexOptions, gpu_available, tune_index
    from sevlm.evaluation.scoring import normalize

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
    elif data == "clustered":  # 1000 tight clusters
        centers = normalize(rng.standard_normal((1000, dim), dtype=np.float32))

        def noisy(n):
            return normalize(centers[rng.integers(0, 1000, n)] + 0.05 * rng.standard_normal((n, dim), dtype=np.float32))

        gallery, queries = noisy(n_gallery), noisy(n_queries)
    else:  # a few thousand Gaussian clusters, like real embeddings (mixture)
        gallery, centres = mixture(n_gallery, dim, clusters, rng, spread)
        queries, _ = mixture(n_queries, dim, clusters, rng, spread, centres=centres)
        tune_queries, _ = mixture(n_queries, dim, clusters, rng, spread, centres=centres)
    if data != "mixture":
        tune_queries = (
            normalize(rng.standard_normal((n_queries, dim), dtype=np.float32))
            if data == "random"
            else queries[::-1].copy()
        )
    res: dict = {
        "data": data,
        "gallery": n_gallery,
        "dim": dim,
        "queries": n_queries,
        "k": k,
        "rounds": rounds,
        **({"clusters": clusters, "spread": spread} if data == "mixture" else {}),
        "faiss_version": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "faiss_gpu": gpu_available(),
        "load_before": load(),
    }
    indices, builds, tuned = {}, {}, {}
    gpu_kinds = [kk for kk in kinds if kk in ("flat", "ivf")] if gpu_available() else []
    for name in [*kinds, *(f"{kk}-gpu" for kk in gpu_kinds)]:
        kind = name.removesuffix("-gpu")
        t0 = time.perf_counter()
        indices[name] = Index(gallery, IndexOptions(kind=kind, use_gpu=name.endswith("-gpu"), **(options or {})))
        builds[name] = time.perf_counter() - t0
        if tune and kind != "flat":  # on other queries than the timed ones
            t0 = time.perf_counter()
            tuned[name] = tune_index(indices[name], tune_queries, gallery, tune, k)
            tuned[name]["tune_s"] = time.perf_counter() - t0
        print(
            f"{name}: built in {builds[name]:.1f}s"
            + (
                f", tuned to {tuned[name]['chosen']} (recall@{k} "
                f"{tuned[name]['recall_vs_exact']:.3f} on the tuning queries) in {tuned[name]['tune_s']:.1f}s"
                if name in tuned
                else ""
            ),
            file=sys.stderr,
        )
    contenders = {"numpy": lambda: numpy_topk(queries, gallery, k)}
    contenders.update({kind: (lambda i=index: i.search(queries, k)[1]) for kind, index in indices.items()})
    stats, ids = alternate(contenders, rounds)
    res["load_after"] = load()
    t_np = stats["numpy"]["median_s"]
    res["numpy"] = stats["numpy"]
    for kind, index in indices.items():
        recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(ids[kind], ids["numpy"])]))
        res[kind] = {
            "build_s": builds[kind],
            **stats[kind],
            "queries_per_s": n_queries / stats[kind]["median_s"],
            "speedup_vs_numpy": t_np / stats[kind]["median_s"],
            f"recall@{k}_vs_exact": recall,
            **index.params,
            "device": index.device,
            **({"tuned": {x: v for x, v in tuned[kind].items() if x != "points"}} if kind in tuned else {}),
        }
        print(
            f"{kind:5s} build {builds[kind]:7.2f}s  search median {stats[kind]['median_s']:7.3f}s "
            f"[{stats[kind]['min_s']:.3f}-{stats[kind]['max_s']:.3f}]  ({res[kind]['speedup_vs_numpy']:5.2f}x numpy)  "
            f"recall {recall:.4f}",
            file=sys.stderr,
        )
    print(
        f"numpy exact search median {t_np:.3f}s [{stats['numpy']['min_s']:.3f}-{stats['numpy']['max_s']:.3f}] "
        f"for {n_queries} queries x {n_gallery} items; {rounds} rounds, load {res['load_before']} -> "
        f"{res['load_after']}",
        file=sys.stderr,
    )
    print(f"\n| index | device | settings | build s | queries/s | x flat | x numpy | recall@{k} vs exact |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| numpy | cpu | matmul + argpartition | - | {n_queries / t_np:.0f} | {stats['flat']['median_s'] / t_np:.2f} "
        "| 1.00 | 1 |"
        if "flat" in stats
        else f"| numpy | cpu | - | - | {n_queries / t_np:.0f} | - | 1.00 | 1 |"
    )
    for kind, r in ((kk, res[kk]) for kk in indices):
        settings = ", ".join(
            f"{x}={v}"
            for x, v in r.items()
            if x in ("nlist", "nprobe", "M", "efSearch", "efConstruction", "pq_m", "pq_bits")
        )
        x_flat = stats["flat"]["median_s"] / r["median_s"] if "flat" in stats else float("nan")
        r["speedup_vs_flat"] = x_flat
        print(
            f"| {kind} | {r['device']} | {settings or 'exact'} | {r['build_s']:.1f} | {r['queries_per_s']:.0f} | "
            f"{x_flat:.2f} | {r['speedup_vs_numpy']:.2f} | {r[f'recall@{k}_vs_exact']:.3f} |"
        )
    if "flat" in stats:
        ok = [
            kk
            for kk in indices
            if kk.split("-")[0] in ("ivf", "hnsw")
            and res[kk][f"recall@{k}_vs_exact"] >= 0.95
            and res[kk]["speedup_vs_flat"] >= 5
        ]
        res["verdict"] = {"target": f"recall@{k} >= 0.95 at >= 5x flat's queries/s", "met_by": ok}
        print(f"\nrecall@{k} >= 0.95 at >= 5x flat's queries/s: " + (", ".join(ok) if ok else "not reached"))
    return res


WORDS = (
    "sky sea tree woman man light dark colour colours red blue green calm storm face eyes sad happy bright "
    "lonely strange beautiful peaceful violent soft warm cold shadow flowers house field water night"
).split()


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
            refs[f"Style/p{i}"] = {
                "image_name": f"Style/p{i}.jpg",
                "emotions": emos,
                "explanations": [_sentence(rng) for _ in emos],
                "dominant_emotion": dominant_emotion(emos),
            }
            lines.append(
                json.dumps({"image_id": f"Style/p{i}", "emotion": rng.choice(EMOTIONS), "explanation": _sentence(rng)})
            )
        (Path(tmp) / "refs.json").write_text(json.dumps(refs))
        (Path(tmp) / "pred.jsonl").write_text("\n".join(lines) + "\n")
        t0 = time.perf_counter()
        ev = evaluate(Path(tmp) / "pred.jsonl", Path(tmp) / "refs.json")
        wall = time.perf_counter() - t0
    print(
        f"evaluate: {n_pred} predictions x {refs_per_image} references in {wall:.1f}s "
        f"(BLEU-4 {ev.report['BLEU-4']:.4f}, METEOR {ev.report['METEOR']:.4f})",
        file=sys.stderr,
    )
    return {
        "predictions": n_pred,
        "references_per_image": refs_per_image,
        "wall_s": wall,
        "predictions_per_s": n_pred / wall,
        "includes": "JSON load, PTB tokenizer, BLEU, METEOR (JVM start), ROUGE-L, CIDEr, emotion metrics",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--predictions", type=int, default=10_000)
    p.add_argument("--refs-per-image", type=int, default=5)
    p.add_argument(
        "--data",
        choices=("random", "clustered", "mixture"),
        default="random",
        help="random normalised vectors (default), 1000 tight clusters, or a mixture of --clusters "
        "Gaussian clusters (like real embeddings)",
    )
    p.add_argument("--clusters", type=int, default=4000, help="--data mixture: clusters (default 4000)")
    p.add_argument(
        "--spread",
        type=float,
        default=1.0,
        help="--data mixture: noise norm around a cluster's unit centre (default 1.0)",
    )
    p.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"], choices=("flat", "ivf", "hnsw", "ivfpq"))
    p.add_argument("--nlist", type=int, help="IVF cells (default: sevlm's, ~4 sqrt(N))")
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-search", type=int, default=128)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument(
        "--tune",
        type=float,
        metavar="RECALL",
        help="tune nprobe/efSearch to the fastest setting reaching this recall@K first (e.g. 0.95)",
    )
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per contender, taken in turns (default 5)")
    p.add_argument("--threads", type=int, help="threads for FAISS and numpy's BLAS (default: all cores)")
    args = p.parse_args(argv)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "search": bench_search(
            args.gallery,
            args.dim,
            args.queries,
            args.k,
            args.seed,
            args.data,
            args.rounds,
            args.threads,
            args.clusters,
            dict(
                nlist=args.nlist,
                nprobe=args.nprobe,
                hnsw_m=args.hnsw_m,
                ef_search=args.ef_search,
                ef_construction=args.ef_construction,
            ),
            args.tune,
            tuple(args.kinds),
            args.spread,
        ),
    }
    if not args.skip_eval:
        result["evaluation"] = bench_evaluation(args.predictions, args.refs_per_image, args.seed)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
