"""Helpers for the feature-cache tests: images, dataset folders, extract children, file comparison.

A plain module (not conftest.py) so that `from featurekit import ...` works whichever test folders
pytest collects together."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

EMOTION_NAMES = (
    "amusement",
    "awe",
    "contentment",
    "excitement",
    "anger",
    "disgust",
    "fear",
    "sadness",
    "something else",
)


def random_image(rng: random.Random, size=(40, 30), mode="RGB") -> Image.Image:
    arr = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def write_dataset(
    dataset_dir: Path, image_names: list[str], images_dir: Path | None, splits=("train", "val", "test"), seed=0
):
    """A minimal `sevlm prepare` folder: images dealt round-robin to the splits, 2 annotations each."""
    rng = random.Random(seed)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    per_split = {s: {} for s in splits}
    for k, name in enumerate(image_names):
        image_id = name.rsplit(".", 1)[0]
        emotions = [rng.choice(EMOTION_NAMES) for _ in range(2)]
        dist = [0.0] * 9
        for e in emotions:
            dist[EMOTION_NAMES.index(e)] += 0.5
        per_split[splits[k % len(splits)]][image_id] = {
            "image_name": name,
            "art_style": name.split("/")[0],
            "painting": image_id.split("/", 1)[1],
            "emotions": emotions,
            "explanations": [f"explanation {k} {j} of {image_id}" for j in range(2)],
            "emotion_distribution": dist,
            "dominant_emotion": emotions[0] if emotions[0] == emotions[1] else None,
        }
    for split, records in per_split.items():
        (dataset_dir / f"{split}.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    manifest = {
        "images_dir": str(images_dir) if images_dir else None,
        "counts": {s: len(r) for s, r in per_split.items()},
    }
    (dataset_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return per_split


def make_image_dataset(
    root: Path, n: int, seed: int = 2, styles: int = 3, empty: tuple[int, ...] = (), splits=("train", "val", "test")
) -> tuple[Path, Path, list[str]]:
    """n small images in `styles` folders (the indices in `empty` as 0-byte files) and a dataset folder."""
    rng = random.Random(seed)
    images_dir, dataset_dir = root / "images", root / "ds"
    names = []
    for k in range(n):
        name = f"S{k % styles}/p{k:02d}.jpg"
        (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
        if k in empty:
            (images_dir / name).write_bytes(b"")
        else:
            random_image(rng).save(images_dir / name)
        names.append(name)
    write_dataset(dataset_dir, names, images_dir, splits=splits)
    return images_dir, dataset_dir, sorted(names)


def assert_same_feature_files(a: Path, b: Path, ignore_attrs: tuple[str, ...] = ()) -> None:
    """Equal names, rows, dtypes, chunking, failures and attributes (values compared exactly)."""
    import h5py

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for name in ("tokens", "pooled", "names", "failed/names", "failed/reasons"):
            assert fa[name].dtype == fb[name].dtype and fa[name].chunks == fb[name].chunks, name
            np.testing.assert_array_equal(fa[name][()], fb[name][()], err_msg=name)
        keys = set(fa.attrs) | set(fb.attrs)
        for k in sorted(keys - set(ignore_attrs)):
            np.testing.assert_array_equal(fa.attrs.get(k), fb.attrs.get(k), err_msg=k)


ROOT = Path(__file__).resolve().parents[2]

_EXTRACT_CHILD = """
import sys
from sevlm.features.hdf5_writer import extract_features
images, dataset, out, workers, rank, world_size = sys.argv[1:]
extract_features(images, dataset, "tiny-random", out, batch_size=2, num_workers=int(workers), rank=int(rank),
                 world_size=int(world_size), progress=False)
"""


def start_extract(
    images_dir, dataset_dir, out, workers: int = 0, delay: float = 0.3, rank: int = 0, world_size: int = 1
) -> subprocess.Popen:
    """`extract` (tiny-random, batches of 2) in a child process, sleeping `delay` s after each batch."""
    env = dict(os.environ, SEVLM_EXTRACT_TEST_DELAY=str(delay), PYTHONPATH=str(ROOT))
    args = [str(images_dir), str(dataset_dir), str(out), str(workers), str(rank), str(world_size)]
    return subprocess.Popen(
        [sys.executable, "-c", _EXTRACT_CHILD, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_for_progress(child: subprocess.Popen, partial: Path, images: int, timeout: float = 90) -> None:
    """Return once the partial file that `child` writes records `images` images done."""
    import h5py

    deadline = time.time() + timeout
    while time.time() < deadline and child.poll() is None:
        try:
            with h5py.File(partial, "r", locking=False) as f:
                if int(f.attrs["n_done"]) >= images:
                    return
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    child.kill()
    raise AssertionError(
        f"the child never reached {images} images (rc {child.wait()}): {child.stderr.read().decode()[-2000:]}"
    )


def kill_9_after(child: subprocess.Popen, partial: Path, images: int) -> list:
    """SIGKILL `child` once it has recorded `images` images; returns its descendants (its
    DataLoader workers, as psutil processes) at that moment."""
    from tests.train.runkit import descendants

    try:
        wait_for_progress(child, partial, images)
        workers = descendants(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    return workers


def flip_token_bytes(path, row: int, n: int = 200) -> str:
    """XOR `n` bytes inside the tokens chunk of `row` (in place, same size); returns its image name."""
    import h5py

    with h5py.File(path, "r") as f:
        offset = f["tokens"].id.get_chunk_info(row).byte_offset
        name = f["names"][row]
    with open(path, "r+b") as fh:
        fh.seek(offset + 64)
        data = bytearray(fh.read(n))
        fh.seek(offset + 64)
        fh.write(bytes(b ^ 0xFF for b in data))
    return name.decode() if isinstance(name, bytes) else name
