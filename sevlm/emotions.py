"""The 9 ArtEmis emotions and the rules every part of sevlm applies to an image's votes: vote
shares (`emotion_distribution`) and the dominant emotion (`dominant_emotion`, under one of
DOMINANCE_RULES). One home, so training, evaluation and retrieval count votes the same way."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from sevlm.errors import ConfigError, DataError

EMOTIONS = (
    "amusement",
    "awe",
    "contentment",
    "excitement",
    "anger",
    "disgust",
    "fear",
    "sadness",
    "something else",
)
EMOTION_TO_INDEX = {name: i for i, name in enumerate(EMOTIONS)}
NUM_EMOTIONS = len(EMOTIONS)

# How an image's votes make a dominant emotion:
# - "artemis": at least half of the votes, with no other emotion holding as many (ArtEmis's code);
# - "strict-majority": more than half of the votes (the SEVLM authors' evaluation).
DOMINANCE_RULES = ("artemis", "strict-majority")


def check_dominance_rule(rule: str) -> str:
    if rule not in DOMINANCE_RULES:
        raise ConfigError(f"dominance rule {rule!r}: expected one of {', '.join(DOMINANCE_RULES)}")
    return rule


def _dominant(counts: list[tuple[str, float]], total: float, rule: str) -> str | None:
    """The dominant label of (label, count) pairs sorted by count, descending; see DOMINANCE_RULES."""
    check_dominance_rule(rule)
    if not counts or counts[0][1] <= 0:
        return None
    top, top_count = counts[0]
    if rule == "strict-majority":
        return top if 2 * top_count > total else None
    if 2 * top_count < total or (len(counts) > 1 and counts[1][1] == top_count):
        return None
    return top


def dominant_emotion(emotions: Iterable[str], rule: str = "artemis") -> str | None:
    """The dominant emotion of an image's votes under `rule` (one of DOMINANCE_RULES).

    "artemis": ["fear", "fear", "awe"] -> "fear"; ["fear", "fear", "awe", "sadness"] -> "fear"
    (exactly half); ["fear", "fear", "awe", "awe"] -> None (tie); ["awe"] -> "awe"; [] -> None.
    "strict-majority": ["fear", "fear", "awe", "sadness"] -> None (half is not more than half).
    """
    counts = Counter(emotions).most_common()
    return _dominant(counts, sum(c for _, c in counts), rule)


def dominant_from_distribution(distribution: Iterable[float], rule: str = "artemis") -> str | None:
    """The dominant emotion from an image's `emotion_distribution` (9 vote shares, canonical order).

    Exact on the shares `prepare` writes: a share is count/total correctly rounded, so it
    compares with 1/2 as the count does with half the votes, and equal counts give equal shares.
    """
    shares = [float(x) for x in distribution]
    if len(shares) != NUM_EMOTIONS:
        raise DataError(f"emotion_distribution has {len(shares)} shares, expected {NUM_EMOTIONS}")
    counts = sorted(zip(EMOTIONS, shares), key=lambda kv: -kv[1])
    return _dominant(counts, 1.0, rule)


def emotion_distribution(emotions: Iterable[str]) -> list[float]:
    """Shares of the 9 emotions, canonical order (EMOTIONS)."""
    hist = np.zeros(NUM_EMOTIONS, dtype=np.float64)
    for e in emotions:
        hist[EMOTION_TO_INDEX[e]] += 1
    total = hist.sum()
    return [float(x) for x in (hist / total if total else hist)]
