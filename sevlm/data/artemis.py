"""ArtEmis ingestion: CSV annotations in, one self-describing dataset folder out.

`prepare_dataset` reads ArtEmis v1 (`artemis_dataset_release_v0.csv`) and optionally
ArtEmis v2 (`Contrastive.csv`), groups the annotations per painting, splits paintings
85/5/10 and writes, per split, the SEVLM grouped JSON (`<split>.json`), COCO caption
references (`<split>_coco.json`), and finally `manifest.json` (written last, so a folder
with a manifest is complete). The reading, image and writing machinery here is shared with
other datasets' formats (`sevlm.data.generic`).

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

import csv
import glob
import json
import os
import re
import shutil
import sys
import unicodedata
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

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
TRAIN_SUBSETS = {  # with v2: name -> the manifest's description of the training set
    "combined": "combined (every v2 training annotation + an equal-size random sample of v1's)",
    "all": "all (every v1 and v2 training annotation)",
}
# Above this share of absent images `prepare` stops (a wrong --images folder, a partial download)
# unless told to leave them out.
MAX_MISSING_IMAGES = 0.05
# "rest": ArtEmis's protocol sets its heavily re-annotated paintings aside in a split of their own.
EXTRA_SPLITS = ("rest",)
DATASET_FILES = (*(f"{s}.json" for s in SPLITS + EXTRA_SPLITS), *(f"{s}_coco.json" for s in SPLITS + EXTRA_SPLITS),
                 "manifest.json")
# What later stages derive from a dataset inside its folder (`sevlm evaluate`'s Emo-Align
# classifier): stale once the dataset is rebuilt, so a re-prepare drops it.
DERIVED = ("emo_classifier",)

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


@dataclass(frozen=True, slots=True)  # slots: ArtEmis has ~450k of them
class Annotation:
    art_style: str  # NFC; in a generic dataset, the image's folder ("" at the top of the images folder)
    painting: str  # NFC; in a generic dataset, the image's file name without its extension
    emotion: str  # one of EMOTIONS
    utterance: str  # as written
    explanation: str  # cleaned
    num_tokens: int
    repetition: int | None
    source: str  # ArtEmis: "v1" or "v2"; generic: the row's `source` (default: the input's file stem)
    line: int  # line of the file where the row starts
    image_file: str = ""  # generic: the image path under the images folder; ArtEmis: <style>/<painting>.jpg
    split: str | None = None  # a split the input fixes for this image (generic `split` column)

    @property
    def image_id(self) -> str:
        return f"{self.art_style}/{self.painting}" if self.art_style else self.painting

    @property
    def image_name(self) -> str:
        return self.image_file or self.image_id + IMAGE_EXT


@dataclass
class ReadResult:
    path: Path
    annotations: list[Annotation]
    rows: int  # data rows seen (blank lines excluded)
    skipped: Counter  # reason -> rows
    examples: list[str]  # first few skipped-row messages

    def reject(self, line: int, error: RowError, skip_bad_rows: bool) -> None:
        """A bad row: raise DataError naming file and line, or (skip_bad_rows) count it."""
        message = f"{self.path}: line {line}: {error}"
        if not skip_bad_rows:
            raise DataError(message + " (use --skip-bad-rows to skip such rows)")
        self.skipped[error.reason] += 1
        if len(self.examples) < 20:
            self.examples.append(message)

    def manifest_entry(self) -> dict:
        return {
            "path": str(self.path.resolve()),
            "sha256": sha256_file(self.path),
            "rows": self.rows,
            "rows_read": len(self.annotations),
            "skipped_rows": dict(sorted(self.skipped.items())),
        }


class RowError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def parse_emotion(label: str) -> str:
    emotion = " ".join(label.strip().lower().replace("_", " ").split())
    if emotion not in EMOTION_TO_INDEX:
        raise RowError("unknown_emotion", f"unknown emotion {label!r} (expected one of: {', '.join(EMOTIONS)})")
    return emotion


def parse_painting(row: dict[str, str]) -> tuple[str, str]:
    """(art_style, painting) of an ArtEmis row, NFC, checked to be file names."""
    style, painting = nfc(row["art_style"].strip()), nfc(row["painting"].strip())
    if not style or not painting:
        raise RowError("empty_name", "empty art_style or painting")
    if "/" in style or "/" in painting or style in (".", "..") or painting in (".", ".."):
        raise RowError("bad_name", f"art_style/painting {style!r}/{painting!r} is not a file name")
    return style, painting


def parse_utterance(text: str) -> str:
    if not text.strip():
        raise RowError("empty_utterance", "empty utterance")
    return text.strip()


def make_annotation(art_style: str, painting: str, emotion: str, utterance: str, source: str, line: int,
                    **extra) -> Annotation:
    tokens = tokenize(utterance)
    return Annotation(art_style=art_style, painting=painting, emotion=emotion, utterance=utterance,
                      explanation=" ".join(tokens), num_tokens=len(tokens), source=source, line=line,
                      **{"repetition": None, **extra})


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


def _check_text(path: Path, what: str, kind: str) -> str:
    """Refuse empty and binary files up front, with a message better than a csv.Error; return
    the decoded head of the file."""
    with open(path, "rb") as f:
        head = f.read(8192)
    if not head.strip():
        raise DataError(f"{path}: file is empty (expected {what})")
    if b"\x00" in head:
        raise DataError(f"{path}: not a {kind} (binary data: NUL bytes in the first 8 KB)")
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff").lstrip()
    bad = text.count("\ufffd")
    # A few stray bytes are a row problem; a head that is mostly undecodable is not text.
    if bad > max(8, len(text) // 20):
        raise DataError(f"{path}: not a {kind} (not UTF-8 text: {bad} undecodable bytes in the first 8 KB)")
    return text


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


Rows = Iterator[tuple[int, "dict[str, str] | None", "str | None"]]


def _csv_rows(f, path: Path, required: tuple, optional: tuple, what: str) -> Rows:
    """(line, {column: value}, None) per data row of a CSV, or (line, None, why) for a malformed one."""
    records = _records(f)
    try:
        line, header, err = next(records)
    except StopIteration:
        raise DataError(f"{path}: file is empty (expected {what} with a header row)") from None
    if header is None:
        raise DataError(f"{path}: line {line}: not a CSV header ({err})")
    columns = [h.strip().lower() for h in header]
    missing = [c for c in required if c not in columns]
    if missing:
        hint = " (is it tab-separated? CSVs here use commas)" if len(columns) == 1 and "\t" in columns[0] else ""
        shown = ", ".join(repr(c) for c in columns[:8]) + (", ..." if len(columns) > 8 else "")
        raise DataError(
            f"{path}: line {line}: missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(header has {shown}; {what} needs {', '.join(required)}){hint}"
        )
    col = {c: columns.index(c) for c in (*required, *optional) if c in columns}
    for line, fields, err in records:
        if fields is not None and not any(x.strip() for x in fields):
            continue  # blank line
        if fields is None:
            yield line, None, f"malformed CSV ({err})"
        elif len(fields) != len(columns):
            yield line, None, f"malformed row: {len(fields)} fields, the header has {len(columns)}"
        else:
            yield line, {c: fields[i] for c, i in col.items()}, None


def _jsonl_rows(f, required: tuple, optional: tuple) -> Rows:
    """(line, {key: text}, None) per JSON Lines object, or (line, None, why) for a malformed one."""
    for line, text in enumerate(f, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield line, None, f"not valid JSON ({e.msg})"
            continue
        if not isinstance(obj, dict):
            yield line, None, f"not a JSON object ({type(obj).__name__})"
            continue
        row, problems = {}, []
        for key in (*required, *optional):
            value = obj.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                problems.append(f"field {key!r} is not text")
            row[key] = str(value)
        problems += [f"missing field {key!r}" for key in required if key not in row]
        yield (line, None, "; ".join(problems)) if problems else (line, row, None)


def _is_jsonl(path: Path, head: str) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson") or head.startswith("{")


def read_table(
    path: str | os.PathLike,
    required: tuple[str, ...],
    parse: Callable[[dict[str, str], int], Annotation],
    skip_bad_rows: bool = False,
    progress: bool = True,
    optional: tuple[str, ...] = (),
    what: str = "an ArtEmis CSV",
    jsonl: bool = False,
) -> ReadResult:
    """Read the rows of one CSV (with a header row) or, if `jsonl`, a JSON Lines file too (one
    object per line; chosen by a .jsonl/.ndjson name or a first character "{"), turning each
    into an Annotation with `parse(row, line)`, which raises RowError for a bad row.

    A bad row raises DataError naming file and line, or, with `skip_bad_rows`, is skipped and
    counted by reason. File-level problems (missing file, not text, missing column, no rows)
    always raise.
    """
    from tqdm import tqdm

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    head = _check_text(path, what, "CSV or JSON Lines file" if jsonl else "CSV file")
    as_jsonl = jsonl and _is_jsonl(path, head)
    if not as_jsonl and head.startswith(("{", "[")):
        raise DataError(f"{path}: not a CSV file (it looks like JSON)")

    result = ReadResult(path=path, annotations=[], rows=0, skipped=Counter(), examples=[])
    # surrogateescape keeps undecodable bytes as markers so one bad row can be skipped.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        csv.field_size_limit(1 << 24)
        rows = _jsonl_rows(f, required, optional) if as_jsonl else _csv_rows(f, path, required, optional, what)
        for line, row, err in tqdm(rows, desc=f"reading {path.name}", unit=" rows", file=sys.stderr,
                                   disable=not progress):
            result.rows += 1
            try:
                if row is None:
                    raise RowError("malformed_row", err)
                if any(_has_surrogates(x) for x in row.values()):
                    raise RowError("not_utf8", "text is not valid UTF-8")
                result.annotations.append(parse(row, line))
            except RowError as e:
                result.reject(line, e, skip_bad_rows)
    if result.rows == 0:
        raise DataError(f"{path}: no data rows" + ("" if as_jsonl else " (the file has only a header)"))
    return result


def read_annotations(
    path: str | os.PathLike,
    source: str = "v1",
    skip_bad_rows: bool = False,
    progress: bool = True,
) -> ReadResult:
    """Read one ArtEmis-format CSV (v1, or v2's Contrastive.csv with `source="v2"`); see read_table."""

    def parse(row: dict[str, str], line: int) -> Annotation:
        style, painting = parse_painting(row)
        emotion, utterance = parse_emotion(row["emotion"]), parse_utterance(row["utterance"])
        repetition = _parse_repetition(row["repetition"]) if "repetition" in row else None
        return make_annotation(style, painting, emotion, utterance, source, line, repetition=repetition)

    if source == "v1":
        return read_table(path, REQUIRED_V1, parse, skip_bad_rows, progress)
    return read_table(path, REQUIRED_V2, parse, skip_bad_rows, progress, optional=("repetition",))


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


# --------------------------------------------------------------------------- splitting


def split_paintings(image_ids: Iterable[str], seed: int = 2021,
                    fractions: dict[str, float] | None = None) -> dict[str, list[str]]:
    """Split painting ids 85/5/10 (train/val/test; or `fractions`) with scikit-learn;
    deterministic in `seed`.

    Ids are sorted first so the split does not depend on the order of rows in the CSV.
    """
    from sklearn.model_selection import train_test_split

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


# --------------------------------------------------------------------------- images


class ImageIndex:
    """Finds image files under a folder whatever the Unicode normal form of their names on disk.

    macOS and some archives store names decomposed (NFD); ArtEmis names may be either. Each
    folder is listed once and its entries keyed by their NFC form.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: images folder not found")
        self._listings: dict[str, dict[str, str]] = {}

    def _listing(self, folder: str) -> dict[str, str]:
        if folder not in self._listings:
            path = self.root / folder
            self._listings[folder] = {nfc(p.name): p.name for p in path.iterdir()} if path.is_dir() else {}
        return self._listings[folder]

    def resolve(self, name: str) -> str | None:
        """The image `name` ("/"-separated, relative to root) as it is spelt on disk, or None if absent."""
        found = ""
        for part in nfc(name).split("/"):
            entry = self._listing(found).get(part)
            if entry is None:
                return None
            found = f"{found}/{entry}" if found else entry
        return found if (self.root / found).is_file() else None


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".JPG", ".JPEG", ".PNG")


def _name_hint(index: ImageIndex, needed: dict[str, str], missing: list[str]) -> str:
    """What a missing image name may have meant: the same name with an image file's suffix."""
    for image_id in missing[:20]:
        name = needed[image_id]
        for suffix in IMAGE_SUFFIXES:
            found = index.resolve(name + suffix)
            if found is not None:
                return (f"; {name!r} is not a file under {index.root} but {found!r} is: did you mean {found!r}? "
                        "(image paths need their file suffix)")
    return ""


def parse_split_fractions(text: str) -> dict[str, float]:
    """"0.8,0.1,0.1" (train,val,test) -> {"train": 0.8, "val": 0.1, "test": 0.1}, checked."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1) > 1e-6 or values[0] <= 0:
        raise ConfigError(f"--split-fractions {text!r}: expected three shares train,val,test that sum to 1, "
                          "e.g. 0.8,0.1,0.1")
    return dict(zip(SPLITS, values))


def find_images(
    index: ImageIndex, per_split: dict[str, list[Annotation]], allow_missing: bool
) -> tuple[dict[str, str], list[str]]:
    """Each needed image's on-disk name, and the ids of the absent ones, whose annotations are
    removed from `per_split`. More than MAX_MISSING_IMAGES absent raises unless `allow_missing`."""
    needed = {a.image_id: a.image_name for items in per_split.values() for a in items}
    names, missing = {}, []
    for image_id in sorted(needed):
        found = index.resolve(needed[image_id])
        if found is None:
            missing.append(image_id)
        else:
            names[image_id] = found
    if len(missing) > MAX_MISSING_IMAGES * len(needed) and not allow_missing:
        raise DataError(
            f"{index.root}: {len(missing)} of {len(needed)} images not found "
            f"({len(missing) / max(len(needed), 1):.0%}; e.g. {', '.join(missing[:3])})"
            f"{_name_hint(index, needed, missing)}; "
            f"check --images, or pass --allow-missing-images to leave their annotations out"
        )
    gone = set(missing)
    for s in per_split:
        per_split[s] = [a for a in per_split[s] if a.image_id not in gone]
    return names, missing


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
        out[image_id] = {
            "image_name": image_names.get(image_id, items[0].image_name),
            "art_style": items[0].art_style,
            "painting": items[0].painting,
            "emotions": [a.emotion for a in items],
            "explanations": [a.explanation for a in items],
            "explanations_raw": [a.utterance for a in items],
            "sources": [a.source for a in items],
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


def _only_dataset_files(folder: Path) -> list[str]:
    """The names in `folder` that a dataset folder would not hold."""
    return sorted(p.name for p in folder.iterdir() if p.name not in DATASET_FILES + DERIVED)


def check_out_dir(out_dir: Path) -> None:
    """`prepare` replaces its output folder whole: refuse one that holds anything else. Also
    removes the half-built folders that killed runs left beside it (io.atomic_dir's
    `.<name>.*.tmp`, holding nothing but dataset files)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder (--out names the dataset folder to write)")
    if out_dir.parent.is_dir():
        for stale in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*.tmp"):
            if stale.is_dir() and not _only_dataset_files(stale):  # (a swapped-out old dataset holds a folder)
                shutil.rmtree(stale, ignore_errors=True)
    if out_dir.is_dir():
        foreign = _only_dataset_files(out_dir)
        if foreign:
            raise DataError(
                f"{out_dir}: not a dataset folder (it holds {', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); `sevlm prepare` replaces its --out folder whole, "
                f"so choose a new or empty one"
            )


def write_dataset(
    out_dir: Path,
    per_split: dict[str, list[Annotation]],
    pool: dict[str, list[str]],
    image_names: dict[str, str],
    manifest: dict,
    split_counts: dict[str, dict] | None = None,
) -> dict:
    """Write the split files and `manifest` (completed with per-split counts, preceded by
    `split_counts`, and the file list) to `out_dir`; return the manifest.

    The folder is built beside `out_dir` and swapped in whole, so an interrupted run leaves the
    previous dataset as it was, never a mix of old and new split files.
    """
    grouped = {s: _group(per_split[s], pool, image_names) for s in per_split}  # SPLITS, then any EXTRA_SPLITS
    counts = {}
    for s, data in grouped.items():
        counts[s] = {
            **(split_counts or {}).get(s, {}),
            "images": len(data),
            "annotations": sum(len(v["emotions"]) for v in data.values()),
            "images_with_dominant_emotion": sum(v["dominant_emotion"] is not None for v in data.values()),
            "annotations_by_source": dict(sorted(Counter(a.source for a in per_split[s]).items())),
        }
    files = [f"{s}.json" for s in grouped] + [f"{s}_coco.json" for s in grouped]
    manifest = {**manifest, "counts": counts, "files": files}
    with atomic_dir(out_dir) as tmp:
        for s, data in grouped.items():
            write_json(tmp / f"{s}.json", data, indent=None)  # compact: ArtEmis-size splits run to 100s of MB
            write_json(tmp / f"{s}_coco.json", coco_references(data, s), indent=None)
        write_json(tmp / "manifest.json", manifest)  # last: its presence means the folder is complete
    return manifest


def manifest_base(input_format: str, results: list[ReadResult], seed: int, images_dir, short: Counter,
                  min_tokens: int, missing: list[str]) -> dict:
    """The manifest entries every input format records (write_dataset adds counts and files)."""
    import sevlm

    return {
        "format": FORMAT,
        "input_format": input_format,
        "sevlm_version": sevlm.__version__,
        "seed": seed,
        "split_fractions": SPLIT_FRACTIONS,
        "emotions": list(EMOTIONS),
        "images_dir": str(Path(images_dir).resolve()) if images_dir is not None else None,
        "skipped_rows": dict(sorted(sum((r.skipped for r in results), Counter()).items())),
        "skipped_examples": [e for r in results for e in r.examples][:20],
        "dropped_short_utterances": {
            "rule": f"fewer than {min_tokens} tokens",
            "total": sum(short.values()),
            **dict(sorted(short.items())),
        },
        "missing_images": {"count": len(missing), "examples": missing[:50]},
    }


def no_training_data(what: str, results: list[ReadResult], short: Counter, missing: list[str], min_tokens: int):
    """The DataError for a dataset whose training split came out empty, saying where rows went."""
    rows = sum(r.rows for r in results)
    bad = sum(sum(r.skipped.values()) for r in results)
    return DataError(
        f"{what}: no training annotations left (of {rows} rows: {bad} bad, {sum(short.values())} utterances "
        f"under {min_tokens} tokens, {len(missing)} images not found)"
    )


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
    from sevlm.data import artemis_protocol as ap

    artemis_csv, out_dir = Path(artemis_csv), Path(out_dir)
    if protocol not in ap.PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r} (expected one of: {', '.join(ap.PROTOCOLS)})")
    preprocessed = ap.is_preprocessed(artemis_csv)
    if preprocessed and contrastive_csv is not None:
        raise ConfigError(f"{artemis_csv} is already preprocessed (it has split and utterance_spelled columns): "
                          "it holds its own v2 rows; --contrastive-csv is for raw ArtEmis input")
    if test_csv is not None and not preprocessed:
        raise ConfigError("--test-csv goes with a preprocessed CSV (one with split and utterance_spelled columns, "
                          f"e.g. ArtEmis v2's released training CSV); {artemis_csv} has neither")
    if train_subset is not None and contrastive_csv is None:
        raise ConfigError("a training subset (--train-subset) needs ArtEmis v2 (--contrastive-csv)")
    if contrastive_csv is not None:
        train_subset = train_subset or "combined"
        if train_subset not in TRAIN_SUBSETS:
            raise ConfigError(f"unknown training subset {train_subset!r} (expected one of: {', '.join(TRAIN_SUBSETS)})")
    check_out_dir(out_dir)
    index = ImageIndex(images_dir) if images_dir is not None else None  # fail early on a bad folder

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
            per_split, protocol_report = ap.assign_artemis(every, seed, max_repetition, min_tokens,
                                                           too_long_percentile, progress)
            short = Counter({k[len("short_"):]: v for k, v in protocol_report["dropped"].items()
                             if k.startswith("short_")})
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

    image_names, missing = find_images(index, per_split, allow_missing_images) if index else ({}, [])
    if not per_split["train"]:
        raise no_training_data(str(artemis_csv), results, short, missing, min_tokens)

    manifest = {
        **manifest_base("artemis", results, seed, images_dir, short, min_tokens, missing),
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
    counts = {s: {"paintings_in_split": n} for s, n in manifest[protocol].pop("paintings_in_split", {}).items()} \
        if protocol != "sevlm" else {s: {"paintings_in_split": n} for s, n in manifest.pop("paintings_in_split").items()}
    return write_dataset(out_dir, per_split, pool, image_names, manifest, counts)


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
    per_split: dict[str, list[Annotation]] = {s: [] for s in SPLITS}
    for a in every:
        per_split[split_of.get(a.image_id, "train")].append(a)
    short = drop_short(per_split, min_tokens)
    report = {
        "set_aside": {"rule": f"repetition >= {max_repetition}", "paintings": len(heavy),
                      "annotations": set_aside_rows},
        "paintings_in_split": {s: len(splits[s]) for s in SPLITS},
    }
    return per_split, report, short


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
