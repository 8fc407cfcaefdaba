"""Exact chance levels of every retrieval figure, from the labels alone.

Exact rather than drawn, so a model is compared with the expectation itself and not with a noisy
sample of it: a random ordering of a gallery of N items with m correct ones puts one in the top K
with probability 1 - C(N-m, K)/C(N, K); the rank of the first correct one has mean (N+1)/(m+1).
Emotion accuracy by chance is 1/9, shown beside the class prior (the majority-class share).
`retrieval.random_embedding_check` is the sampled check of these figures.
"""

from __future__ import annotations

import numpy as np

from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError
from sevlm.evaluation.scoring import CURVE_KS


def chance_recall(gallery_size: int, relevant, k: int) -> np.ndarray:
    """Per query, the probability that a random ordering of `gallery_size` (N) items puts one of
    its `relevant` (m) items among the first k: 1 - C(N-m, k)/C(N, k).

    C(N-m, k)/C(N, k) = prod_{j<m} (1 - k/(N-j)), summed in log space with log1p: exact to a few
    ulp for any N (a log-gamma difference loses ~1e-11 at N = 45,000).
    """
    n, m = gallery_size, np.asarray(relevant, dtype=np.int64)
    k = min(k, n)
    j = np.arange(min(int(m.max(initial=0)), n - k))  # terms with N - j > k; beyond them the ratio is 0
    log_none = np.concatenate([[0.0], np.cumsum(np.log1p(-k / (n - j)))])
    return np.where(n - m < k, 1.0, -np.expm1(log_none[np.minimum(m, len(j))]))


def chance_median_rank(gallery_size: int, relevant) -> float:
    """Median of the chance rank of the first relevant item, pooled over queries: the smallest
    rank r with mean chance R@r >= 1/2 (midway to r + 1 when it is exactly 1/2, as np.median does)."""
    lo, hi = 1, gallery_size  # every query has >= 1 relevant item, so chance R@N = 1
    while lo < hi:
        mid = (lo + hi) // 2
        if chance_recall(gallery_size, relevant, mid).mean() >= 0.5 - 1e-12:
            hi = mid
        else:
            lo = mid + 1
    return lo + 0.5 if abs(chance_recall(gallery_size, relevant, lo).mean() - 0.5) <= 1e-12 else float(lo)


def chance_direction(gallery_size: int, relevant, ks) -> dict:
    """Chance Recall@K, median and mean rank and recall curve of one retrieval direction."""
    relevant = np.asarray(relevant, dtype=np.int64)
    if len(relevant) == 0 or relevant.min() < 1 or relevant.max() > gallery_size:
        raise DataError(f"chance levels need 1..{gallery_size} relevant items per query")
    recall = lambda k: float(chance_recall(gallery_size, relevant, k).mean())  # noqa: E731
    return {
        **{f"R@{k}": recall(k) for k in ks},
        "median_rank": chance_median_rank(gallery_size, relevant),
        "mean_rank": float(((gallery_size + 1) / (relevant + 1)).mean()),
        "recall_curve": {str(k): recall(k) for k in CURVE_KS if k <= gallery_size},
        "n_queries": len(relevant),
        "gallery_size": gallery_size,
    }


def chance_accuracy(targets) -> dict:
    """Uniform guessing over the 9 emotions (1/9), with the class prior of the known targets."""
    targets = np.asarray(targets, dtype=np.int64)
    known = targets[targets >= 0]
    if len(known) == 0:
        return {"accuracy": None, "majority_class": None, "prior": None, "n": 0}
    prior = np.bincount(known, minlength=len(EMOTIONS)) / len(known)
    return {
        "accuracy": 1 / len(EMOTIONS),
        "majority_class": float(prior.max()),
        "prior": {e: float(p) for e, p in zip(EMOTIONS, prior)},
        "n": int(len(known)),
    }


def chance_levels(text_image, image_dominant, text_emotion=None, ks=(1, 5, 10)) -> dict:
    """The exact chance level of every figure of `retrieval_metrics`, from the labels alone."""
    text_image = np.asarray(text_image, dtype=np.int64)
    image_dominant = np.asarray(image_dominant, dtype=np.int64)
    n_img = len(image_dominant)
    out = {
        "image_to_explanation": chance_direction(len(text_image), np.bincount(text_image, minlength=n_img), ks),
        "explanation_to_image": chance_direction(n_img, np.ones(len(text_image), dtype=np.int64), ks),
        "image_to_emotion": chance_accuracy(image_dominant),
        "explanation_to_emotion": chance_accuracy(image_dominant[text_image]),
    }
    if text_emotion is not None:
        out["explanation_to_own_emotion"] = chance_accuracy(text_emotion)
    return out
