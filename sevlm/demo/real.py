"""The real-paintings mode: pictures from a folder of paintings (e.g. WikiArt), each given an
emotion from its measured brightness, saturation, warmth, contrast and edges."""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from sevlm.demo.tables import HUE_NAMES, PROTOTYPES
from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError


def _square(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    m = min(w, h)
    img = img.crop(((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m))
    return img.resize((size, size), Image.BICUBIC)


def measure(img: Image.Image) -> tuple[np.ndarray, list[str]]:
    """(brightness, saturation, warmth, contrast, edges) and the picture's main colour names."""
    small = np.asarray(img.convert("RGB").resize((64, 64), Image.BILINEAR)).astype(np.float32) / 255
    hsv = np.asarray(img.convert("RGB").resize((64, 64), Image.BILINEAR).convert("HSV")).astype(np.float32)
    h, s, v = hsv[..., 0] * 360 / 255, hsv[..., 1] / 255, hsv[..., 2] / 255
    warm = ((h < 70) | (h > 330)).astype(np.float32)
    warmth = float((s * (2 * warm - 1)).mean())
    grey = small.mean(-1)
    edges = float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())
    feats = np.array([v.mean(), s.mean(), warmth, v.std(), edges], dtype=np.float64)
    # Name each pixel's colour; keep the two most frequent.
    limits = np.array([lim for lim, _ in HUE_NAMES])
    names = np.array([n for _, n in HUE_NAMES], dtype=object)[np.searchsorted(limits, h, side="right")]
    names[s < 0.25] = "grey"
    names[(s < 0.25) & (v > 0.8)] = "white"
    names[(s >= 0.25) & (v < 0.6) & ((h < 50) | (h > 340))] = "brown"
    names[v < 0.2] = "black"
    labels, counts = np.unique(names.astype(str), return_counts=True)
    return feats, [str(labels[i]) for i in np.argsort(-counts, kind="stable")[:3]]


def _assign_emotions(feats: np.ndarray) -> list[str]:
    """Balanced nearest-prototype assignment over standardised features (each class gets ~n/9)."""
    z = (feats - feats.mean(0)) / (feats.std(0) + 1e-8)  # (N, 5)
    protos = np.array([PROTOTYPES[e] for e in EMOTIONS])  # (9, 5)
    dist = ((z[:, None, :] - protos[None]) ** 2).sum(-1)  # (N, 9)
    cap = int(np.ceil(len(z) / len(EMOTIONS)))
    taken = np.zeros(len(EMOTIONS), int)
    out = [None] * len(z)
    for flat in np.argsort(dist, axis=None, kind="stable"):
        i, k = divmod(int(flat), len(EMOTIONS))
        if out[i] is None and taken[k] < cap:
            out[i], taken[k] = EMOTIONS[k], taken[k] + 1
    return out


def _list_images(images_dir: Path) -> list[tuple[str, Path]]:
    found = []
    for style in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        for f in sorted(style.iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                found.append((unicodedata.normalize("NFC", style.name), f))
    return found


def real_paintings(
    images_dir: Path, n_images: int, image_size: int, rng, progress: bool = True
) -> tuple[list, list[str]]:
    """Up to `n_images` paintings picked from `images_dir/<Style>/*`, squared to `image_size`:
    [(style, painting, picture, features, colour names)] and the emotion given to each."""
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images folder not found")
    pool = _list_images(images_dir)
    if not pool:
        raise DataError(f"{images_dir}: no <Style>/<painting>.jpg images found")
    picked = [pool[i] for i in sorted(rng.permutation(len(pool))[: min(n_images, len(pool))])]
    items = []
    for style, path in tqdm(picked, desc="measuring paintings", unit=" img", file=sys.stderr, disable=not progress):
        try:
            with Image.open(path) as im:
                img = _square(im.convert("RGB"), image_size)
        except OSError as e:
            raise DataError(f"{path}: cannot read image ({e})") from None
        feats, colour_names = measure(img)
        items.append((style, unicodedata.normalize("NFC", path.stem), img, feats, colour_names))
    return items, _assign_emotions(np.stack([it[3] for it in items]))
