"""Quick validation metrics: emotion accuracy and BLEU-4 (pycocoevalcap's scorer).

The full coco-caption pipeline (PTB tokenizer, METEOR) needs Java and is for `sevlm
evaluate`; during training a lower-case word split is enough to rank checkpoints.
"""

from __future__ import annotations

import contextlib
import io
import re

_WORD = re.compile(r"[a-z0-9']+")


def simple_tokens(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def bleu4(references: dict[str, list[str]], hypotheses: dict[str, str]) -> float:
    """Corpus BLEU-4 of `hypotheses` against all `references` of the same key."""
    from pycocoevalcap.bleu.bleu import Bleu  # loaded only where BLEU is scored (the Java-backed coco-caption kit)

    keys = [k for k in hypotheses if references.get(k)]
    if not keys:
        return 0.0
    gts = {k: [simple_tokens(r) for r in references[k]] for k in keys}
    res = {k: [simple_tokens(hypotheses[k]) or "empty"] for k in keys}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorer prints its length ratios
        scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(scores[3])


def emotion_accuracy(dominant: dict[str, str | None], predicted: dict[str, str | None]) -> float | None:
    """Share of images with a dominant human emotion whose predicted emotion equals it."""
    keys = [k for k in predicted if dominant.get(k)]
    if not keys:
        return None
    return sum(predicted[k] == dominant[k] for k in keys) / len(keys)
