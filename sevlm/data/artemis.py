"""ArtEmis ingestion: CSV annotations in, one self-describing dataset folder out.

`prepare_dataset` reads ArtEmis v1 (`artemis_dataset_release_v0.csv`) and optionally
ArtEmis v2 (`Contrastive.csv`), groups the annotations per painting, splits paintings
85/5/10 and writes, per split, the SEVLM grouped JSON (`<split>.json`), COCO caption
references (`<split>_coco.json`), and finally `manifest.json` (written last, so a folder
with a manifest is complete).

Rules (as in ArtEmis / SEVLM):
- paintings with repetition >= 41 (the heavily re-annotated ones) are set aside;
- utterances with fewer than 5 tokens are dropped as explanations (their emotion still
  counts towards the painting's emotion distribution, as in ArtEmis's image histograms);
- with v2 the training set is the "Combined" set: every new (v2) annotation of a painting
  outside val/test plus an equal-size random sample of the old (v1) training annotations;
  val and test stay v1.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import unicodedata
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from sevlm.constants import EMOTION_TO_INDEX, EMOTIONS, NUM_EMOTIONS, SPLITS
from sevlm.errors import ConfigError, DataError
from sevlm.io import atomic_dir, read_json, sha256_file, write_json

FORMAT = "sevlm-artemis-dataset/1"
REQUIRED_V1 = ("art_style", "painting", "emotion", "utterance", "repetition")
# The public Contrastive.csv shares v1's columns; repetition is optional there.
REQUIRED_V2 = ("art_style", "painting", "emotion", "utterance")
SPLIT_FRACTIONS = {"train": 0.85, "val": 0.05, "test": 0.10}
IMAGE_EXT = ".jpg"
# Above this share of absent images `prepare` stops (a wrong --images folder, a partial download)
# unless told to leave them out.
MAX_MISSING_IMAGES = 0.05
DATASET_FILES = (*(f"{s}.json" for s in SPLITS), *(f"{s}_coco.json" for s in SPLITS), "manifest.json")

# Words: runs of letters/digits, apostrophes allowed inside ("don't", "artist's").
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def tokenize(utterance: str) -> list[str]:
    """Lower-cased word tokens of an utterance; punctuation is dropped."""
    return _WORD.findall(nfc(utterance).translate(_QUOTES).lower())


def clean_utterance(utterance: str) -> str:
    """The explanation as the model sees it: lower case, words joined by single spaces."""
    return " ".join(tokenize(utterance))


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
    """Shares of the 9 emotions, canonical order (sevlm.constants.EMOTIONS)."""
    hist = np.zeros(NUM_EMOTIONS, dtype=np.float64)
    for e in emotions:
        hist[EMOTION_TO_INDEX[e]] += 1
    total = hist.sum()
    return [float(x) for x in (hist / total if total else hist)]


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Annotation:
    art_style: str  # NFC
    painting: str  # NFC
    emotion: str  # one of EMOTIONS
    utterance: str  # as written
    explanation: str  # cleaned
    num_tokens: int
    repetition: int | None
    source: str  # "v1" or "v2"
    line: int  # line of the file where the row starts

    @property
    def image_id(self) -> str:
        return f"{self.art_style}/{self.painting}"


@dataclass
class ReadResult:
    annotations: list[Annotation]
    rows: int  # data rows seen (blank lines excluded)
    skipped: Counter  # reason -> rows
    examples: list[str]  # first few skipped-row messages


class _RowError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _normalise_emotion(label: str) -> str:
    return " ".join(label.strip().lower().replace("_", " ").split())


def _parse_repetition(value: str) -> int:
    value = value.strip()
    try:
        return int(value)
    except ValueError:
        pass
    try:
        f = float(value)
    except ValueError:
        raise _RowError("bad_repetition", f"repetition {value!r} is not a whole number") from None
    if not f.is_integer():
        raise _RowError("bad_repetition", f"repetition {value!r} is not a whole number")
    return int(f)


def _check_looks_like_csv(path: Path) -> None:
    """Refuse binary files and JSON up front, with a message better than a csv.Error."""
    with open(path, "rb") as f:
        head = f.read(8192)
    if not head.strip():
        raise DataError(f"{path}: file is empty (expected an ArtEmis CSV with a header row)")
    if b"\x00" in head:
        raise DataError(f"{path}: not a CSV file (binary data: NUL bytes in the first 8 KB)")
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff").lstrip()
    if text.startswith(("{", "[")):
        raise DataError(f"{path}: not a CSV file (it looks like JSON)")
    bad = text.count("\ufffd")
    # A few stray bytes are a row problem; a head that is mostly undecodable is not text.
    if bad > max(8, len(text) // 20):
        raise DataError(f"{path}: not a CSV file (not UTF-8 text: {bad} undecodable bytes in the first 8 KB)")


class _Lines:
    """The physical lines of a text file, with lines put back to be read again."""

    def __init__(self, f):
        self._f = f
        self.pending: deque[str] = deque()
        self.taken: list[str] = []  # lines handed out since the caller last cleared it

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.pending.popleft() if self.pending else next(self._f)
        self.taken.append(line)
        return line


def _complete_row(lines: list[str], width: int) -> bool:
    """`lines` hold exactly one record, of `width` fields, with well-formed quoting."""
    try:
        rows = list(csv.reader(lines, strict=True))
    except csv.Error:
        return False
    return len(rows) == 1 and len(rows[0]) == width


def _records(f) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """Yield (line, fields, csv error message) for every record of the CSV text file `f`.

    A quoted field may hold line breaks, so one record can span several physical lines. A
    stray quote would make the reader swallow every line up to the next quote as one field;
    so a record spanning lines is kept only if its quoting is well formed, it has the header's
    number of fields and none of the lines it swallowed is a complete row of its own.
    Otherwise its first line alone is reported as bad and reading resumes on the next line.
    """
    lines = _Lines(f)
    reader = csv.reader(lines)
    start, width = 1, None
    while True:
        lines.taken = []
        try:
            fields, err = next(reader), None
        except StopIteration:
            return
        except csv.Error as e:
            fields, err = None, str(e)
        taken = lines.taken
        if len(taken) > 1 and width is not None and not (
            fields is not None
            and len(fields) == width
            and _complete_row(taken, width)
            and not any(_complete_row([t], width) for t in taken[1:])
        ):
            fields = None
            err = f"unbalanced quote: the quoted field opened on this line runs on to line {start + len(taken) - 1}"
            lines.pending.extendleft(reversed(taken[1:]))
            taken = taken[:1]
        yield start, fields, err
        if width is None and fields is not None:
            width = len(fields)
        start += len(taken)


def read_annotations(
    path: str | os.PathLike,
    source: str = "v1",
    skip_bad_rows: bool = False,
    progress: bool = True,
) -> ReadResult:
    """Read one ArtEmis-format CSV. Raises DataError naming file and line on bad input, or,
    with `skip_bad_rows`, skips bad rows and counts them by reason.

    File-level problems (missing file, not a CSV, missing column) always raise.
    """
    from tqdm import tqdm

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    _check_looks_like_csv(path)
    required = REQUIRED_V1 if source == "v1" else REQUIRED_V2

    annotations: list[Annotation] = []
    skipped: Counter = Counter()
    examples: list[str] = []
    rows = 0
    # surrogateescape keeps undecodable bytes as markers so one bad row can be skipped.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        csv.field_size_limit(1 << 24)
        records = _records(f)
        try:
            line, header, err = next(records)
        except StopIteration:
            raise DataError(f"{path}: file is empty (expected an ArtEmis CSV with a header row)") from None
        if header is None:
            raise DataError(f"{path}: line {line}: not a CSV header ({err})")
        columns = [h.strip().lower() for h in header]
        missing = [c for c in required if c not in columns]
        if missing:
            hint = " (is it tab-separated? ArtEmis CSVs use commas)" if len(columns) == 1 and "\t" in columns[0] else ""
            shown = ", ".join(repr(c) for c in columns[:8]) + (", ..." if len(columns) > 8 else "")
            raise DataError(
                f"{path}: line {line}: missing column(s) {', '.join(repr(c) for c in missing)} "
                f"(header has {shown}; an ArtEmis CSV needs {', '.join(required)}){hint}"
            )
        col = {c: columns.index(c) for c in REQUIRED_V1 if c in columns}

        bar = tqdm(records, desc=f"reading {path.name}", unit=" rows", file=sys.stderr, disable=not progress)
        for line, fields, err in bar:
            if fields is not None and not any(x.strip() for x in fields):
                continue  # blank line
            rows += 1
            try:
                if fields is None:
                    raise _RowError("malformed_row", f"malformed CSV ({err})")
                if len(fields) != len(columns):
                    raise _RowError(
                        "malformed_row", f"malformed row: {len(fields)} fields, the header has {len(columns)}"
                    )
                if any(_has_surrogates(x) for x in fields):
                    raise _RowError("not_utf8", "text is not valid UTF-8")
                style = nfc(fields[col["art_style"]].strip())
                painting = nfc(fields[col["painting"]].strip())
                if not style or not painting:
                    raise _RowError("empty_name", "empty art_style or painting")
                if "/" in style or "/" in painting or style in (".", "..") or painting in (".", ".."):
                    raise _RowError("bad_name", f"art_style/painting {style!r}/{painting!r} is not a file name")
                raw_emotion = fields[col["emotion"]]
                emotion = _normalise_emotion(raw_emotion)
                if emotion not in EMOTION_TO_INDEX:
                    raise _RowError(
                        "unknown_emotion",
                        f"unknown emotion {raw_emotion!r} (expected one of: {', '.join(EMOTIONS)})",
                    )
                utterance = fields[col["utterance"]]
                if not utterance.strip():
                    raise _RowError("empty_utterance", "empty utterance")
                repetition = _parse_repetition(fields[col["repetition"]]) if "repetition" in col else None
            except _RowError as e:
                message = f"{path}: line {line}: {e}"
                if not skip_bad_rows:
                    raise DataError(message + " (use --skip-bad-rows to skip such rows)") from None
                skipped[e.reason] += 1
                if len(examples) < 20:
                    examples.append(message)
                continue
            tokens = tokenize(utterance)
            annotations.append(
                Annotation(
                    art_style=style,
                    painting=painting,
                    emotion=emotion,
                    utterance=utterance.strip(),
                    explanation=" ".join(tokens),
                    num_tokens=len(tokens),
                    repetition=repetition,
                    source=source,
                    line=line,
                )
            )
    if rows == 0:
        raise DataError(f"{path}: no data rows (the file has only a header)")
    return ReadResult(annotations=annotations, rows=rows, skipped=skipped, examples=examples)


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


# --------------------------------------------------------------------------- splitting


def split_paintings(image_ids: Iterable[str], seed: int = 2021) -> dict[str, list[str]]:
    """Split painting ids 85/5/10 (train/val/test) with scikit-learn; deterministic in `seed`.

    Ids are sorted first so the split does not depend on the order of rows in the CSV.
    """
    from sklearn.model_selection import train_test_split

    ids = sorted(set(image_ids))
    n = len(ids)
    n_test = int(round(SPLIT_FRACTIONS["test"] * n))
    n_val = int(round(SPLIT_FRACTIONS["val"] * n))
    if n - n_test - n_val < 1:  # tiny inputs: keep at least one training painting
        n_test = n_val = 0
    rest, test = (ids, []) if n_test == 0 else train_test_split(ids, test_size=n_test, random_state=seed)
    train, val = (rest, []) if n_val == 0 else train_test_split(rest, test_size=n_val, random_state=seed)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


# --------------------------------------------------------------------------- images


class ImageIndex:
    """Finds `<Style>/<painting>.jpg` under a folder whatever the Unicode normal form on disk.

    macOS and some archives store names decomposed (NFD); ArtEmis names may be either. Each
    style folder is listed once and its entries keyed by their NFC form.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: images folder not found")
        self._styles = {nfc(p.name): p.name for p in self.root.iterdir() if p.is_dir()}
        self._files: dict[str, dict[str, str]] = {}

    def resolve(self, art_style: str, painting: str) -> str | None:
        """The image path relative to root as it is spelt on disk, or None if absent."""
        style_on_disk = self._styles.get(nfc(art_style))
        if style_on_disk is None:
            return None
        if style_on_disk not in self._files:
            self._files[style_on_disk] = {nfc(p.name): p.name for p in (self.root / style_on_disk).iterdir()}
        name = self._files[style_on_disk].get(nfc(painting + IMAGE_EXT))
        return None if name is None else f"{style_on_disk}/{name}"


# --------------------------------------------------------------------------- writing


def _group(annotations: list[Annotation], pool: dict[str, list[str]], image_names: dict[str, str]) -> dict:
    """SEVLM grouped JSON for one split. `pool` gives each image's emotions for its distribution."""
    by_image: dict[str, list[Annotation]] = defaultdict(list)
    for a in annotations:
        by_image[a.image_id].append(a)
    out = {}
    for image_id in sorted(by_image):
        items = by_image[image_id]
        emotions = pool[image_id]
        style, painting = image_id.split("/", 1)
        out[image_id] = {
            "image_name": image_names.get(image_id, image_id + IMAGE_EXT),
            "art_style": style,
            "painting": painting,
            "emotions": [a.emotion for a in items],
            "explanations": [a.explanation for a in items],
            "explanations_raw": [a.utterance for a in items],
            "emotion_distribution": emotion_distribution(emotions),
            "dominant_emotion": dominant_emotion(emotions),
        }
    return out


def coco_references(split_json: dict, split: str) -> dict:
    """COCO caption references (pycocoevalcap's COCO format) for one split.

    COCO ids are integers: images are numbered in sorted image_id order, and
    `image_id_to_coco_id` maps back to the SEVLM image ids.
    """
    images, annotations, mapping = [], [], {}
    for coco_id, image_id in enumerate(sorted(split_json)):
        entry = split_json[image_id]
        mapping[image_id] = coco_id
        images.append({"id": coco_id, "file_name": entry["image_name"], "sevlm_image_id": image_id})
        for caption, emotion in zip(entry["explanations"], entry["emotions"]):
            annotations.append(
                {"id": len(annotations), "image_id": coco_id, "caption": caption, "emotion": emotion}
            )
    return {
        "info": {"description": f"SEVLM ArtEmis {split} references", "format": FORMAT},
        "type": "captions",
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "image_id_to_coco_id": mapping,
    }


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
    progress: bool = True,
) -> dict:
    """Turn ArtEmis CSV(s) into the dataset folder described in docs/DESIGN.md; returns the manifest.

    `max_repetition`: paintings whose repetition is >= this are set aside.
    `min_tokens`: utterances with fewer tokens are not used as explanations.
    `allow_missing_images`: leave out the annotations of absent images even when they are more
    than MAX_MISSING_IMAGES of all images (below that they are always left out, and counted).

    The folder is built beside `out_dir` and swapped in whole, so an interrupted run leaves
    the previous dataset as it was, never a mix of old and new split files.
    """
    import sevlm

    artemis_csv, out_dir = Path(artemis_csv), Path(out_dir)
    _check_out_dir(out_dir)
    index = ImageIndex(images_dir) if images_dir is not None else None  # fail early on a bad folder
    v1 = read_annotations(artemis_csv, "v1", skip_bad_rows, progress)
    v2 = read_annotations(contrastive_csv, "v2", skip_bad_rows, progress) if contrastive_csv else None
    new = v2.annotations if v2 else []

    # Paintings re-annotated many times are set aside entirely (v1 and v2 rows alike).
    heavy = {a.image_id for a in v1.annotations + new if a.repetition is not None and a.repetition >= max_repetition}
    set_aside_rows = sum(a.image_id in heavy for a in v1.annotations + new)
    old = [a for a in v1.annotations if a.image_id not in heavy]
    new = [a for a in new if a.image_id not in heavy]

    splits = split_paintings({a.image_id for a in old}, seed)
    split_of = {pid: s for s, ids in splits.items() for pid in ids}
    held_out = {pid for pid, s in split_of.items() if s != "train"}

    short = Counter()

    def keep(items: list[Annotation], label: str) -> list[Annotation]:
        kept = [a for a in items if a.num_tokens >= min_tokens]
        short[label] += len(items) - len(kept)
        return kept

    per_split: dict[str, list[Annotation]] = {s: [] for s in SPLITS}
    for a in old:
        per_split[split_of[a.image_id]].append(a)
    # Each image's emotion distribution counts every valid annotation of the sources its split uses.
    pool: dict[str, list[str]] = defaultdict(list)
    for a in old:
        pool[a.image_id].append(a.emotion)

    combined = None
    v2_on_held_out = 0
    if v2 is not None:
        v2_on_held_out = sum(a.image_id in held_out for a in new)
        new = [a for a in new if a.image_id not in held_out]
        for a in new:
            pool[a.image_id].append(a.emotion)
        new_kept = keep(new, "v2")
        old_kept = keep(per_split["train"], "v1_train")
        rng = np.random.default_rng(seed)
        n_old = min(len(new_kept), len(old_kept))
        picked = np.sort(rng.choice(len(old_kept), size=n_old, replace=False)) if n_old else []
        per_split["train"] = [old_kept[i] for i in picked] + new_kept
        combined = {
            "v2_annotations": len(new_kept),
            "v1_annotations_sampled": int(n_old),
            "v1_annotations_available": len(old_kept),
            "v2_rows_on_val_test_paintings": v2_on_held_out,
            "v2_new_paintings": len({a.image_id for a in new_kept} - set(split_of)),
        }
    else:
        per_split["train"] = keep(per_split["train"], "v1_train")
    for s in ("val", "test"):
        per_split[s] = keep(per_split[s], f"v1_{s}")

    image_names: dict[str, str] = {}
    missing: list[str] = []
    if index is not None:
        needed = sorted({a.image_id for s in SPLITS for a in per_split[s]})
        for image_id in needed:
            style, painting = image_id.split("/", 1)
            found = index.resolve(style, painting)
            if found is None:
                missing.append(image_id)
            else:
                image_names[image_id] = found
        if len(missing) > MAX_MISSING_IMAGES * len(needed) and not allow_missing_images:
            raise DataError(
                f"{index.root}: {len(missing)} of {len(needed)} images not found "
                f"({len(missing) / max(len(needed), 1):.0%}; e.g. {', '.join(missing[:3])}); check --images, "
                f"or pass --allow-missing-images to leave their annotations out"
            )
        gone = set(missing)
        for s in SPLITS:
            per_split[s] = [a for a in per_split[s] if a.image_id not in gone]

    if not per_split["train"]:
        raise DataError(
            f"{artemis_csv}: no training annotations left (of {v1.rows} rows: {sum(v1.skipped.values())} bad, "
            f"{sum(short.values())} utterances under {min_tokens} tokens, {len(missing)} images not found)"
        )
    grouped = {s: _group(per_split[s], pool, image_names) for s in SPLITS}
    counts = {}
    for s, data in grouped.items():
        counts[s] = {
            "paintings_in_split": len(splits[s]),
            "images": len(data),
            "annotations": sum(len(v["emotions"]) for v in data.values()),
            "images_with_dominant_emotion": sum(v["dominant_emotion"] is not None for v in data.values()),
        }
        if s == "train" and combined is not None:
            counts[s]["annotations_v1"] = sum(a.source == "v1" for a in per_split[s])
            counts[s]["annotations_v2"] = sum(a.source == "v2" for a in per_split[s])

    def source_entry(path: Path, result: ReadResult) -> dict:
        return {
            "path": str(path.resolve()),
            "sha256": sha256_file(path),
            "rows": result.rows,
            "rows_read": len(result.annotations),
            "skipped_rows": dict(sorted(result.skipped.items())),
        }

    sources = {"artemis_csv": source_entry(artemis_csv, v1)}
    skipped = Counter(v1.skipped)
    examples = list(v1.examples)
    if v2 is not None:
        sources["contrastive_csv"] = source_entry(Path(contrastive_csv), v2)
        skipped.update(v2.skipped)
        examples += v2.examples
    manifest = {
        "format": FORMAT,
        "sevlm_version": sevlm.__version__,
        "training_set": "combined (v2 + equal-size v1 sample)" if v2 is not None else "v1",
        "sources": sources,
        "seed": seed,
        "split_fractions": SPLIT_FRACTIONS,
        "emotions": list(EMOTIONS),
        "images_dir": str(Path(images_dir).resolve()) if images_dir is not None else None,
        "counts": counts,
        "skipped_rows": dict(sorted(skipped.items())),
        "skipped_examples": examples[:20],
        "set_aside": {
            "rule": f"repetition >= {max_repetition}",
            "paintings": len(heavy),
            "annotations": set_aside_rows,
        },
        "dropped_short_utterances": {
            "rule": f"fewer than {min_tokens} tokens",
            "total": sum(short.values()),
            **dict(sorted(short.items())),
        },
        "missing_images": {"count": len(missing), "examples": missing[:50]},
        "combined": combined,
        "files": list(DATASET_FILES[:-1]),
    }
    with atomic_dir(out_dir) as tmp:
        for s, data in grouped.items():
            write_json(tmp / f"{s}.json", data, indent=None)  # compact: ArtEmis-size splits run to 100s of MB
            write_json(tmp / f"{s}_coco.json", coco_references(data, s), indent=None)
        write_json(tmp / "manifest.json", manifest)  # last: its presence means the folder is complete
    return manifest


def _check_out_dir(out_dir: Path) -> None:
    """`prepare` replaces its output folder whole: refuse one that holds anything else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder (--out names the dataset folder to write)")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in DATASET_FILES)
        if foreign:
            raise DataError(
                f"{out_dir}: not a dataset folder (it holds {', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); `sevlm prepare` replaces its --out folder whole, "
                f"so choose a new or empty one"
            )


def load_split(dataset_dir: str | os.PathLike, split: str) -> dict:
    """The grouped JSON of one split of a prepared dataset folder."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (expected one of: {', '.join(SPLITS)})")
    path = Path(dataset_dir) / f"{split}.json"
    if not path.exists():
        raise DataError(f"{path}: file not found (run `sevlm prepare` to build the dataset folder)")
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of images, got {type(data).__name__}")
    return data
