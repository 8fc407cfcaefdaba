"""`make_demo_data`: the demo set on disk, in ArtEmis v1 format."""

from __future__ import annotations

import csv
import io
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sevlm.demo.crowd import crowd_emotions, write_utterance
from sevlm.demo.draw import draw_painting
from sevlm.demo.real import real_paintings
from sevlm.demo.tables import ARTISTS, GENERIC_SHAPES, LOOKS, NEIGHBOURS, STYLES, TITLES
from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError
from sevlm.io import atomic_path, write_json, write_text

CSV_NAME = "artemis_dataset_release_v0.csv"


def make_demo_data(
    out_dir: str | os.PathLike,
    n_images: int = 720,
    seed: int = 0,
    images_dir: str | os.PathLike | None = None,
    image_size: int = 224,
    progress: bool = True,
) -> dict:
    """Write the synthetic ArtEmis-format demo set to `out_dir`; returns a summary dict.

    Files: `artemis_dataset_release_v0.csv`, `images/<Style>/<painting>.jpg`, `README.txt`,
    `demo_info.json` (per painting: drawn emotion, mixed-in emotion and weight, crowd).
    """
    if n_images < 1:
        raise DataError(f"n_images must be at least 1, got {n_images}")
    if image_size < 16:
        raise DataError(f"image_size must be at least 16, got {image_size}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)

    if images_dir is not None:
        images_dir = Path(images_dir)
        items, emotions = real_paintings(images_dir, n_images, image_size, rng, progress)
    else:
        items, emotions = None, [EMOTIONS[i % len(EMOTIONS)] for i in rng.permutation(n_images)]

    rows, info = [], {}
    n = len(emotions)
    for i in tqdm(range(n), desc="writing demo paintings", unit=" img", file=sys.stderr, disable=not progress):
        emotion = emotions[i]
        neighbours = NEIGHBOURS[emotion]
        secondary = neighbours[int(rng.choice(len(neighbours), p=[0.5, 0.3, 0.2]))]
        mix = float(rng.uniform(0.0, 0.45))
        if items is None:
            style = STYLES[int(rng.integers(len(STYLES)))]
            painting = f"{ARTISTS[int(rng.integers(len(ARTISTS)))]}_{TITLES[int(rng.integers(len(TITLES)))]}-{i:04d}"
            img, colours = draw_painting(emotion, secondary, mix, style, image_size, rng)
            shapes = LOOKS[emotion].shapes
        else:
            style, painting, img, _, colours = items[i]
            shapes = GENERIC_SHAPES
        crowd = crowd_emotions(emotion, secondary, mix, int(rng.integers(5, 8)), rng)
        path = out_dir / "images" / style / f"{painting}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            img.save(tmp, format="JPEG", quality=90)
        for chosen in crowd:
            rows.append([style, painting, chosen, write_utterance(chosen, colours, shapes, rng), len(crowd)])
        info[f"{style}/{painting}"] = {
            "drawn_emotion": emotion,
            "mixed_emotion": secondary,
            "mix": round(mix, 4),
            "crowd": crowd,
            "colours": colours,
        }

    source = "real paintings from " + str(images_dir.resolve()) if items is not None else "procedurally drawn pictures"
    write_text(out_dir / "README.txt", _README.format(n=n, rows=len(rows), seed=seed, source=source, size=image_size))
    # The drawn emotion has more votes than any other (a tie is not a majority; ties once
    # went by set order, so the figure changed with PYTHONHASHSEED).
    majority_ok = sum(_most_votes(v["crowd"]) == v["drawn_emotion"] for v in info.values())
    summary = {
        "synthetic": True,
        "out_dir": str(out_dir.resolve()),
        "csv": CSV_NAME,
        "images": n,
        "annotations": len(rows),
        "seed": seed,
        "image_size": image_size,
        "source": source,
        "crowd_agrees_with_drawn": round(
            sum(c == v["drawn_emotion"] for v in info.values() for c in v["crowd"]) / len(rows), 4
        ),
        "majority_is_drawn": round(majority_ok / n, 4),
    }
    write_json(out_dir / "demo_info.json", {**summary, "paintings": info})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["art_style", "painting", "emotion", "utterance", "repetition"])
    writer.writerows(rows)
    write_text(out_dir / CSV_NAME, buf.getvalue())  # last: the CSV's presence means the set is complete
    return summary


def _most_votes(crowd: list[str]) -> str | None:
    """The emotion with the most votes, or None on a tie."""
    top = Counter(crowd).most_common(2)
    return top[0][0] if len(top) == 1 or top[0][1] > top[1][1] else None


_README = """SYNTHETIC DEMO DATA - NOT ArtEmis, NOT real annotations.

Made by `sevlm demo-data` (seed {seed}) from {source}, {size}x{size} pixels.
{n} pictures, {rows} simulated annotations, in the ArtEmis v1 CSV format
(artemis_dataset_release_v0.csv: art_style, painting, emotion, utterance, repetition)
so that `sevlm prepare --artemis-csv artemis_dataset_release_v0.csv --images images`
reads it like the real dataset.

Every picture was made for one emotion (its palette, brightness, texture and motif, with
a second confusable emotion mixed in); 5-7 simulated annotators chose an emotion (mostly
that one, otherwise a confusable one) and wrote an explanation from templates naming the
picture's colours and shapes. demo_info.json records the emotion each picture was made for.
Style names starting with "Synthetic_" mark drawn pictures. Nothing here says anything
about real people's responses to art.
"""
