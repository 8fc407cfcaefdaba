"""Annotation tables in: CSV or JSON Lines rows -> `Annotation`s, and their images found on disk.

What every input format shares (`sevlm.data.artemis`, `sevlm.data.generic`): the row readers
(`read_table`; a bad row raises DataError naming file and line, or is skipped and counted), the
explanation's word tokens (`tokenize`), and `ImageIndex` / `find_images`, which find images
whatever the Unicode normal form of their names on disk.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import unicodedata
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from sevlm.emotions import EMOTION_TO_INDEX, EMOTIONS
from sevlm.errors import DataError
from sevlm.io import sha256_file

IMAGE_EXT = ".jpg"
# Above this share of absent images `prepare` stops (a wrong --images folder, a partial download)
# unless told to leave them out.
MAX_MISSING_IMAGES = 0.05

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


def parse_utterance(text: str) -> str:
    if not text.strip():
        raise RowError("empty_utterance", "empty utterance")
    return text.strip()


def make_annotation(
    art_style: str, painting: str, emotion: str, utterance: str, source: str, line: int, **extra
) -> Annotation:
    tokens = tokenize(utterance)
    return Annotation(
        art_style=art_style,
        painting=painting,
        emotion=emotion,
        utterance=utterance,
        explanation=" ".join(tokens),
        num_tokens=len(tokens),
        source=source,
        line=line,
        **{"repetition": None, **extra},
    )


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
        if (
            len(taken) > 1
            and width is not None
            and not (
                fields is not None
                and len(fields) == width
                and _complete_row(taken, width)
                and not any(_complete_row([t], width) for t in taken[1:])
            )
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
        for line, row, err in tqdm(
            rows, desc=f"reading {path.name}", unit=" rows", file=sys.stderr, disable=not progress
        ):
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


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


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
                return (
                    f"; {name!r} is not a file under {index.root} but {found!r} is: did you mean {found!r}? "
                    "(image paths need their file suffix)"
                )
    return ""


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
