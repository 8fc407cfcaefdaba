"""Benchmark the feature cache on real paintings (not a test).

    .venv/bin/python tools/bench_data.py [--wikiart ../shared/data/wikiart] [--limit N] [--workdir DIR]

Builds a dataset folder for the WikiArt images in a temporary folder, then measures:
  - extraction: images/s decoding + preprocessing + encoding with EfficientNet-Lite0 on CPU
    (this is also what re-encoding every image at every step would cost);
  - reading the cache: samples/s from WebDataset shards and from the HDF5 store, with 1 and
    2 DataLoader workers, each sample a float32 tokens [49, 1280] tensor plus annotations;
  - the ratio cached read / (decode + encode).
The last line printed is a JSON object with the figures. CPU load is printed too: on a shared
machine the figures move with what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sevlm.constants import EMOTIONS  # noqa: E402
from sevlm.features.hdf5 import H5FeatureDataset, extract_features  # noqa: E402
from sevlm.features.shards import shard_pipeline, write_shards  # noqa: E402
from sevlm.io import write_json  # noqa: E402


def build_dataset(wikiart: Path, out: Path, limit: int | None, seed: int = 0) -> int:
    """All paintings go to train (the split being read), every 20th to val: enough to exercise the union."""
    names = sorted(str(p.relative_to(wikiart)) for p in wikiart.glob("*/*.jpg"))
    if limit:
        names = names[:limit]
    rng = random.Random(seed)
    splits = {"train": {}, "val": {}}
    for k, name in enumerate(names):
        image_id = name.rsplit(".", 1)[0]
        emotions = [rng.choice(EMOTIONS) for _ in range(5)]
        dist = [emotions.count(e) / 5 for e in EMOTIONS]
        rec = {
            "image_name": name,
            "emotions": emotions,
            "explanations": [f"the colours of {image_id} make me feel {e}" for e in emotions],
            "emotion_distribution": dist,
            "dominant_emotion": max(EMOTIONS, key=emotions.count) if max(dist) >= 0.5 else None,
        }
        splits["val" if k % 20 == 19 else "train"][image_id] = rec
    for split, recs in splits.items():
        write_json(out / f"{split}.json", recs, indent=None)
    write_json(out / "manifest.json", {"images_dir": str(wikiart.resolve()), "note": "bench_data.py"})
    return len(names)


def timed_read(loader) -> tuple[int, float]:
    t0, n = time.perf_counter(), 0
    for sample in loader:
        n += 1
        assert sample["tokens"].dtype == torch.float32
    return n, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wikiart", type=Path, default=ROOT.parent / "shared" / "data" / "wikiart")
    p.add_argument("--limit", type=int, default=None, help="use only the first N paintings (quick runs)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the dataset, features and shards here")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--extract-workers", type=int, default=2)
    args = p.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="sevlm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {load0[0]:.2f} (shared machine: figures move with other jobs)")
    n_images = build_dataset(args.wikiart, work / "dataset", args.limit)
    print(f"dataset: {n_images} paintings from {args.wikiart} -> {work / 'dataset'}")

    h5 = work / "features.h5"
    if h5.exists():
        h5.unlink()
    s = extract_features(None, work / "dataset", "efficientnet-lite0", h5, batch_size=args.batch_size,
                         num_workers=args.extract_workers, progress=False)
    extract_ips = s["num_encoded"] / s["seconds"]
    print(f"extract (decode + preprocess + EfficientNet-Lite0, CPU, batch {args.batch_size}, "
          f"{args.extract_workers} decode workers): {s['num_encoded']} images in {s['seconds']:.1f} s = "
          f"{extract_ips:.1f} images/s; failed {s['num_failed']}; {h5.stat().st_size / 2**20:.0f} MiB")

    t0 = time.perf_counter()
    entry = write_shards(h5, work / "dataset", "train", work / "shards", max_samples_per_shard=256, progress=False)
    print(f"shard: {entry['num_samples']} samples in {entry['num_shards']} shards, {time.perf_counter() - t0:.1f} s")

    figures = {"images": n_images, "extract_images_per_s": round(extract_ips, 2)}
    for workers in (1, 2):
        pipe = shard_pipeline(work / "shards", "train", shuffle=True, seed=0)
        n, sec = timed_read(DataLoader(pipe, batch_size=None, num_workers=workers))
        figures[f"shards_samples_per_s_{workers}w"] = round(n / sec, 1)
        print(f"read shards, {workers} worker(s): {n} samples in {sec:.2f} s = {n / sec:.0f} samples/s")
        ds = H5FeatureDataset(h5, work / "dataset", "train")
        n, sec = timed_read(DataLoader(ds, batch_size=None, shuffle=True, num_workers=workers,
                                       generator=torch.Generator().manual_seed(0)))
        figures[f"hdf5_samples_per_s_{workers}w"] = round(n / sec, 1)
        print(f"read HDF5 (random order), {workers} worker(s): {n} samples in {sec:.2f} s = {n / sec:.0f} samples/s")

    best_cached = max(v for k, v in figures.items() if k.endswith("w"))
    slowest_cached = min(v for k, v in figures.items() if k.endswith("w"))
    figures["ratio_cached_vs_encode_best"] = round(best_cached / extract_ips, 1)
    figures["ratio_cached_vs_encode_slowest"] = round(slowest_cached / extract_ips, 1)
    figures["load_average_start_end"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
    figures["cpus"] = os.cpu_count()
    print(f"cached read vs decode+encode: {figures['ratio_cached_vs_encode_slowest']}x (slowest reader) to "
          f"{figures['ratio_cached_vs_encode_best']}x (fastest reader); target >= 20x")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
