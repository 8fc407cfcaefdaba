"""The dataset folder `sevlm prepare` writes and every later stage reads (its layout is in
docs/DESIGN.md): the split names and default shares, the writer (`write_dataset`, built
beside `--out` and swapped in whole), the COCO references, the manifest, and the readers
(`load_split`, `load_split_records`, `dataset_image_names`, `dataset_images_dir`).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import sevlm
from sevlm.data.table import Annotation, ReadResult
from sevlm.emotions import EMOTIONS, dominant_emotion, emotion_distribution
from sevlm.errors import DataError
from sevlm.io import atomic_dir, read_json, sha256_file, write_json

FORMAT = "sevlm-artemis-dataset/1"
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.85, "val": 0.05, "test": 0.10}
# "rest": ArtEmis's protocol sets its heavily re-annotated paintings aside in a split of their own.
EXTRA_SPLITS = ("rest",)
DATASET_FILES = (
    *(f"{s}.json" for s in SPLITS + EXTRA_SPLITS),
    *(f"{s}_coco.json" for s in SPLITS + EXTRA_SPLITS),
    "manifest.json",
)
# What later stages derive from a dataset inside its folder (`sevlm evaluate`'s Emo-Align
# classifier): stale once the dataset is rebuilt, so a re-prepare drops it.
DERIVED = ("emo_classifier",)


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
            annotations.append({"id": len(annotations), "image_id": coco_id, "caption": caption, "emotion": emotion})
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


def manifest_base(
    input_format: str,
    results: list[ReadResult],
    seed: int,
    images_dir,
    short: Counter,
    min_tokens: int,
    missing: list[str],
) -> dict:
    """The manifest entries every input format records (write_dataset adds counts and files)."""
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


# --------------------------------------------------------------------------- reading


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


def load_split_records(dataset_dir: str | Path, split: str) -> dict[str, dict]:
    """`<dataset_dir>/<split>.json` -> {image_id: record}; DataError naming the file if absent/bad."""
    records = load_split(dataset_dir, split)
    for image_id, rec in records.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("image_name"), str):
            raise DataError(f"{Path(dataset_dir) / f'{split}.json'}: record {image_id!r} has no string 'image_name'")
    return records


def dataset_image_names(dataset_dir: str | Path) -> list[str]:
    """Sorted union of image_name over the splits present: each image is encoded once."""
    names: set[str] = set()
    found = []
    for split in SPLITS:
        if (Path(dataset_dir) / f"{split}.json").exists():
            found.append(split)
            names.update(rec["image_name"] for rec in load_split_records(dataset_dir, split).values())
    if not found:
        raise DataError(f"{dataset_dir}: no split file ({', '.join(s + '.json' for s in SPLITS)}) found")
    return sorted(names)


def image_list_sha256(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def dataset_manifest_sha256(dataset_dir: str | Path) -> str | None:
    path = Path(dataset_dir) / "manifest.json"
    return sha256_file(path) if path.exists() else None


def dataset_images_dir(dataset_dir: str | Path) -> Path:
    """The image folder recorded by `sevlm prepare` in manifest.json (the default for --images)."""
    path = Path(dataset_dir) / "manifest.json"
    images_dir = read_json(path).get("images_dir") if path.exists() else None
    if not images_dir:
        raise DataError(f"{path}: no 'images_dir' recorded; pass the image folder explicitly (--images DIR)")
    return Path(images_dir)


def resolve_image(images_dir: Path, name: str) -> Path | None:
    """images_dir/name, also trying the NFC and NFD spellings (macOS and some archives store NFD)."""
    for variant in dict.fromkeys((name, unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name))):
        path = images_dir / variant
        if path.is_file():
            return path
    return None
