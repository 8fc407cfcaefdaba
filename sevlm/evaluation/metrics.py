"""The scores of one predictions file: emotion accuracy, Emo-Align and how the explanations read,
and `evaluate`, which puts them beside coco-caption's language scores (`coco_caption`).

`evaluate` is the one road from a predictions file and its references (`inputs`) to the report,
so `sevlm evaluate`, the ablation study and the tools all score alike. Problems that are the
model's own doing (an empty explanation, an emotion that is not one of the 9) are scored as they
are and counted under "warnings".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from sevlm.data.table import clean_utterance, tokenize
from sevlm.emotions import EMOTION_TO_INDEX, EMOTIONS
from sevlm.evaluation.coco_caption import LANGUAGE_METRICS as LANGUAGE_METRICS
from sevlm.evaluation.coco_caption import MAX_EXPLANATION_CHARS, UNAVAILABLE_METRICS, CaptionScores, caption_metrics
from sevlm.evaluation.coco_caption import bleu_from_stats as bleu_from_stats
from sevlm.evaluation.coco_caption import get_meteor as get_meteor
from sevlm.evaluation.inputs import Prediction, Reference, align, explanation_after, load_predictions, load_references
from sevlm.evaluation.inputs import normalise_emotion as normalise_emotion

# `name as name`: names importers reach as `metrics.<name>` (tests take the module whole).

INVALID_EMOTION = "<not one of the 9>"


def emotion_metrics(predicted: list[str], dominant: list[str | None]) -> dict:
    """Accuracy, confusion matrix and per-class P/R/F1 over images with a dominant emotion."""
    pairs = [(p, d) for p, d in zip(predicted, dominant) if d is not None]
    n = len(pairs)
    out: dict = {"emotion_accuracy": None, "emotion_accuracy_n": n}
    if n == 0:
        return out
    y_pred = [p if p in EMOTION_TO_INDEX else INVALID_EMOTION for p, _ in pairs]
    y_true = [d for _, d in pairs]
    correct = np.array([p == d for p, d in zip(y_pred, y_true)])
    out["emotion_accuracy"] = float(correct.mean())
    labels = list(EMOTIONS) + [INVALID_EMOTION]
    # rows: dominant human emotion (9); columns: predicted (9 + "not one of the 9")
    cm = confusion_matrix(y_true, y_pred, labels=labels)[: len(EMOTIONS)]
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=list(EMOTIONS), zero_division=0)
    out["confusion_matrix"] = {"rows_true": list(EMOTIONS), "columns_predicted": labels, "counts": cm.tolist()}
    out["per_class"] = {
        e: {"precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]), "support": int(support[k])}
        for k, e in enumerate(EMOTIONS)
    }
    present = support > 0
    out["macro_f1"] = float(f1[present].mean()) if present.any() else None
    return out


def text_stats(explanations: list[str]) -> dict:
    """Diversity and length of explanations (lower-cased, whitespace-collapsed for distinctness)."""
    norm = [" ".join(t.lower().split()) for t in explanations]
    lengths = [len(t.split()) for t in norm]
    return {
        "distinct_explanations_share": len(set(norm)) / len(norm) if norm else None,
        "mean_length_words": float(np.mean(lengths)) if lengths else None,
    }


# ArtEmis's "metaphor-like expressions": utterances holding one of these phrases (the
# simile/metaphor markers of ArtEmis's evaluation code). ArtEmis matches plain substrings;
# we match whole words, so "this likely" does not count as "is like".
METAPHOR_PHRASES = (
    "looks like",
    "look like",
    "seems like",
    "is like",
    "are like",
    "reminds me",
    "remind me",
    "could be",
    "appears to be",
    "appear to be",
    "think of",
    "resembles",
    "resembling",
)
_METAPHOR = re.compile(r"\b(?:" + "|".join(re.escape(m) for m in METAPHOR_PHRASES) + r")\b")


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float | None:
    """Distinct-n: distinct n-grams / all n-grams, pooled over every text (words as `tokenize`)."""
    grams = [g for t in texts for g in _ngrams(tokenize(t), n)]
    return len(set(grams)) / len(grams) if grams else None


def has_repeated_bigram(text: str) -> bool:
    """Whether some bigram occurs more than once ("the dark and the dark and")."""
    bigrams = _ngrams(tokenize(text), 2)
    return len(bigrams) != len(set(bigrams))


def repeated_bigram_share(texts: list[str]) -> float | None:
    """Share of texts with a repeated bigram."""
    return sum(map(has_repeated_bigram, texts)) / len(texts) if texts else None


def copied_share(texts: list[str], corpus: set[str]) -> float | None:
    """Share of texts equal, once cleaned (`clean_utterance`), to a text of `corpus` (cleaned)."""
    if not texts:
        return None
    return sum(clean_utterance(t) in corpus for t in texts) / len(texts)


def metaphor_rate(texts: list[str]) -> float | None:
    """Share of texts with a metaphor-like expression (METAPHOR_PHRASES), as ArtEmis counts them."""
    if not texts:
        return None
    return sum(bool(_METAPHOR.search(clean_utterance(t))) for t in texts) / len(texts)


def language_stats(generated: list[str], human: list[str], training: list[str] | None = None) -> dict:
    """How the generated explanations read, beside the human ones: distinct-1/2, repeated
    bigrams, metaphor-like expressions and, given the training utterances, verbatim copies."""
    out = {
        "distinct_1": distinct_n(generated, 1),
        "distinct_2": distinct_n(generated, 2),
        "repeated_bigram_share": repeated_bigram_share(generated),
        "metaphor_rate_generated": metaphor_rate(generated),
        "metaphor_rate_human": metaphor_rate(human),
        "copied_training_share": None,
    }
    if training is not None:
        out["copied_training_share"] = copied_share(generated, {clean_utterance(t) for t in training})
    return out


# ----------------------------------------------------------------------------- evaluate
@dataclass
class Evaluation:
    """Everything `evaluate` computes; `report` is the JSON-ready summary."""

    report: dict
    predictions: list[Prediction]
    references: dict[str, Reference]
    captions: CaptionScores
    emo_labels: list[str] | None = None  # classifier label per kept prediction


def evaluate(
    predictions_path: str | Path,
    references_path: str | Path,
    classifier=None,
    strict: bool = True,
    dominance: str = "artemis",
    training_texts: list[str] | None = None,
    because: str = "first",
) -> Evaluation:
    """Score a predictions file against the references; `classifier` (an EmotionClassifier) adds
    emo_align; `dominance` is the rule for each image's dominant emotion (see DOMINANCE_RULES
    in sevlm.emotions); `training_texts` (the training split's utterances) adds the share of
    generated explanations that copy one verbatim. With `because="last"` each explanation is
    scored from after its last "because" (the SEVLM authors' scoring; see BECAUSE_RULES)."""
    references = load_references(references_path, dominance)
    preds, warnings = align(load_predictions(predictions_path), references, predictions_path, strict)
    cut = [replace(p, explanation=explanation_after(p.explanation, because)) for p in preds]
    n_cut = sum(a.explanation != b.explanation.strip() for a, b in zip(cut, preds))
    preds = cut
    refs = {p.image_id: references[p.image_id] for p in preds}
    long = sum(len(p.explanation) > MAX_EXPLANATION_CHARS for p in preds)
    if long:
        warnings["explanation_truncated"] = long  # cut to MAX_EXPLANATION_CHARS for the language scores
    caps = caption_metrics(
        {p.image_id: p.explanation[:MAX_EXPLANATION_CHARS] for p in preds},
        {i: list(r.explanations) for i, r in refs.items()},
    )
    dominant = [refs[p.image_id].dominant for p in preds]
    human = [t for r in refs.values() for t in r.explanations]
    emo = emotion_metrics([p.emotion for p in preds], dominant)

    report: dict = {
        "predictions": str(predictions_path),
        "references": str(references_path),
        "n_predictions": len(preds),
        "n_reference_images": len(references),
        "coverage": len(preds) / len(references),
        "warnings": dict(warnings),
        **caps.corpus,
        "unavailable": dict(UNAVAILABLE_METRICS),
        "dominance": dominance,
        "because": because,
        "explanations_cut_at_a_later_because": n_cut,
        "emotion_accuracy": emo["emotion_accuracy"],
        "emotion_accuracy_n": emo["emotion_accuracy_n"],
        "emotion_not_one_of_9_share": sum(p.emotion not in EMOTION_TO_INDEX for p in preds) / len(preds),
        **text_stats([p.explanation for p in preds]),
        "human_mean_length_words": float(np.mean([len(t.split()) for t in human])),
        **language_stats([p.explanation for p in preds], human, training_texts),
        "emotions": {k: v for k, v in emo.items() if k not in ("emotion_accuracy", "emotion_accuracy_n")},
    }
    labels = None
    if classifier is not None:
        labels = classifier.predict([p.explanation for p in preds])
        report.update(emo_align(labels, dominant))
        report["emo_classifier"] = classifier.describe()
    return Evaluation(report, preds, references, caps, labels)


def emo_align(labels: list[str], dominant: list[str | None]) -> dict:
    """Share of generated explanations whose classifier label is the dominant human emotion."""
    hits = [lab == d for lab, d in zip(labels, dominant) if d is not None]
    return {"emo_align": float(np.mean(hits)) if hits else None, "emo_align_n": len(hits)}
