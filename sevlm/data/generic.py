"""Any affective dataset: rows of (image, emotion, utterance) in, an ArtEmis-format dataset folder out.

`prepare_generic` reads one or more CSV or JSON Lines files with the columns
- `image`: the image's path under the images folder (`Impressionism/monet_x.jpg`),
- `emotion`: one of the 9 ArtEmis emotions (as ArtEmis v2 and Affection use),
- `utterance`: the explanation,
- optional `split` (train/val/test): fixes that image's split; other images are split 85/5/10,
- optional `source`: a name kept per annotation (default: the input's file stem),
and writes the same folder as `sevlm.data.artemis.prepare_dataset` (split JSONs, COCO
references, manifest), so everything downstream works on it unchanged. An image's id is its
path without the extension. Bad rows follow the ArtEmis reader's rules and messages.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path, PurePosixPath

from sevlm.data.folder import (
    SPLIT_FRACTIONS,
    SPLITS,
    check_out_dir,
    manifest_base,
    no_training_data,
    write_dataset,
)
from sevlm.data.split import drop_short, split_paintings
from sevlm.data.table import (
    Annotation,
    ImageIndex,
    ReadResult,
    RowError,
    find_images,
    make_annotation,
    nfc,
    parse_emotion,
    parse_utterance,
    read_table,
)
from sevlm.errors import ConfigError

REQUIRED = ("image", "emotion", "utterance")
OPTIONAL = ("split", "source")


def read_generic(path: str | os.PathLike, skip_bad_rows: bool = False, progress: bool = True) -> ReadResult:
    """Read one generic CSV or JSON Lines file (see the module docstring); bad rows as in read_table."""
    default_source = Path(path).stem

    def parse(row: dict[str, str], line: int) -> Annotation:
        image = nfc(row["image"].strip())
        parts = image.split("/")
        if not image or image.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise RowError("bad_name", f"image {row['image']!r} is not a path inside the images folder")
        emotion, utterance = parse_emotion(row["emotion"]), parse_utterance(row["utterance"])
        split = row.get("split", "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise RowError("bad_split", f"split {row['split']!r} is not one of: {', '.join(SPLITS)}")
        source = row.get("source", "").strip() or default_source
        folder = "/".join(parts[:-1])
        return make_annotation(
            folder, PurePosixPath(parts[-1]).stem, emotion, utterance, source, line, image_file=image, split=split
        )

    return read_table(
        path,
        REQUIRED,
        parse,
        skip_bad_rows,
        progress,
        optional=OPTIONAL,
        what="a dataset file (CSV or JSON Lines)",
        jsonl=True,
    )


def _one_split_per_image(results: list[ReadResult], skip_bad_rows: bool) -> dict[str, str]:
    """The splits the inputs fix, by image id. A row naming another split than an earlier row of
    its image, or another file with the same id, is a bad row (removed from its result)."""
    fixed: dict[str, tuple[str, str]] = {}  # image id -> (split, where)
    files: dict[str, tuple[str, str]] = {}  # image id -> (image file, where)
    for r in results:
        kept = []
        for a in r.annotations:
            where = f"{r.path.name} line {a.line}"
            try:
                file, first = files.setdefault(a.image_id, (a.image_file, where))
                if file != a.image_file:
                    raise RowError(
                        "bad_name", f"image {a.image_file!r} has the id {a.image_id!r} of {file!r} ({first})"
                    )
                if a.split is not None:
                    split, first = fixed.setdefault(a.image_id, (a.split, where))
                    if split != a.split:
                        raise RowError(
                            "split_conflict",
                            f"image {a.image_file!r} is put in split {a.split!r} but in {split!r} by {first}",
                        )
            except RowError as e:
                r.reject(a.line, e, skip_bad_rows)
                continue
            kept.append(a)
        r.annotations = kept
    return {image_id: split for image_id, (split, _) in fixed.items()}


def prepare_generic(
    inputs: list[str | os.PathLike],
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    skip_bad_rows: bool = False,
    seed: int = 2021,
    min_tokens: int = 5,
    allow_missing_images: bool = False,
    progress: bool = True,
    split_fractions: dict[str, float] | None = None,
) -> dict:
    """Turn generic annotation files into a dataset folder like `prepare_dataset`'s; returns the manifest.

    Several inputs combine into one dataset; splits are disjoint by image. `min_tokens` and
    `allow_missing_images` as for ArtEmis. `split_fractions` ({"train", "val", "test"} shares,
    default 0.85/0.05/0.10) split the images whose split no row fixes.
    """
    if not inputs:
        raise ConfigError("no input files (--input FILE, repeatable)")
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    index = ImageIndex(images_dir)  # fail early on a bad folder
    results = [read_generic(p, skip_bad_rows, progress) for p in inputs]
    split_of = _one_split_per_image(results, skip_bad_rows)
    every = [a for r in results for a in r.annotations]
    fixed = len(split_of)
    random = split_paintings({a.image_id for a in every} - set(split_of), seed, split_fractions)
    split_of.update({image_id: s for s, ids in random.items() for image_id in ids})

    per_split: dict[str, list[Annotation]] = {s: [] for s in SPLITS}
    pool: dict[str, list[str]] = defaultdict(list)
    for a in every:
        per_split[split_of[a.image_id]].append(a)
        pool[a.image_id].append(a.emotion)
    short = drop_short(per_split, min_tokens)
    image_names, missing = find_images(index, per_split, allow_missing_images)
    if not per_split["train"]:
        raise no_training_data(", ".join(str(p) for p in inputs), results, short, missing, min_tokens)

    manifest = {
        **manifest_base("generic", results, seed, images_dir, short, min_tokens, missing),
        "split_fractions": split_fractions or SPLIT_FRACTIONS,
        "training_set": "all",
        "sources": {str(r.path): r.manifest_entry() for r in results},
        "images_with_fixed_split": fixed,
    }
    return write_dataset(out_dir, per_split, pool, image_names, manifest)
