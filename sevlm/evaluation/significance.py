"""Paired significance tests between two systems' predictions on the same images.

Per-image scores come from coco-caption's scorers once per system; resampling then only
re-sums per-image statistics, so 1000s of resamples take well under a second.

Each metric is a function of column sums of a per-image statistics matrix [N, m]:
- BLEU-4: coco-caption's corpus BLEU from summed (testlen, reflen, guess, correct) counts,
  i.e. exactly the corpus score on every resample;
- METEOR, ROUGE-L, CIDEr: the mean per-image score (coco's METEOR corpus figure is the Java
  aggregate, which is close to but not exactly the mean; the test statistic is the mean);
- emotion_accuracy (and emo_align): hits / images with a dominant emotion.

Two tests, both two-sided on delta = B - A:
- paired bootstrap (Koehn 2004): resample images with replacement, p = share of resampled
  deltas at least |delta| away from the observed delta (the bootstrap null, shifted), as
  (1 + count) / (1 + R) so it is never 0, plus a 95% percentile interval for delta;
- approximate randomisation (permutation): swap A/B per image with probability 1/2,
  p = (1 + #|delta_perm| >= |delta|) / (1 + R).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sevlm.errors import DataError
from sevlm.evaluation import metrics as M


@dataclass
class Statistic:
    name: str
    a: np.ndarray  # [N, m] per-image statistics of system A
    b: np.ndarray  # [N, m] of system B
    fn: Callable[[np.ndarray], np.ndarray]  # column sums [..., m] -> metric value [...]
    note: str = ""


def _ratio(s: np.ndarray) -> np.ndarray:
    return s[..., 0] / np.maximum(s[..., 1], 1e-12)


def _bleu4(s: np.ndarray) -> np.ndarray:
    return M.bleu_from_stats(s)[..., 3]


def paired_tests(stat: Statistic, n_resamples: int = 1000, seed: int = 0, chunk: int = 100) -> dict:
    """Bootstrap and permutation p-values for one metric (see the module docstring)."""
    a, b = stat.a.astype(np.float64), stat.b.astype(np.float64)
    n = len(a)
    score_a, score_b = float(stat.fn(a.sum(0))), float(stat.fn(b.sum(0)))
    delta = score_b - score_a
    rng = np.random.default_rng(seed)
    boot, perm = [], []
    diff = b - a  # [N, m]
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=r).astype(np.float64)  # [r, N] resample counts
        boot.append(stat.fn(w @ b) - stat.fn(w @ a))
        swap = rng.integers(0, 2, size=(r, n)).astype(np.float64)  # [r, N] 1 = swap A and B
        sa, sb = a.sum(0) + swap @ diff, b.sum(0) - swap @ diff  # [r, m]
        perm.append(stat.fn(sb) - stat.fn(sa))
    boot, perm = np.concatenate(boot), np.concatenate(perm)
    tol = 1e-12  # ties within float noise count as "at least as extreme"
    return {
        "a": score_a,
        "b": score_b,
        "delta": delta,
        "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "p_bootstrap": float((1 + np.sum(np.abs(boot - delta) >= abs(delta) - tol)) / (1 + len(boot))),
        "p_permutation": float((1 + np.sum(np.abs(perm) >= abs(delta) - tol)) / (1 + len(perm))),
        **({"note": stat.note} if stat.note else {}),
    }


def _emotion_stats(preds: list[M.Prediction], refs: dict[str, M.Reference], labels=None) -> np.ndarray:
    dom = np.array([refs[p.image_id].dominant is not None for p in preds], dtype=np.float64)
    got = labels if labels is not None else [p.emotion for p in preds]
    hit = np.array([g == refs[p.image_id].dominant for g, p in zip(got, preds)], dtype=np.float64)
    return np.stack([hit * dom, dom], axis=1)  # [N, 2]


def compare(
    predictions_a: str | Path,
    predictions_b: str | Path,
    references_path: str | Path,
    n_resamples: int = 1000,
    seed: int = 0,
    strict: bool = True,
    classifier=None,
    dominance: str = "artemis",
) -> dict:
    """Paired tests of B against A on BLEU-4, METEOR, ROUGE-L, CIDEr, emotion accuracy (+ emo_align);
    `dominance` is the dominant-emotion rule (sevlm.data.artemis.DOMINANCE_RULES)."""
    refs = M.load_references(references_path, dominance)
    pa, wa = M.align(M.load_predictions(predictions_a), refs, predictions_a, strict)
    pb, wb = M.align(M.load_predictions(predictions_b), refs, predictions_b, strict)
    common = sorted({p.image_id for p in pa} & {p.image_id for p in pb})
    if not common:
        raise DataError(f"{predictions_a} and {predictions_b} share no image")
    by_a, by_b = {p.image_id: p for p in pa}, {p.image_id: p for p in pb}
    pa, pb = [by_a[i] for i in common], [by_b[i] for i in common]
    # one PTB tokenizer run (a JVM start) for both systems and the shared references
    toks = M.ptb_tokenize({
        **{("r", i): list(refs[i].explanations) for i in common},
        **{("a", p.image_id): [p.explanation] for p in pa},
        **{("b", p.image_id): [p.explanation] for p in pb},
    })
    gts = {i: toks[("r", i)] for i in common}
    ca = M.caption_metrics({i: toks[("a", i)][0] for i in common}, gts, tokenize=False)
    cb = M.caption_metrics({i: toks[("b", i)][0] for i in common}, gts, tokenize=False)
    ones = np.ones((len(common), 1))
    mean_stat = lambda name: Statistic(  # noqa: E731
        name, np.hstack([ca.per_image[name][:, None], ones]), np.hstack([cb.per_image[name][:, None], ones]), _ratio,
        "statistic: mean per-image score" if name == "METEOR" else "",
    )
    stats = [
        Statistic("BLEU-4", ca.bleu_stats, cb.bleu_stats, _bleu4, "statistic: coco corpus BLEU-4 on each resample"),
        mean_stat("METEOR"),
        mean_stat("ROUGE-L"),
        mean_stat("CIDEr"),
        Statistic("emotion_accuracy", _emotion_stats(pa, refs), _emotion_stats(pb, refs), _ratio),
    ]
    if classifier is not None:
        la = classifier.predict([p.explanation for p in pa])
        lb = classifier.predict([p.explanation for p in pb])
        stats.append(Statistic("emo_align", _emotion_stats(pa, refs, la), _emotion_stats(pb, refs, lb), _ratio))
    return {
        "a": str(predictions_a),
        "b": str(predictions_b),
        "references": str(references_path),
        "n_images": len(common),
        "n_resamples": n_resamples,
        "seed": seed,
        "dominance": dominance,
        **({"emo_classifier": classifier.describe()["kind"]} if classifier is not None else {}),
        "warnings": {"a": dict(wa), "b": dict(wb)},
        "metrics": {s.name: paired_tests(s, n_resamples, seed) for s in stats},
    }
