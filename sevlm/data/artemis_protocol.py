"""ArtEmis's own protocol: its split, its text and its length rules, so results on ArtEmis
compare with published numbers (ArtEmis's speakers, NLX-GPT, SEVLM all train and test on the
output of ArtEmis's `preprocess_artemis_data.py --preprocess-for-deep-nets True`).

Two ways in:
- a raw ArtEmis CSV (`artemis_dataset_release_v0.csv`): `assign_artemis` reproduces that script:
  rows of paintings annotated 41 times or more go to a `rest` split; the other paintings are
  split 85/5/10 as ArtEmis does (`artemis_split`); every utterance goes through ArtEmis's text
  preprocessing (`sevlm.data.artemis_text`); utterances under 5 tokens, or longer than the 95th
  percentile of the train split's lengths, are dropped;
- a CSV that already holds ArtEmis's `split` and `utterance_spelled` columns (ArtEmis's
  `artemis_preprocessed.csv`, ArtEmis v2's released training CSV, its test CSVs such as
  `test_all.csv`): `read_preprocessed` keeps its splits and text as given.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import sys
from collections import Counter
from dataclasses import replace
from typing import Iterable

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from sevlm.data.artemis_text import ArtemisText
from sevlm.data.table import (
    Annotation,
    ReadResult,
    RowError,
    nfc,
    parse_emotion,
    parse_utterance,
    read_table,
)
from sevlm.errors import DataError

PROTOCOLS = ("artemis", "sevlm")
ARTEMIS_LOADS = (0.85, 0.05, 0.10)  # train, val, test (ArtEmis's --split-loads)
ARTEMIS_SPLITS = ("train", "val", "test", "rest")
TOO_LONG_PERCENTILE = 95
PREPROCESSED_COLUMNS = ("art_style", "painting", "emotion", "utterance", "split", "utterance_spelled")


def parse_painting(row: dict[str, str]) -> tuple[str, str]:
    """(art_style, painting) of an ArtEmis row, NFC, checked to be file names."""
    style, painting = nfc(row["art_style"].strip()), nfc(row["painting"].strip())
    if not style or not painting:
        raise RowError("empty_name", "empty art_style or painting")
    if "/" in style or "/" in painting or style in (".", "..") or painting in (".", ".."):
        raise RowError("bad_name", f"art_style/painting {style!r}/{painting!r} is not a file name")
    return style, painting


def split_key(art_style: str, painting: str) -> str:
    """ArtEmis's painting id for its split: style and painting joined with nothing between."""
    return art_style + painting


def artemis_split(keys: Iterable[str], seed: int = 2021, loads=ARTEMIS_LOADS) -> dict[str, str]:
    """key -> "train"/"val"/"test", as ArtEmis's `make_train_test_val_splits` assigns them.

    The sorted unique keys are split into train and the rest (val + test, its share given as
    the float sum of the two loads), then the rest into val and test (test: round(test load x
    all keys) paintings), each with scikit-learn's `train_test_split` and the same seed.
    """
    train_load, val_load, test_load = loads
    ids = sorted(set(keys))
    n_test = round(test_load * len(ids))
    n_rest = int(np.ceil((val_load + test_load) * len(ids)))
    if len(ids) < 3 or n_test < 1 or n_rest <= n_test or len(ids) - n_rest < 1:
        raise DataError(
            f"ArtEmis's split needs enough paintings for train, val and test: {len(ids)} painting(s) give "
            f"{len(ids) - n_rest} / {n_rest - n_test} / {n_test} (use --protocol sevlm for a small dataset)"
        )
    train, rest = train_test_split(ids, test_size=val_load + test_load, random_state=seed)
    split = dict.fromkeys(train, "train")
    if val_load:
        val, test = train_test_split(rest, test_size=n_test, random_state=seed)
        split.update(dict.fromkeys(val, "val"))
    else:
        test = rest
    split.update(dict.fromkeys(test, "test"))
    return split


def spell(
    annotations: list[Annotation], progress: bool = True, workers: int | None = None
) -> tuple[list[Annotation], dict]:
    """Every annotation's explanation made ArtEmis's `utterance_spelled`, with its token count;
    returns them and what each text rule changed.

    Steps 1-7 (`ArtemisText.pretokens`) run in `workers` processes for large inputs; SymSpell
    (step 8) runs here, once per distinct unknown token, so only this process loads its tables.
    """
    texts = [a.utterance for a in annotations]
    workers = _spell_workers(len(texts)) if workers is None else workers
    speller = ArtemisText()
    if workers > 1:
        tokens, stats = _pretokens_parallel(texts, workers, progress)
    else:
        bar = tqdm(texts, desc="ArtEmis text", unit=" utterances", file=sys.stderr, disable=not progress, mininterval=1)
        tokens, stats = [speller.pretokens(t) for t in bar], Counter()
    tokens = [speller.spell(t) for t in tokens]
    stats.update(speller.stats)
    out = [replace(a, explanation=" ".join(t), num_tokens=len(t)) for a, t in zip(annotations, tokens)]
    stats = dict(stats)
    stats["explanations_changed"] = sum(a.explanation != b.explanation for a, b in zip(annotations, out))
    return out, stats


def _spell_workers(n: int) -> int:
    """Processes for `spell`'s steps 1-7: one per core (at most 4) for ArtEmis-size inputs."""
    return min(os.cpu_count() or 1, 4) if n >= 50_000 else 1


_WORKER_SPELLER = None


def _pretokens_chunk(texts: list[str]) -> tuple[list[list[str]], dict]:
    global _WORKER_SPELLER
    if _WORKER_SPELLER is None:
        _WORKER_SPELLER = ArtemisText()
    before = dict(_WORKER_SPELLER.stats)
    tokens = [_WORKER_SPELLER.pretokens(t) for t in texts]
    return tokens, {k: v - before[k] for k, v in _WORKER_SPELLER.stats.items()}


def _pretokens_parallel(texts: list[str], workers: int, progress: bool) -> tuple[list[list[str]], Counter]:
    chunk = 5000
    chunks = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
    tokens: list[list[str]] = []
    stats: Counter = Counter()
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with (
        ctx.Pool(workers) as pool,
        tqdm(
            total=len(texts),
            desc="ArtEmis text",
            unit=" utterances",
            file=sys.stderr,
            disable=not progress,
            mininterval=1,
        ) as bar,
    ):
        for part, part_stats in pool.imap(_pretokens_chunk, chunks):  # imap keeps the order
            tokens.extend(part)
            stats.update(part_stats)
            bar.update(len(part))
    return tokens, stats


def too_long_threshold(train_lengths: list[int], percentile: float = TOO_LONG_PERCENTILE) -> float:
    """ArtEmis's length cut: the `percentile` of the train split's token counts (numpy's linear
    interpolation); utterances longer than it are dropped."""
    if not train_lengths:
        raise DataError("no training utterances to take the length percentile of")
    return float(np.percentile(np.asarray(train_lengths), percentile))


def assign_artemis(
    annotations: list[Annotation],
    seed: int,
    max_repetition: int,
    min_tokens: int,
    percentile: float,
    progress: bool = True,
) -> tuple[dict[str, list[Annotation]], dict]:
    """ArtEmis's deep-net preprocessing of raw rows: (annotations per split, including "rest";
    what each rule did, for the manifest). Rows come back in input order within each split."""
    normal = [a for a in annotations if a.repetition is None or a.repetition < max_repetition]
    splits = artemis_split({split_key(a.art_style, a.painting) for a in normal if a.source == "v1"}, seed)
    spelled, text_stats = spell(annotations, progress)
    per_split: dict[str, list[Annotation]] = {s: [] for s in ARTEMIS_SPLITS}
    for a in spelled:
        if a.repetition is not None and a.repetition >= max_repetition:
            per_split["rest"].append(a)
        else:  # a painting new in v2 trains
            per_split[splits.get(split_key(a.art_style, a.painting), "train")].append(a)
    threshold = too_long_threshold([a.num_tokens for a in per_split["train"]], percentile)
    dropped: Counter = Counter()
    for s, items in per_split.items():
        kept = []
        for a in items:
            if a.num_tokens < min_tokens:
                dropped[f"short_{a.source}_{s}"] += 1
            elif a.num_tokens > threshold:
                dropped[f"long_{a.source}_{s}"] += 1
            else:
                kept.append(a)
        per_split[s] = kept
    report = {
        "split": "ArtEmis's make_train_test_val_splits: sorted art_style+painting ids of paintings annotated "
        f"fewer than {max_repetition} times, {ARTEMIS_LOADS[0]:g} train vs the rest, then val/test; seed {seed}",
        "paintings_in_split": dict(Counter(splits.values())),
        "rest": {
            "rule": f"repetition >= {max_repetition}",
            "annotations": sum(a.repetition is not None and a.repetition >= max_repetition for a in annotations),
        },
        "text": {"rules": "ArtEmis deep-net text preprocessing (sevlm.data.artemis_text)", **text_stats},
        "too_short": {
            "rule": f"fewer than {min_tokens} tokens",
            "dropped": sum(v for k, v in dropped.items() if k.startswith("short_")),
        },
        "too_long": {
            "rule": f"more tokens than the {percentile:g}th percentile of the train split's",
            "percentile": percentile,
            "threshold": threshold,
            "dropped": sum(v for k, v in dropped.items() if k.startswith("long_")),
        },
        "dropped": dict(sorted(dropped.items())),
    }
    return per_split, report


# --------------------------------------------------------------------------- preprocessed input


def is_preprocessed(path: str | os.PathLike) -> bool:
    """Whether a CSV's header has ArtEmis's `split` and `utterance_spelled` columns."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    columns = {h.strip().lower() for h in header}
    return {"split", "utterance_spelled"} <= columns


def read_preprocessed(path: str | os.PathLike, skip_bad_rows: bool = False, progress: bool = True) -> ReadResult:
    """Rows of an ArtEmis-preprocessed CSV, split and text kept as given. A `version` column
    (ArtEmis v2: "old"/"new") becomes the source ("v1"/"v2")."""

    def parse(row: dict[str, str], line: int) -> Annotation:
        style, painting = parse_painting(row)
        split = row["split"].strip().lower()
        if split not in ARTEMIS_SPLITS:
            raise RowError("bad_split", f"split {row['split']!r} is not one of: {', '.join(ARTEMIS_SPLITS)}")
        explanation = " ".join(row["utterance_spelled"].split())
        if not explanation:
            raise RowError("empty_utterance", "empty utterance_spelled")
        version = row.get("version", "").strip().lower()
        source = {"old": "v1", "new": "v2"}.get(version, version or "v1")
        repetition = row.get("repetition", "").strip()
        return Annotation(
            art_style=style,
            painting=painting,
            emotion=parse_emotion(row["emotion"]),
            utterance=parse_utterance(row["utterance"]),
            explanation=explanation,
            num_tokens=len(explanation.split()),
            repetition=int(float(repetition)) if repetition else None,
            source=source,
            line=line,
            split=split,
        )

    return read_table(
        path,
        PREPROCESSED_COLUMNS,
        parse,
        skip_bad_rows,
        progress,
        optional=("version", "repetition"),
        what="an ArtEmis-preprocessed CSV",
    )


def assign_preprocessed(main: ReadResult, test: ReadResult | None) -> tuple[dict[str, list[Annotation]], dict]:
    """Per-split annotations of preprocessed input. With a test CSV, its rows are the test split
    and the main CSV's own test rows are left out (v2: the released training CSV's test rows are
    not the test set the paper reports)."""
    per_split: dict[str, list[Annotation]] = {s: [] for s in ARTEMIS_SPLITS}
    replaced = 0
    for a in main.annotations:
        if test is not None and a.split == "test":
            replaced += 1
        else:
            per_split[a.split].append(a)
    if test is not None:
        others = {a.split for a in test.annotations} - {"test"}
        if others:
            raise DataError(
                f"{test.path}: a test CSV holds test rows only; it has split(s) {', '.join(sorted(others))}"
            )
        per_split["test"] = list(test.annotations)
    where: dict[str, str] = {}
    for s in ARTEMIS_SPLITS:
        for a in per_split[s]:
            other = where.setdefault(a.image_id, s)
            if other != s:
                raise DataError(
                    f"painting {a.image_id} is in both the {other} and the {s} split "
                    f"({main.path}{f' and {test.path}' if test else ''}): a painting belongs to one split"
                )
    return per_split, {"test_rows_replaced_by_test_csv": replaced}
