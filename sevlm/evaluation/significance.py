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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sevlm.errors import DataError
from sevlm.evaluation.coco_caption import CaptionScores, bleu_from_stats, caption_metrics, ptb_tokenize
from sevlm.evaluation.inputs import Prediction, Reference, align, load_predictions, load_references
from sevlm.io import atomic_path


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
    return bleu_from_stats(s)[..., 3]


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


def _emotion_stats(preds: list[Prediction], refs: dict[str, Reference], labels=None) -> np.ndarray:
    dom = np.array([refs[p.image_id].dominant is not None for p in preds], dtype=np.float64)
    got = labels if labels is not None else [p.emotion for p in preds]
    hit = np.array([g == refs[p.image_id].dominant for g, p in zip(got, preds)], dtype=np.float64)
    return np.stack([hit * dom, dom], axis=1)  # [N, 2]


def _bleu(n: int) -> Callable[[np.ndarray], np.ndarray]:
    def fn(s: np.ndarray) -> np.ndarray:
        return bleu_from_stats(s)[..., n - 1]

    fn.__name__ = f"_bleu{n}"
    return fn


# How each metric is computed from the column sums of its per-image statistics (module docstring).
STATISTIC_FNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    **{f"BLEU-{n}": (_bleu4 if n == 4 else _bleu(n)) for n in range(1, 5)},
    "METEOR": _ratio,
    "ROUGE-L": _ratio,
    "CIDEr": _ratio,
    "emotion_accuracy": _ratio,
    "emo_align": _ratio,
    "image_to_emotion": _ratio,  # retrieval: hits / images with a dominant emotion (scoring.image_emotion_hits)
}
NOTES = {
    **{f"BLEU-{n}": f"statistic: coco corpus BLEU-{n} on each resample" for n in range(1, 5)},
    "METEOR": "statistic: mean per-image score",
}


def image_statistics(
    preds: list[Prediction],
    refs: dict[str, Reference],
    captions: CaptionScores,
    emo_labels: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """One system's per-image statistics {metric: [N, m]}, rows in `preds` order, from its scores
    (coco_caption.caption_metrics) and, for emo_align, the Emo-Align classifier's labels of its
    explanations: each metric is STATISTIC_FNS[metric](stats.sum(0)) (module docstring)."""
    pos = {i: k for k, i in enumerate(captions.image_ids)}
    rows = [pos[p.image_id] for p in preds]
    ones = np.ones((len(preds), 1))
    out = {f"BLEU-{n}": captions.bleu_stats[rows] for n in range(1, 5)}
    out.update({k: np.hstack([captions.per_image[k][rows][:, None], ones]) for k in ("METEOR", "ROUGE-L", "CIDEr")})
    out["emotion_accuracy"] = _emotion_stats(preds, refs)
    if emo_labels is not None:
        out["emo_align"] = _emotion_stats(preds, refs, emo_labels)
    return out


STATS_FORMAT = "sevlm-image-stats-1"


def write_statistics(path: str | Path, image_ids: list[str], stats: dict[str, np.ndarray], meta: dict) -> None:
    """Per-image statistics as one .npz (`image_ids`, `stat:<metric>` arrays, `meta` JSON), written
    atomically: what `sevlm evaluate` keeps beside REPORT.json for later paired tests."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                image_ids=np.array(image_ids, dtype=str),
                meta=np.array(json.dumps({"format": STATS_FORMAT, **meta})),
                **{f"stat:{k}": v for k, v in stats.items()},
            )


def read_statistics(path: str | Path) -> tuple[list[str], dict[str, np.ndarray], dict]:
    """(image ids, {metric: [N, m]}, meta) of a write_statistics file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            ids = [str(i) for i in z["image_ids"]]
            stats = {k[5:]: z[k] for k in z.files if k.startswith("stat:")}
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not a per-image statistics file ({e})") from e
    if meta.get("format") != STATS_FORMAT:
        raise DataError(f"{path}: format {meta.get('format')!r}, expected {STATS_FORMAT!r}")
    return ids, stats, meta


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
    `dominance` is the dominant-emotion rule (sevlm.emotions.DOMINANCE_RULES)."""
    refs = load_references(references_path, dominance)
    pa, wa = align(load_predictions(predictions_a), refs, predictions_a, strict)
    pb, wb = align(load_predictions(predictions_b), refs, predictions_b, strict)
    common = sorted({p.image_id for p in pa} & {p.image_id for p in pb})
    if not common:
        raise DataError(f"{predictions_a} and {predictions_b} share no image")
    by_a, by_b = {p.image_id: p for p in pa}, {p.image_id: p for p in pb}
    pa, pb = [by_a[i] for i in common], [by_b[i] for i in common]
    # one PTB tokenizer run (a JVM start) for both systems and the shared references
    toks = ptb_tokenize(
        {
            **{("r", i): list(refs[i].explanations) for i in common},
            **{("a", p.image_id): [p.explanation] for p in pa},
            **{("b", p.image_id): [p.explanation] for p in pb},
        }
    )
    gts = {i: toks[("r", i)] for i in common}
    ca = caption_metrics({i: toks[("a", i)][0] for i in common}, gts, tokenize=False)
    cb = caption_metrics({i: toks[("b", i)][0] for i in common}, gts, tokenize=False)
    labels = (
        (lambda ps: classifier.predict([p.explanation for p in ps])) if classifier is not None else (lambda ps: None)
    )
    sa, sb = image_statistics(pa, refs, ca, labels(pa)), image_statistics(pb, refs, cb, labels(pb))
    names = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "emotion_accuracy"] + (
        ["emo_align"] if classifier is not None else []
    )
    stats = [Statistic(n, sa[n], sb[n], STATISTIC_FNS[n], NOTES.get(n, "")) for n in names]
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
