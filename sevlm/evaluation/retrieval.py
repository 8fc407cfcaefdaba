"""Cross-modal retrieval through a FAISS index: images, the 9 emotions, explanations.

The index is built, tuned and searched here, and `retrieval_report` puts its figures beside the
exact ranks (`scoring`) and the chance levels (`chance`) of the same embeddings. It works on numpy
arrays, so it is testable without a model; `sevlm.evaluation.gallery` embeds a run's split and
scores it here.

- Search: exact inner product (`IndexFlatIP`) by default; `ivf` (IndexIVFFlat), `hnsw`
  (IndexHNSWFlat) or `ivfpq` for large galleries. On a GPU build of faiss with a visible device,
  flat and IVF indices move to the GPU (HNSW has no GPU version and stays on the CPU); the result
  says which device searched.
- With the flat (exact) index, Recall@K comes from the exact ranks (numpy, on the CPU: a flat
  FAISS search would compute the same scores a second time); with an approximate index a query
  is a hit at K only when its top-K list holds a positive as well, so the figure shows the
  index's loss, and an index that visits everything (IVF with nprobe = nlist) scores exactly as
  flat. Each approximate search also reports its recall@K against the exact search of the same
  queries (`recall_vs_exact`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sevlm.emotions import EMOTIONS
from sevlm.errors import ConfigError, DataError
from sevlm.evaluation.chance import chance_accuracy as chance_accuracy
from sevlm.evaluation.chance import chance_direction as chance_direction
from sevlm.evaluation.chance import chance_levels
from sevlm.evaluation.chance import chance_median_rank as chance_median_rank
from sevlm.evaluation.chance import chance_recall as chance_recall
from sevlm.evaluation.scoring import (
    CURVE_KS,
    embedding_stats,
    exact_ranks,
    normalize,
    per_emotion_breakdown,
    recall_vs_exact,
)
from sevlm.evaluation.scoring import emotion_ranks as emotion_ranks
from sevlm.evaluation.scoring import hits_at_k as hits_at_k
from sevlm.evaluation.scoring import image_emotion_hits as image_emotion_hits
from sevlm.io import atomic_path

# `name as name`: names importers reach as `retrieval.<name>` (tests and tools take the module whole).
# faiss is imported where it is used: it is an optional extra (the CPU or the GPU wheel), and the
# exact scoring of the flat index runs without it.

INDEX_KINDS = ("flat", "ivf", "hnsw", "ivfpq")
TRAIN_POINTS_PER_CELL = 64  # IVF k-means sample per cell (faiss: 256); 1M items, 4000 cells: 256k, ~4x faster to train


@dataclass(frozen=True)
class IndexOptions:
    kind: str = "flat"  # flat | ivf | hnsw | ivfpq
    use_gpu: bool | None = None  # None: the GPU when faiss has GPU support and sees a device
    nlist: int | None = None  # IVF cells; default ~4 sqrt(N), at least 39 points per cell
    nprobe: int = 32  # IVF cells visited per query
    hnsw_m: int = 32  # HNSW graph degree
    ef_search: int = 128  # HNSW search breadth
    ef_construction: int = 40  # faiss default: builds stay affordable on a CPU
    pq_m: int | None = None  # IVFPQ sub-quantizers (must divide the dimension); default dim / 4
    pq_bits: int = 8  # IVFPQ bits per sub-quantizer code (fewer on galleries under 2^bits items)
    tune_recall: float | None = None  # search with the fastest setting reaching this recall@10 vs exact (tune_index)
    seed: int = 0

    def check(self) -> "IndexOptions":
        """ConfigError, naming the flag, for settings no index can take."""
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"index kind {self.kind!r}: expected one of {', '.join(INDEX_KINDS)}")
        for flag, value in (
            ("--nprobe", self.nprobe),
            ("--hnsw-m", self.hnsw_m),
            ("--ef-search", self.ef_search),
            ("--ef-construction", self.ef_construction),
            ("--nlist", self.nlist or 1),
            ("--pq-m", self.pq_m or 1),
        ):
            if value < 1:
                raise ConfigError(f"{flag}: must be >= 1, got {value}")
        if not 1 <= self.pq_bits <= 16:
            raise ConfigError(f"--pq-bits: 1..16, got {self.pq_bits}")
        if self.tune_recall is not None:
            if self.kind == "flat":
                raise ConfigError("--tune: the flat index is exact, nothing to tune; pick --index ivf, hnsw or ivfpq")
            if not 0 < self.tune_recall <= 1:
                raise ConfigError(f"--tune: a recall in (0, 1], got {self.tune_recall}")
        return self


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class Index:
    """A FAISS inner-product index over a gallery [N, E]; `.device` is "cpu" or "gpu"."""

    def __init__(self, gallery: np.ndarray, options: IndexOptions = IndexOptions()):
        import faiss

        options.check()
        gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        n, d = gallery.shape
        if n == 0:
            raise DataError("retrieval gallery is empty")
        if options.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif options.kind in ("ivf", "ivfpq"):
            nlist = options.nlist or int(4 * np.sqrt(n))
            nlist = max(1, min(nlist, n // 39))  # faiss wants >= 39 training points per cell
            if options.kind == "ivf":
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                m = options.pq_m or max(1, d // 4)
                if d % m:
                    raise ConfigError(f"--pq-m: {m} does not divide the embedding dimension {d}")
                bits = max(1, min(options.pq_bits, int(np.log2(n)) - 1))  # k-means needs >= 2^bits points
                index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, bits, faiss.METRIC_INNER_PRODUCT)
                index.pq.cp.seed = options.seed
            index.cp.seed = options.seed
            index.cp.max_points_per_centroid = TRAIN_POINTS_PER_CELL
            index.train(gallery)
        else:
            index = faiss.IndexHNSWFlat(d, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = options.ef_construction
        index.add(gallery)
        self._place(index, options)

    @classmethod
    def load(cls, path: str | Path, options: IndexOptions = IndexOptions()) -> "Index":
        """An index written by `save` (search settings and device come from `options`)."""
        import faiss

        self = cls.__new__(cls)
        self._place(faiss.read_index(str(path)), options)
        return self

    def save(self, path: str | Path) -> None:
        import faiss

        with atomic_path(path) as tmp:
            faiss.write_index(faiss.index_gpu_to_cpu(self.index) if self.device == "gpu" else self.index, str(tmp))

    def _place(self, index, options: IndexOptions) -> None:
        """Apply the search settings and move a CPU index to the GPU when asked or available."""
        import faiss

        self.options, self.size, self.dim, self.params = options, index.ntotal, index.d, {}
        if options.kind in ("ivf", "ivfpq"):
            index.nprobe = min(options.nprobe, index.nlist)
            self.params = {"nlist": index.nlist, "nprobe": index.nprobe}
            if options.kind == "ivfpq":
                self.params.update(pq_m=index.pq.M, pq_bits=index.pq.nbits)
        elif options.kind == "hnsw":
            index.hnsw.efSearch = options.ef_search
            self.params = {
                "M": options.hnsw_m,
                "efSearch": options.ef_search,
                "efConstruction": index.hnsw.efConstruction,
            }
        want_gpu = gpu_available() if options.use_gpu is None else options.use_gpu
        if want_gpu and not gpu_available():
            raise ConfigError("a GPU index was asked for, but faiss has no GPU support or sees no GPU")
        self.device = "cpu"
        if want_gpu and options.kind != "hnsw":  # HNSW has no GPU version
            try:
                self._res = faiss.StandardGpuResources()
                index = faiss.index_cpu_to_gpu(self._res, 0, index)
                self.device = "gpu"
            except RuntimeError as e:  # e.g. an IVFPQ code size the GPU kernels lack
                if options.use_gpu:
                    raise ConfigError(f"--gpu: faiss cannot put this {options.kind} index on the GPU ({e})") from None
                self.params["gpu_fallback"] = str(e).strip().splitlines()[-1][:200]
        self.index = index

    def set_search_parameters(self, key: str) -> None:
        """Apply a faiss ParameterSpace key ("nprobe=16", "efSearch=64") to the index (`tune_index`)."""
        import faiss

        ps = faiss.GpuParameterSpace() if self.device == "gpu" else faiss.ParameterSpace()
        ps.set_index_parameters(self.index, key)
        for part in key.split(","):
            name, value = part.split("=")
            if name in self.params:
                self.params[name] = type(self.params[name])(float(value))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores [Q, k], ids [Q, k]); ids are -1 where fewer than k items were found."""
        k = min(k, self.size)
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids

    def describe(self) -> dict:
        return {"kind": self.options.kind, "device": self.device, "size": self.size, "dim": self.dim, **self.params}


TUNE_K = 10


def _search_ranges(index: Index) -> list[tuple[str, list[int]]]:
    """The search settings `tune_index` explores: IVF cells visited (powers of two up to all of
    them), HNSW search breadth (16 .. 1024). IVFPQ's polysemous threshold is left alone."""
    if index.options.kind == "hnsw":
        return [("efSearch", [16, 32, 64, 128, 256, 512, 1024])]
    nlist = index.params["nlist"]
    return [("nprobe", sorted({*(2**i for i in range(nlist.bit_length()) if 2**i < nlist), nlist}))]


def tune_index(index: Index, queries: np.ndarray, gallery: np.ndarray, target: float, k: int = TUNE_K) -> dict:
    """Set `index` to the fastest search setting whose recall@k against the exact search of
    `queries` reaches `target`, found by faiss's ParameterSpace (each setting timed on these
    queries). None reaching it: the most accurate one, and "reached": false.

    Returns {"target", "k", "chosen", "reached", "recall_vs_exact" (of the chosen setting,
    tie-aware as `recall_vs_exact`), "points": [{"key", "recall", "ms_per_query"}, ...]}.
    """
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, index.size)
    exact = faiss.IndexFlatIP(gallery.shape[1])
    exact.add(np.ascontiguousarray(gallery, dtype=np.float32))
    _, truth = exact.search(queries, k)
    ps = faiss.GpuParameterSpace() if index.device == "gpu" else faiss.ParameterSpace()
    for name, values in _search_ranges(index):
        r = ps.add_range(name)
        for v in values:
            r.values.push_back(v)
    ps.verbose = 0
    crit = faiss.IntersectionCriterion(len(queries), k)  # |returned top-k & exact top-k| / k
    crit.set_groundtruth(None, truth.astype(np.int64))
    ops = ps.explore(index.index, queries, crit)
    points = sorted(
        (
            {
                "key": ops.all_pts.at(i).key,
                "recall": float(ops.all_pts.at(i).perf),
                "ms_per_query": 1000 * ops.all_pts.at(i).t / len(queries),
            }
            for i in range(ops.all_pts.size())
        ),
        key=lambda p: p["ms_per_query"],
    )
    good = [p for p in points if p["recall"] >= target]
    chosen = good[0] if good else max(points, key=lambda p: p["recall"])
    index.set_search_parameters(chosen["key"])
    _, ids = index.search(queries, k)
    return {
        "target": target,
        "k": k,
        "chosen": chosen["key"],
        "reached": bool(good),
        "recall_vs_exact": recall_vs_exact(queries, gallery, ids, (k,))[f"R@{k}"],
        "points": points,
    }


def _rank_summary(ranks: np.ndarray, gallery_size: int) -> dict:
    return {
        "median_rank": float(np.median(ranks)),
        "mean_rank": float(ranks.mean()),
        "recall_curve": {str(k): float((ranks <= k).mean()) for k in CURVE_KS if k <= gallery_size},
    }


def _direction(
    queries, query_label, gallery, gallery_label, options: IndexOptions, ks
) -> tuple[dict, dict, np.ndarray]:
    """(scores of one direction, the index description, each query's exact rank)."""
    ranks = exact_ranks(queries, query_label, gallery, gallery_label)
    if options.kind == "flat":  # exact search: its top-K lists are the ranks (up to ties)
        res = {f"R@{k}": float((ranks <= k).mean()) for k in ks}
        index = {"kind": "flat", "device": "cpu", "size": len(gallery), "dim": gallery.shape[1]}
    else:  # a hit needs both: the index found a positive, and no more than K-1 wrong items tie or beat it
        idx = Index(gallery, options)
        tuned = tune_index(idx, queries, gallery, options.tune_recall) if options.tune_recall else None
        _, ids = idx.search(queries, max(ks))
        found = (ids >= 0) & (gallery_label[np.maximum(ids, 0)] == query_label[:, None])  # [Q, k]
        res = {f"R@{k}": float((found[:, :k].any(axis=1) & (ranks <= k)).mean()) for k in ks}
        res["recall_vs_exact"] = recall_vs_exact(queries, gallery, ids, ks)  # per direction: each has its index
        if tuned:
            res["tuned"] = tuned
        index = idx.describe()
    res.update(_rank_summary(ranks, len(gallery)), n_queries=len(queries), gallery_size=len(gallery))
    return res, index, ranks


def _accuracy(queries, emotion_emb, targets: np.ndarray) -> dict:
    """Nearest-emotion accuracy over queries whose target is known (>= 0)."""
    known = targets >= 0
    if not known.any():
        return {"accuracy": None, "n": 0}
    pred = (queries[known] @ emotion_emb.T).argmax(axis=1)  # [n]
    return {"accuracy": float((pred == targets[known]).mean()), "n": int(known.sum())}


def retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_image: np.ndarray,
    emotion_emb: np.ndarray,
    image_dominant: np.ndarray,
    text_emotion: np.ndarray | None = None,
    options: IndexOptions = IndexOptions(),
    ks=(1, 5, 10),
    ranks: dict | None = None,
) -> dict:
    """Retrieval scores for one set of embeddings; a `ranks` dict receives each query's exact
    rank per direction ("image_to_explanation" [I], "explanation_to_image" [N]).

    image_emb [I, E]; text_emb [N, E] (explanations); text_image [N] index of each text's
    image; emotion_emb [9, E] in EMOTIONS order; image_dominant [I] emotion index of each
    image's dominant emotion, -1 for none; text_emotion [N] the annotator's own emotion.
    """
    image_emb, text_emb, emotion_emb = normalize(image_emb), normalize(text_emb), normalize(emotion_emb)
    text_image = np.asarray(text_image, dtype=np.int64)
    image_dominant = np.asarray(image_dominant, dtype=np.int64)
    n_img = len(image_emb)
    if text_emb.shape[1] != image_emb.shape[1] or emotion_emb.shape != (len(EMOTIONS), image_emb.shape[1]):
        raise DataError(
            f"embedding shapes disagree: images {image_emb.shape}, texts {text_emb.shape}, emotions {emotion_emb.shape}"
        )
    if text_image.shape != (len(text_emb),) or text_image.min() < 0 or text_image.max() >= n_img:
        raise DataError("text_image must give, for every text, the index of an image")
    if image_dominant.shape != (n_img,):
        raise DataError("image_dominant must have one entry per image")
    if len(np.unique(text_image)) != n_img:
        raise DataError("every image needs at least one explanation in the gallery")
    if options.use_gpu and not gpu_available():
        raise ConfigError("a GPU index was asked for, but faiss has no GPU support or sees no GPU")
    image_label = np.arange(n_img)
    i2t, index, i2t_ranks = _direction(image_emb, image_label, text_emb, text_image, options, ks)
    t2i, _, t2i_ranks = _direction(text_emb, text_image, image_emb, image_label, options, ks)
    if ranks is not None:
        ranks.update(image_to_explanation=i2t_ranks, explanation_to_image=t2i_ranks)
    out = {
        "index": index,
        "image_to_explanation": i2t,
        "explanation_to_image": t2i,
        "image_to_emotion": _accuracy(image_emb, emotion_emb, image_dominant),
        "explanation_to_emotion": _accuracy(text_emb, emotion_emb, image_dominant[text_image]),
    }
    if text_emotion is not None:
        out["explanation_to_own_emotion"] = _accuracy(text_emb, emotion_emb, np.asarray(text_emotion, dtype=np.int64))
    return out


MIN_RANDOM_RUNS = 20


def random_embedding_check(
    image_emb,
    text_emb,
    text_image,
    emotion_emb,
    image_dominant,
    text_emotion=None,
    options: IndexOptions = IndexOptions(),
    ks=(1, 5, 10),
    runs: int = MIN_RANDOM_RUNS,
    seed: int = 0,
) -> dict:
    """Mean and standard deviation of every figure over `runs` random-embedding draws of the same shapes."""
    if runs < MIN_RANDOM_RUNS:
        raise ConfigError(f"random-embedding check: {runs} runs; use at least {MIN_RANDOM_RUNS} (one draw is noise)")
    draws = []
    for r in range(runs):
        rng = np.random.default_rng(seed + r)
        rand = lambda x: rng.standard_normal(np.shape(x), dtype=np.float32)  # noqa: E731
        draws.append(
            retrieval_metrics(
                rand(image_emb),
                rand(text_emb),
                text_image,
                rand(emotion_emb),
                image_dominant,
                text_emotion,
                options,
                ks,
            )
        )
    out: dict = {"runs": runs, "seeds": [seed, seed + runs - 1]}
    for d, first in draws[0].items():
        if d == "index":
            continue
        keys = [k for k, v in first.items() if isinstance(v, float)]
        out[d] = {k: {"mean": float(np.mean(v := [x[d][k] for x in draws])), "std": float(np.std(v))} for k in keys}
    return out


def retrieval_report(
    image_emb,
    text_emb,
    text_image,
    emotion_emb,
    image_dominant,
    text_emotion=None,
    options: IndexOptions = IndexOptions(),
    ks=(1, 5, 10),
    random_runs: int = 0,
    seed: int = 0,
    ranks: dict | None = None,
) -> dict:
    """The model's retrieval scores beside the exact chance level of each (and, with
    `random_runs` > 0, the mean and spread of that many random-embedding draws), with the
    image-side figures per dominant emotion and the image -> emotion confusion
    (`per_emotion_breakdown`); a `ranks` dict receives each query's exact ranks."""
    ranks = {} if ranks is None else ranks
    model = retrieval_metrics(
        image_emb, text_emb, text_image, emotion_emb, image_dominant, text_emotion, options, ks, ranks=ranks
    )
    model["image_to_emotion"].update(
        per_emotion_breakdown(image_emb, emotion_emb, image_dominant, ranks["image_to_explanation"], ks)
    )
    out = {
        "model": model,
        "chance": chance_levels(text_image, image_dominant, text_emotion, ks),
        "ks": list(ks),
        "embedding_stats": {
            side: embedding_stats(x)
            for side, x in (("image", image_emb), ("explanation", text_emb), ("emotion", emotion_emb))
        },
    }
    if random_runs:
        out["random_embeddings"] = random_embedding_check(
            image_emb, text_emb, text_image, emotion_emb, image_dominant, text_emotion, options, ks, random_runs, seed
        )
    return out
