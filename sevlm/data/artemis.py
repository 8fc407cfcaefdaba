"""ArtEmis ingestion: CSV annotations in, one self-describing dataset folder out.

`prepare_dataset` reads ArtEmis v1 (`artemis_dataset_release_v0.csv`) and optionally
ArtEmis v2 (`Contrastive.csv`), groups the annotations per painting, splits paintings
85/5/10 and writes, per split, the SEVLM grouped JSON (`<split>.json`), COCO caption
references (`<split>_coco.json`), and finally `manifest.json` (written last, so a folder
with a manifest is complete). The reading, image and writing
machinery is shared with other datasets' formats (`sevlm.data.table`, `sevlm.data.folder`).

Rules (as in ArtEmis / SEVLM):
- paintings with repetition >= 41 (the heavily re-annotated ones) are set aside;
- utterances with fewer than 5 tokens are dropped as explanations (their emotion still
  counts towards the painting's emotion distribution, as in ArtEmis's image histograms);
- with v2, paintings keep their v1 split and every v2 annotation goes to its painting's
  split (val/test are then the "Combined" test set; paintings new in v2 train). The training
  set is by default the authors' "Combined" set: every v2 training annotation plus an
  equal-size random sample of the v1 ones (`train_subset="all"` keeps every v1 one).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from sevlm.data import artemis_protocol as ap
from sevlm.data import folder, table
from sevlm.data.artemis_protocol import parse_painting
from sevlm.data.split import drop_short, split_paintings
from sevlm.data.table import Annotation, ReadResult, RowError
from sevlm.errors import ConfigError

REQUIRED_V1 = ("art_style", "painting", "emotion", "utterance", "repetition")
# The public Contrastive.csv shares v1's columns; repetition is optional there.
REQUIRED_V2 = ("art_style", "painting", "emotion", "utterance")
TRAIN_SUBSETS = {  # with v2: name -> the manifest's description of the training set
    "combined": "combined (every v2 training annotation + an equal-size random sample of v1's)",
    "all": "all (every v1 and v2 training annotation)",
}


def _parse_repetition(value: str) -> int:
    value = value.strip()
    try:
        return int(value)
    except ValueError:
        pass
    try:
        f = float(value)
    except ValueError:
        raise RowError("bad_repetition", f"repetition {value!r} is not a whole number") from None
    if not f.is_integer():
        raise RowError("bad_repetition", f"repetition {value!r} is not a whole number")
    return int(f)


def read_annotations(
    path: str | os.PathLike,
    source: str = "v1",
    skip_bad_rows: bool = False,
    progress: bool = True,
) -> ReadResult:
    """Read one ArtEmis-format CSV (v1, or v2's Contrastive.csv with `source="v2"`); see table.read_table."""

    def parse(row: dict[str, str], line: int) -> Annotation:
        style, painting = parse_painting(row)
        emotion, utterance = table.parse_emotion(row["emotion"]), table.parse_utterance(row["utterance"])
        repetition = _parse_repetition(row["repetition"]) if "repetition" in row else None
        return table.make_annotation(style, painting, emotion, utterance, source, line, repetition=repetition)

    if source == "v1":
        return table.read_table(path, REQUIRED_V1, parse, skip_bad_rows, progress)
    return table.read_table(path, REQUIRED_V2, parse, skip_bad_rows, progress, optional=("repetition",))


# --------------------------------------------------------------------------- ArtEmis


def prepare_dataset(
    artemis_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    contrastive_csv: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    skip_bad_rows: bool = False,
    seed: int = 2021,
    min_tokens: int = 5,
    max_repetition: int = 41,
    allow_missing_images: bool = False,
    train_subset: str | None = None,
    progress: bool = True,
    protocol: str = "artemis",
    test_csv: str | os.PathLike | None = None,
    too_long_percentile: float = 95,
) -> dict:
    """Turn ArtEmis CSV(s) into the dataset folder described in docs/DESIGN.md; returns the manifest.

    `protocol`: "artemis" (default) reproduces ArtEmis's deep-net preprocessing (its split, its
    spell-checked text, its length rules, a `rest` split for heavily re-annotated paintings:
    `sevlm.data.artemis_protocol`); "sevlm" is sevlm's own (test set first, our tokens, no spelling).
    A CSV that already has `split` and `utterance_spelled` columns (ArtEmis's own output, ArtEmis
    v2's released CSVs) is taken as it is, with `test_csv` as its test split if given.
    `max_repetition`: paintings whose repetition is >= this are set aside (ArtEmis: into `rest`).
    `min_tokens`: utterances with fewer tokens are not used as explanations.
    `too_long_percentile` (artemis protocol): utterances longer than this percentile of the
    train split's lengths are dropped (100: none).
    `allow_missing_images`: leave out the annotations of absent images even when they are more
    than MAX_MISSING_IMAGES of all images (below that they are always left out, and counted).
    `train_subset` (with `contrastive_csv`): "combined" (default: the authors' training set,
    every v2 training annotation plus an equal-size random sample of the v1 ones) or "all".
    """
    artemis_csv, out_dir = Path(artemis_csv), Path(out_dir)
    if protocol not in ap.PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r} (expected one of: {', '.join(ap.PROTOCOLS)})")
    preprocessed = ap.is_preprocessed(artemis_csv)
    if preprocessed and contrastive_csv is not None:
        raise ConfigError(
            f"{artemis_csv} is already preprocessed (it has split and utterance_spelled columns): "
            "it holds its own v2 rows; --contrastive-csv is for raw ArtEmis input"
        )
    if test_csv is not None and not preprocessed:
        raise ConfigError(
            "--test-csv goes with a preprocessed CSV (one with split and utterance_spelled columns, "
            f"e.g. ArtEmis v2's released training CSV); {artemis_csv} has neither"
        )
    if train_subset is not None and contrastive_csv is None:
        raise ConfigError("a training subset (--train-subset) needs ArtEmis v2 (--contrastive-csv)")
    if contrastive_csv is not None:
        train_subset = train_subset or "combined"
        if train_subset not in TRAIN_SUBSETS:
            raise ConfigError(f"unknown training subset {train_subset!r} (expected one of: {', '.join(TRAIN_SUBSETS)})")
    folder.check_out_dir(out_dir)
    index = table.ImageIndex(images_dir) if images_dir is not None else None  # fail early on a bad folder

    if preprocessed:
        v1 = ap.read_preprocessed(artemis_csv, skip_bad_rows, progress)
        test = ap.read_preprocessed(test_csv, skip_bad_rows, progress) if test_csv is not None else None
        results = [v1] + ([test] if test else [])
        per_split, protocol_report = ap.assign_preprocessed(v1, test)
        protocol, short = "artemis-preprocessed", Counter()  # its text and lengths are kept as given
        every = [a for items in per_split.values() for a in items]
        sources = {"artemis_csv": v1.manifest_entry(), **({"test_csv": test.manifest_entry()} if test else {})}
    else:
        v1 = read_annotations(artemis_csv, "v1", skip_bad_rows, progress)
        v2 = read_annotations(contrastive_csv, "v2", skip_bad_rows, progress) if contrastive_csv else None
        results = [v1] + ([v2] if v2 else [])
        every = [a for r in results for a in r.annotations]
        sources = {"artemis_csv": v1.manifest_entry(), **({"contrastive_csv": v2.manifest_entry()} if v2 else {})}
        if protocol == "artemis":
            per_split, protocol_report = ap.assign_artemis(
                every, seed, max_repetition, min_tokens, too_long_percentile, progress
            )
            short = Counter(
                {k[len("short_") :]: v for k, v in protocol_report["dropped"].items() if k.startswith("short_")}
            )
        else:
            per_split, protocol_report, short = _assign_sevlm(every, seed, max_repetition, min_tokens)

    # Each image's emotion distribution: sevlm counts every valid annotation, short ones
    # included; ArtEmis's evaluation counts the annotations its preprocessing keeps.
    pool: dict[str, list[str]] = defaultdict(list)
    for a in every if protocol == "sevlm" else (a for items in per_split.values() for a in items):
        pool[a.image_id].append(a.emotion)

    combined = None
    if contrastive_csv is not None:
        old = [a for a in per_split["train"] if a.source == "v1"]
        new = [a for a in per_split["train"] if a.source == "v2"]
        n_old = len(old)
        if train_subset == "combined":
            rng = np.random.default_rng(seed)
            n_old = min(len(new), len(old))
            picked = np.sort(rng.choice(len(old), size=n_old, replace=False)) if n_old else []
            per_split["train"] = [old[i] for i in picked] + new
        in_v1 = {a.image_id for a in every if a.source == "v1"}
        combined = {
            "v1_train_annotations_available": len(old),
            "v1_train_annotations_used": int(n_old),
            "v2_new_paintings": len({a.image_id for a in new} - in_v1),
        }

    image_names, missing = table.find_images(index, per_split, allow_missing_images) if index else ({}, [])
    if not per_split["train"]:
        raise folder.no_training_data(str(artemis_csv), results, short, missing, min_tokens)

    manifest = {
        **folder.manifest_base("artemis", results, seed, images_dir, short, min_tokens, missing),
        "protocol": protocol,
        **(protocol_report if protocol == "sevlm" else {protocol: protocol_report}),
        "training_set": TRAIN_SUBSETS[train_subset] if contrastive_csv is not None else "v1",
        "train_subset": train_subset,
        "sources": sources,
        "combined": combined,
    }
    if protocol != "sevlm":
        manifest["split_fractions"] = dict(zip(ap.ARTEMIS_SPLITS, ap.ARTEMIS_LOADS))
    if not per_split.get("rest"):
        per_split.pop("rest", None)
    counts = (
        {s: {"paintings_in_split": n} for s, n in manifest[protocol].pop("paintings_in_split", {}).items()}
        if protocol != "sevlm"
        else {s: {"paintings_in_split": n} for s, n in manifest.pop("paintings_in_split").items()}
    )
    return folder.write_dataset(out_dir, per_split, pool, image_names, manifest, counts)


def _assign_sevlm(every: list[Annotation], seed: int, max_repetition: int, min_tokens: int):
    """sevlm's own protocol: heavily re-annotated paintings set aside, test then val drawn from
    v1's paintings, our tokens, short utterances dropped. Returns (per split, report, short)."""
    heavy = {a.image_id for a in every if a.repetition is not None and a.repetition >= max_repetition}
    set_aside_rows = sum(a.image_id in heavy for a in every)
    every = [a for a in every if a.image_id not in heavy]
    # The split is v1's, so v1-only and v1+v2 datasets test on the same paintings; v2 rows
    # follow their painting, and paintings new in v2 train.
    splits = split_paintings({a.image_id for a in every if a.source == "v1"}, seed)
    split_of = {pid: s for s, ids in splits.items() for pid in ids}
    per_split: dict[str, list[Annotation]] = {s: [] for s in folder.SPLITS}
    for a in every:
        per_split[split_of.get(a.image_id, "train")].append(a)
    short = drop_short(per_split, min_tokens)
    report = {
        "set_aside": {
            "rule": f"repetition >= {max_repetition}",
            "paintings": len(heavy),
            "annotations": set_aside_rows,
        },
        "paintings_in_split": {s: len(splits[s]) for s in folder.SPLITS},
    }
    return per_split, report, short
