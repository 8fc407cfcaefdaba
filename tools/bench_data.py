"""Benchmark the feature cache (not a test): the training path, and extraction vs cached reads.

    .venv/bin/python tools/bench_data.py [--images N] [--rounds R] [--workers 0 1 2] [--assist auto never]
                                         [--workdir DIR]
    .venv/bin/python tools/bench_data.py --checksum [--images N] [--rounds R]
    .venv/bin/python tools/bench_data.py --extract [--wikiart ../shared/data/wikiart] [--limit N]

Default: the training-path rate, in samples/s, through the train data source exactly as the
recipe builds it (`sevlm.train.data.open_source`: H5Source or ShardSource, micro-batch 32,
GPT-2 tokenizer, VAD lexicon, pair sampling, fp16 batches), with 0, 1 and 2 DataLoader workers,
for visual tokens of 49x768 and 196x768 (CLIP ViT-B/16's shape). The features come from the
tiny-random encoder at those shapes over synthetic paintings (the reader does not care what
encoded them). `--assist auto never` also times the cases with workers without the main
process's help (`data.main_assist`), side by side. Each case reads one epoch of the train
split; the rate counts the samples after the first batch (the workers' start-up is once per
epoch, negligible at ArtEmis size). Each case
runs bare (the main process only takes the batches) and with an emulated GPU step: the main
process waits `--gpu-step-ms` per batch with the CPU free, as it waits on a GPU, so in-process
reading adds to the step while workers read during it. Cases
alternate over `--rounds` rounds and the medians are reported, with the load average: on a
shared machine the figures move with what else runs.

`--checksum`: the read-speed cost of the feature cache's fletcher32 checksums: the same
features written with and without them (shape 196x768 and 49x768), read side by side in
alternating rounds, (a) row by row in random order (`FeatureStore.tokens` + `pooled`, what the
H5 reader does per sample) and (b) through the training path (0 workers, no GPU step), plus the
time of the training fingerprint (`FeatureStore.content_sha256`, one full read).

`--extract`: extraction (decode + preprocess + EfficientNet-Lite0 on CPU) on real WikiArt
paintings against reading the cached samples, and their ratio.

The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sevlm.emotions import EMOTIONS  # noqa: E402
from sevlm.features.hdf5 import H5FeatureDataset  # noqa: E402
from sevlm.features.hdf5_writer import extract_features  # noqa: E402
from sevlm.features.shard_writer import write_shards  # noqa: E402
from sevlm.features.shards import shard_pipeline  # noqa: E402
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


def extraction_benchmark(args, work: Path) -> dict:
    n_images = build_dataset(args.wikiart, work / "dataset", args.limit)
    print(f"dataset: {n_images} paintings from {args.wikiart} -> {work / 'dataset'}")

    h5 = work / "features.h5"
    if h5.exists():
        h5.unlink()
    s = extract_features(
        None,
        work / "dataset",
        "efficientnet-lite0",
        h5,
        batch_size=args.batch_size,
        num_workers=args.extract_workers,
        progress=False,
    )
    extract_ips = s["num_encoded"] / s["seconds"]
    print(
        f"extract (decode + preprocess + EfficientNet-Lite0, CPU, batch {args.batch_size}, "
        f"{args.extract_workers} decode workers): {s['num_encoded']} images in {s['seconds']:.1f} s = "
        f"{extract_ips:.1f} images/s; failed {s['num_failed']}; {h5.stat().st_size / 2**20:.0f} MiB"
    )

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
        n, sec = timed_read(
            DataLoader(
                ds, batch_size=None, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0)
            )
        )
        figures[f"hdf5_samples_per_s_{workers}w"] = round(n / sec, 1)
        print(f"read HDF5 (random order), {workers} worker(s): {n} samples in {sec:.2f} s = {n / sec:.0f} samples/s")

    best_cached = max(v for k, v in figures.items() if k.endswith("w"))
    slowest_cached = min(v for k, v in figures.items() if k.endswith("w"))
    figures["ratio_cached_vs_encode_best"] = round(best_cached / extract_ips, 1)
    figures["ratio_cached_vs_encode_slowest"] = round(slowest_cached / extract_ips, 1)
    print(
        f"cached read vs decode+encode: {figures['ratio_cached_vs_encode_slowest']}x (slowest reader) to "
        f"{figures['ratio_cached_vs_encode_best']}x (fastest reader); target >= 20x"
    )
    return figures


# ---- the training path --------------------------------------------------------------------------
SHAPES = {"49x768": 56, "196x768": 112}  # tiny-random image size giving (size / 8)^2 tokens of 768 dims


def build_features(work: Path, n_images: int, shape: str) -> dict[str, Path]:
    """Synthetic paintings -> dataset folder -> HDF5 features of `shape` -> shards (train and val)."""
    from sevlm.data.artemis import prepare_dataset
    from sevlm.demo import make_demo_data

    raw, dataset = work / "raw", work / "dataset"
    if not (dataset / "train.json").exists():
        make_demo_data(raw, n_images=n_images, seed=0, image_size=32, progress=False)
        prepare_dataset(raw / "artemis_dataset_release_v0.csv", dataset, images_dir=raw / "images", protocol="sevlm")
    h5, shards = work / f"features-{shape}.h5", work / f"shards-{shape}"
    if not h5.exists():
        extract_features(
            None,
            dataset,
            "tiny-random",
            h5,
            batch_size=64,
            progress=False,
            encoder_kwargs={"image_size": SHAPES[shape], "dim": 768},
        )
    if not (shards / "manifest.json").exists():
        for split in ("train", "val"):
            write_shards(h5, dataset, split, shards, max_samples_per_shard=256, progress=False)
    return {"dataset": dataset, "features": h5, "shards": shards}


def training_source(paths: dict[str, Path], reader: str, workers: int, micro: int, assist: str = "auto"):
    """The train data source as `TrainRecipe.setup_data` builds it."""
    from sevlm.data.vad import VADLexicon
    from sevlm.text import SequenceBuilder
    from sevlm.train.checks import feature_info
    from sevlm.train.config import DataConfig
    from sevlm.train.data import open_source
    from sevlm.vocab import load_tokenizer

    data = DataConfig(
        dataset_dir=str(paths["dataset"]),
        num_workers=workers,
        main_assist=assist,
        features=str(paths["features"]) if reader == "hdf5" else None,
        shards=str(paths["shards"]) if reader == "shards" else None,
    )
    nrc = ROOT.parent / "shared" / "assets" / "nrc-vad" / "NRC-VAD-Lexicon.txt"
    lexicon = VADLexicon.load(nrc) if nrc.exists() else VADLexicon.demo()
    builder = SequenceBuilder(load_tokenizer(), lexicon, max_len=30)
    return open_source(feature_info(data.features, data.shards), data, builder.collate, micro, 0, 1, seed=0)


def timed_epoch(source, epoch: int, step_s: float) -> float:
    """Samples/s over one epoch, from the first batch on; the main process waits `step_s` per
    batch, as it waits on a GPU's step (the CPU is free meanwhile)."""
    batches = source.epoch(epoch)
    first = next(batches)
    assert first["visual"].dtype == torch.float16
    t0, n = time.perf_counter(), 0
    for b in batches:
        n += len(b["image_ids"])
        time.sleep(step_s)
    return n / (time.perf_counter() - t0)


def training_path_benchmark(args, work: Path) -> dict:
    # (shape, reader, workers, assist): in-process reading has no assist to vary
    counts = [(w, a) for w in args.workers for a in (args.assist if w else ["-"])]
    cases = [(shape, reader, w, a) for shape in SHAPES for reader in ("hdf5", "shards") for w, a in counts]
    steps = [ms / 1000 for ms in args.gpu_step_ms]
    paths = {shape: build_features(work, args.images, shape) for shape in SHAPES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DataLoader's advice on workers vs cores
        sources = {c: training_source(paths[c[0]], c[1], c[2], args.micro, c[3] if c[2] else "auto") for c in cases}
    n = sources[cases[0]].num_images
    print(f"train split: {n} samples, micro-batch {args.micro}; {args.rounds} rounds, cases alternating")
    rates: dict = {(c, st): [] for c in cases for st in steps}
    loads = []
    runs = [(c, st) for st in steps for c in cases]
    for r in range(args.rounds):
        for c, st in runs[r % len(runs) :] + runs[: r % len(runs)]:  # a different case first each round
            rates[(c, st)].append(timed_epoch(sources[c], r, st))
        loads.append(round(os.getloadavg()[0], 2))
        print(f"round {r + 1}: load average {loads[-1]:.2f}", flush=True)
    figures = {
        "train_samples": n,
        "micro_batch": args.micro,
        "rounds": args.rounds,
        "load_average_per_round": loads,
        "samples_per_s": {},
    }
    heads = [f"{w} workers" + (f" ({a})" if w and len(args.assist) > 1 else "") for w, a in counts]
    print(
        f"\n| features | reader | GPU step | {' / '.join(heads)} (median samples/s) | slowest with workers / "
        "in-process |"
    )
    print("|---|---|---|---|---|")
    for st in steps:
        for shape in SHAPES:
            for reader in ("hdf5", "shards"):
                med = {(w, a): statistics.median(rates[((shape, reader, w, a), st)]) for w, a in counts}
                figures["samples_per_s"][f"{reader} {shape} step {st * 1000:g} ms"] = {
                    (f"{w} {a}" if w else "0"): round(m) for (w, a), m in med.items()
                }
                ratio = ""
                if (0, "-") in med and len(med) > 1:
                    worst = min(m for (w, a), m in med.items() if w and a == args.assist[0])
                    ratio = f"{worst / med[(0, '-')]:.2f}x (slowest worker count, {args.assist[0]})"
                print(
                    f"| {shape} | {reader} | {st * 1000:g} ms | {' / '.join(f'{m:.0f}' for m in med.values())} | "
                    f"{ratio} |"
                )
    return figures


def checksum_benchmark(args, work: Path) -> dict:
    """Reads of one cache with and without fletcher32 checksums, side by side (see the docstring)."""
    import numpy as np

    from sevlm.features.hdf5 import FeatureStore
    from sevlm.features.hdf5_partial import _CHECKSUM_ENV

    paths = {}
    for shape in SHAPES:
        paths[(shape, True)] = build_features(work, args.images, shape)
        plain = dict(paths[(shape, True)], features=work / f"features-{shape}-nochecksum.h5")
        if not plain["features"].exists():
            os.environ[_CHECKSUM_ENV] = "1"
            try:
                extract_features(
                    None,
                    plain["dataset"],
                    "tiny-random",
                    plain["features"],
                    batch_size=64,
                    progress=False,
                    encoder_kwargs={"image_size": SHAPES[shape], "dim": 768},
                )
            finally:
                del os.environ[_CHECKSUM_ENV]
        paths[(shape, False)] = plain
    for (shape, check), p in paths.items():
        assert FeatureStore(p["features"]).checksummed == check, p["features"]

    def rows(path) -> float:
        store = FeatureStore(path)
        order = np.random.default_rng(0).permutation(len(store))
        t0 = time.perf_counter()
        for i in order:
            store.tokens(int(i)), store.pooled(int(i))
        rate = len(order) / (time.perf_counter() - t0)
        store.close()
        return rate

    def fingerprint(path) -> float:
        store = FeatureStore(path)
        t0 = time.perf_counter()
        store.content_sha256()
        store.close()
        return time.perf_counter() - t0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sources = {k: training_source(p, "hdf5", 0, args.micro) for k, p in paths.items()}
    keys = list(paths)
    got: dict = {(k, what): [] for k in keys for what in ("rows", "train", "fingerprint")}
    loads = []
    for r in range(args.rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:  # a different case first each round
            got[(k, "rows")].append(rows(paths[k]["features"]))
            got[(k, "train")].append(timed_epoch(sources[k], r, 0.0))
            got[(k, "fingerprint")].append(fingerprint(paths[k]["features"]))
        loads.append(round(os.getloadavg()[0], 2))
        print(f"round {r + 1}: load average {loads[-1]:.2f}", flush=True)
    med = {key: statistics.median(v) for key, v in got.items()}
    n = sources[keys[0]].num_images
    print(
        f"\n{n} train samples (rows: all {len(FeatureStore(paths[keys[0]]['features']))} images); "
        f"medians of {args.rounds} rounds"
    )
    print("| features | reads | without checksum | with fletcher32 | cost |")
    print("|---|---|---|---|---|")
    figures = {"rounds": args.rounds, "load_average_per_round": loads, "cases": {}}
    for shape in SHAPES:
        for what, unit in (("rows", "rows/s"), ("train", "samples/s"), ("fingerprint", "s")):
            off, on = med[((shape, False), what)], med[((shape, True), what)]
            cost = (on / off - 1) if what == "fingerprint" else (1 - on / off)
            print(f"| {shape} | {what} ({unit}) | {off:.4g} | {on:.4g} | {cost * 100:+.1f}% |")
            figures["cases"][f"{shape} {what}"] = {
                "without": round(off, 4),
                "with": round(on, 4),
                "cost_percent": round(cost * 100, 1),
            }
    return figures


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=None, help="keep the datasets, features and shards here")
    p.add_argument("--images", type=int, default=1800, help="synthetic paintings (training path)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--assist",
        nargs="+",
        default=["auto"],
        choices=["auto", "never", "always"],
        help="data.main_assist for the cases with workers; several: each side by side (first: the ratio's)",
    )
    p.add_argument("--micro", type=int, default=32, help="micro-batch (the paper's is 32)")
    p.add_argument(
        "--gpu-step-ms",
        type=float,
        nargs="+",
        default=[0, 16],
        help="time the main process waits per batch, as on a GPU step (16 ms: 32 images at 2,000/s)",
    )
    p.add_argument("--extract", action="store_true", help="extraction vs cached reads on WikiArt instead")
    p.add_argument(
        "--checksum",
        action="store_true",
        help="the read cost of the cache's fletcher32 checksums instead (with vs without, side by side)",
    )
    p.add_argument("--wikiart", type=Path, default=ROOT.parent / "shared" / "data" / "wikiart")
    p.add_argument("--limit", type=int, default=None, help="--extract: use only the first N paintings")
    p.add_argument("--batch-size", type=int, default=32, help="--extract: encoder batch")
    p.add_argument("--extract-workers", type=int, default=2)
    args = p.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="sevlm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"load average {load0[0]:.2f} (shared machine: figures move with other jobs)"
    )
    if args.checksum:
        figures = checksum_benchmark(args, work)
    else:
        figures = extraction_benchmark(args, work) if args.extract else training_path_benchmark(args, work)
    figures["load_average_start_end"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
    figures["cpus"] = os.cpu_count()
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
