"""Assigning paintings to train/val/test when a dataset is prepared (scikit-learn's seeded split),
dropping too-short utterances per split, and reading `--split-fractions`. Kept apart from the
dataset-folder readers so that reading a dataset never loads scikit-learn.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from sklearn.model_selection import train_test_split

from sevlm.data.folder import SPLIT_FRACTIONS, SPLITS
from sevlm.data.table import Annotation
from sevlm.errors import ConfigError


def split_paintings(
    image_ids: Iterable[str], seed: int = 2021, fractions: dict[str, float] | None = None
) -> dict[str, list[str]]:
    """Split painting ids 85/5/10 (train/val/test; or `fractions`) with scikit-learn;
    deterministic in `seed`.

    Ids are sorted first so the split does not depend on the order of rows in the CSV.
    """
    fractions = fractions or SPLIT_FRACTIONS
    ids = sorted(set(image_ids))
    n = len(ids)
    n_test = int(round(fractions["test"] * n))
    n_val = int(round(fractions["val"] * n))
    if n - n_test - n_val < 1:  # tiny inputs: keep at least one training painting
        n_test = n_val = 0
    rest, test = (ids, []) if n_test == 0 else train_test_split(ids, test_size=n_test, random_state=seed)
    train, val = (rest, []) if n_val == 0 else train_test_split(rest, test_size=n_val, random_state=seed)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def drop_short(per_split: dict[str, list[Annotation]], min_tokens: int) -> Counter:
    """Remove utterances under `min_tokens` tokens from each split; return the counts removed,
    keyed "<source>_<split>"."""
    short: Counter = Counter()
    for s, items in per_split.items():
        per_split[s] = [a for a in items if a.num_tokens >= min_tokens]
        short.update(f"{a.source}_{s}" for a in items if a.num_tokens < min_tokens)
    return short


def parse_split_fractions(text: str) -> dict[str, float]:
    """ "0.8,0.1,0.1" (train,val,test) -> {"train": 0.8, "val": 0.1, "test": 0.1}, checked."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1) > 1e-6 or values[0] <= 0:
        raise ConfigError(
            f"--split-fractions {text!r}: expected three shares train,val,test that sum to 1, e.g. 0.8,0.1,0.1"
        )
    return dict(zip(SPLITS, values))
