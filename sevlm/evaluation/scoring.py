"""Retrieval scoring on numpy arrays: L2 normalisation, exact ranks, Recall@K, the per-emotion
breakdown and how spread out a set of embeddings is.

No FAISS and no model here, so each figure can be checked against brute force on small arrays.
Embeddings are L2-normalised, so inner product = cosine similarity. A query's rank is computed
once, exactly, from all scores in blocks: 1 + the number of wrong gallery items scoring at least
as high as the best correct one (ties count against it: `exact_ranks`). `recall_vs_exact`
measures an approximate index's top-K lists against the exact search of the same queries.
"""

from __future__ import annotations

import numpy as np

from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError

CURVE_KS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)  # the Ks of the recall@K curve


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(f"embeddings must be 2-D [N, E], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError("embeddings contain NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _positive_pairs(query_label: np.ndarray, gallery_label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query index, gallery index) of every same-label pair, ordered by query."""
    order = np.argsort(gallery_label, kind="stable")
    sorted_labels = gallery_label[order]
    lo = np.searchsorted(sorted_labels, query_label, side="left")
    counts = np.searchsorted(sorted_labels, query_label, side="right") - lo
    pair_q = np.repeat(np.arange(len(query_label)), counts)
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)  # each pair's offset into sorted order
    return pair_q, order[starts + np.arange(len(pair_q))]


def exact_ranks(
    queries: np.ndarray,
    query_label: np.ndarray,
    gallery: np.ndarray,
    gallery_label: np.ndarray,
    block: int | None = None,
) -> np.ndarray:
    """Rank of the best positive (same label) for each query: 1 + #other-label items scoring at
    least as high. Ties count against the query: identical gallery items (the same explanation
    written for two paintings) score alike, and a top-K list orders them arbitrarily, so a
    positive tied with a negative is not credited with the better place (nor does a collapsed
    space, where everything ties, score R@1 = 1).

    A query with no positive gets rank N + 1. The scores of one block are computed once; the
    best positive is read from the same block, so a positive never outranks itself by rounding.
    """
    query_label, gallery_label = np.asarray(query_label), np.asarray(gallery_label)
    pair_q, pair_g = _positive_pairs(query_label, gallery_label)
    ranks = np.empty(len(queries), dtype=np.int64)
    block = block or max(1, min(1024, (1 << 23) // max(1, len(gallery))))  # ~8M scores (32 MB) per block
    for s in range(0, len(queries), block):
        scores = queries[s : s + block] @ gallery.T  # [b, N]
        a, b = np.searchsorted(pair_q, [s, s + block])
        best = np.full(len(scores), -np.inf, dtype=scores.dtype)
        pos_scores = scores[pair_q[a:b] - s, pair_g[a:b]]
        np.maximum.at(best, pair_q[a:b] - s, pos_scores)
        tied_positives = np.bincount(
            pair_q[a:b] - s, weights=pos_scores >= best[pair_q[a:b] - s], minlength=len(scores)
        )
        ranks[s : s + block] = 1 + np.count_nonzero(scores >= best[:, None], axis=1) - tied_positives.astype(np.int64)
    return ranks


def hits_at_k(ids: np.ndarray, query_label: np.ndarray, gallery_label: np.ndarray, ks) -> dict[str, float]:
    """Recall@K from top-k id lists [Q, k]: a hit is any positive (same label) among the first K."""
    positive = (ids >= 0) & (gallery_label[np.maximum(ids, 0)] == query_label[:, None])  # [Q, k]
    return {f"R@{k}": float(positive[:, :k].any(axis=1).mean()) for k in ks}


def recall_vs_exact(queries: np.ndarray, gallery: np.ndarray, ids: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K of approximate top-k lists `ids` [Q, k] against the exact (flat) search of the same
    queries: the share of the K returned items that belong in the exact top K, i.e. score at least
    the exact K-th score (ties with it count as right: any of them is an exact answer)."""
    queries, gallery = np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(gallery, dtype=np.float32)
    kmax = min(max(ks), len(gallery))
    exact = np.empty((len(queries), kmax), dtype=np.float32)
    block = max(1, min(1024, (1 << 23) // max(1, len(gallery))))
    for s in range(0, len(queries), block):
        scores = queries[s : s + block] @ gallery.T  # [b, N]
        exact[s : s + block] = -np.sort(-np.partition(scores, len(gallery) - kmax, axis=1)[:, -kmax:], axis=1)
    got = np.einsum("qe,qke->qk", queries, gallery[np.maximum(ids[:, :kmax], 0)])  # [Q, k] exact scores of the returned
    out = {}
    for k in ks:
        kk = min(k, kmax)
        right = (ids[:, :kk] >= 0) & (got[:, :kk] >= exact[:, kk - 1 : kk] - 1e-5)
        out[f"R@{k}"] = float(right.sum(axis=1).mean() / kk)
    return out


def emotion_ranks(
    image_emb: np.ndarray, emotion_emb: np.ndarray, image_dominant: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(nearest emotion [I], rank 1..9 of the dominant emotion [I], 0 where there is none)."""
    scores = normalize(image_emb) @ normalize(emotion_emb).T  # [I, 9]
    dominant = np.asarray(image_dominant, dtype=np.int64)
    own = scores[np.arange(len(scores)), np.maximum(dominant, 0)]
    rank = np.where(dominant >= 0, 1 + (scores > own[:, None]).sum(axis=1), 0)
    return scores.argmax(axis=1), rank


def per_emotion_breakdown(image_emb, emotion_emb, image_dominant, i2t_ranks, ks=(1, 5, 10)) -> dict:
    """Image-side figures split by each image's dominant emotion, and the image -> emotion confusion.

    Per emotion e (images whose dominant emotion is e): n, correct and accuracy of image ->
    emotion (the recall of class e), its precision (of the images whose nearest emotion is e),
    and image -> explanation R@K and median rank from the exact ranks. Images without a dominant
    emotion form "none" (no emotion figures). Sum of n over groups = all images; correct sums to
    the aggregate's; n-weighted R@K averages to the aggregate (flat index) R@K.
    """
    dominant = np.asarray(image_dominant, dtype=np.int64)
    i2t_ranks = np.asarray(i2t_ranks)
    pred, _ = emotion_ranks(image_emb, emotion_emb, dominant)
    known = dominant >= 0
    counts = np.zeros((len(EMOTIONS), len(EMOTIONS)), dtype=np.int64)  # [true, predicted]
    np.add.at(counts, (dominant[known], pred[known]), 1)
    groups = {}
    for k, name in [*enumerate(EMOTIONS), (-1, "none")]:
        sel = dominant == k
        n = int(sel.sum())
        g = {
            "n": n,
            **{f"R@{kk}": float((i2t_ranks[sel] <= kk).mean()) if n else None for kk in ks},
            "median_rank": float(np.median(i2t_ranks[sel])) if n else None,
        }
        if k >= 0:
            correct, predicted = int(counts[k, k]), int(counts[:, k].sum())
            g.update(
                correct=correct,
                accuracy=correct / n if n else None,
                precision=correct / predicted if predicted else None,
                predicted=predicted,
            )
        groups[name] = g
    return {
        "per_emotion": groups,
        "confusion": {"counts": counts.tolist(), "rows_true": list(EMOTIONS), "columns_predicted": list(EMOTIONS)},
    }


def image_emotion_hits(image_emb: np.ndarray, emotion_emb: np.ndarray, image_dominant: np.ndarray) -> np.ndarray:
    """Per-image statistics [I, 2] of image -> emotion accuracy (hit, has a dominant emotion): the
    accuracy of `retrieval._accuracy` is column 0's sum over column 1's (sevlm.evaluation.significance)."""
    known = np.asarray(image_dominant) >= 0
    pred = (normalize(image_emb) @ normalize(emotion_emb).T).argmax(axis=1)  # [I]
    return np.stack([(known & (pred == image_dominant)).astype(np.float64), known.astype(np.float64)], axis=1)


def embedding_stats(x: np.ndarray) -> dict:
    """How spread out a set of embeddings [N, E] is, after L2 normalisation: a collapsed side
    shows a mean pairwise cosine near 1, a small total variance and an effective rank near 1.

    - effective_rank: exp of the entropy of the centred spectrum's energy shares (Roy and
      Vetterli, 2007): 1 for points on a line, E for variance spread evenly over E axes;
    - variance: the total variance (trace of the covariance), in [0, 1] for unit vectors;
    - mean_cosine: the mean cosine over distinct pairs.
    """
    x = normalize(x).astype(np.float64)
    n = len(x)
    if n == 0:
        return {"n": 0, "effective_rank": None, "variance": None, "mean_cosine": None}
    centred = x - x.mean(axis=0)
    energy = np.linalg.svd(centred, compute_uv=False) ** 2
    share = energy / energy.sum() if energy.sum() > 0 else np.ones(1)
    share = share[share > 0]
    total = x.sum(axis=0)
    pairs = (total @ total - n) / (n * (n - 1)) if n > 1 else 1.0  # sum of all cosines minus the diagonal
    return {
        "n": n,
        "effective_rank": float(np.exp(-(share * np.log(share)).sum())),
        "variance": float((centred**2).sum(axis=1).mean()),
        "mean_cosine": float(pairs),
    }
