"""Benchmark: the single-machine path at ArtEmis size and 5x that (not a test).

For each scale (default 1x and 5x), in a work folder:
  1. writes a synthetic ArtEmis v1 CSV (80,031 paintings and 454,684 rows at 1x: at least 5
     annotations per painting, 9 emotions, 6-14-word utterances; vectorised, seconds);
  2. `sevlm prepare` of that CSV;
  3. `sevlm evaluate` of the test split, with one synthetic prediction per test painting
     (coco metrics incl. METEOR's Java, no Emo-Align classifier);
  4. `sevlm retrieve` over the test split (every image against every explanation). It needs a
     model and features: a TINY RANDOM model (1 layer, 32-d; its scores mean nothing) and
     tiny-random features of the test paintings, extracted from small generated JPEGs
     (setup, timed apart from the table).
Each step runs as its own process; wall time and peak memory (the largest resident set of the
process or anything it waited for, e.g. METEOR's Java) are measured. The load average is printed with
each step: on a shared machine the figures move with what else runs. The last line printed is
one JSON object with every figure.

    nice .venv/bin/python tools/bench_scale.py --scales 1 5 --workdir /tmp/bench_scale
    .venv/bin/python tools/bench_scale.py --scales 0.02 --workdir /tmp/bs   # quick check
    .venv/bin/python tools/bench_scale.py --scales 1 --protocols sevlm artemis --prepare-only --workdir /tmp/bp
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np  # noqa: E402

import sevlm  # noqa: F401  first: it sets the passive OpenMP wait before torch loads OpenMP
from sevlm.emotions import EMOTIONS  # the 9 classes, as ArtEmis's CSV writes them

ARTEMIS_PAINTINGS, ARTEMIS_ROWS = 80_031, 454_684
STYLES = (
    "Impressionism Realism Romanticism Expressionism Post_Impressionism Baroque Art_Nouveau_Modern "
    "Symbolism Abstract_Expressionism Cubism Naive_Art_Primitivism Northern_Renaissance Rococo Fauvism "
    "Minimalism Pop_Art Color_Field_Painting Early_Renaissance High_Renaissance Mannerism_Late_Renaissance "
    "Pointillism Ukiyo_e Contemporary_Realism New_Realism Synthetic_Cubism Analytical_Cubism Action_painting"
).split()
WORDS = (
    "the a sky sea tree woman man light dark colour colours red blue green calm storm face eyes sad happy bright "
    "lonely strange beautiful peaceful violent soft warm cold shadow flowers house field water night feels looks "
    "like makes me think of and it her his with in on"
).split()
EMOTION_PRIOR = np.array([0.07, 0.14, 0.26, 0.12, 0.02, 0.04, 0.13, 0.10, 0.12])  # roughly ArtEmis's


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# What ArtEmis's text preprocessing meets in real utterances, at rough real rates: capitals and
# end punctuation, possessives and contractions, commas, quoted words, misspellings.
EXTRAS = (
    "the woman's face",
    "it's",
    "i can't",
    "don't",
    "they're",
    "a 'strange' one",
    "so, so",
    "I'm",
    "the man's hat",
    "isn't it",
)
MISSPELT = (
    "beautifull",
    "paintng",
    "lonley",
    "peacefull",
    "colours",
    "brigth",
    "dissapointing",
    "skyes",
    "sadnes",
    "melancholly",
    "wierd",
    "calmnes",
)


def utterances(rng: np.random.Generator, n: int) -> list[str]:
    lengths = rng.integers(6, 15, n)
    words = np.array(WORDS)[rng.integers(0, len(WORDS), (n, 14))]
    out = [" ".join(w[:k]) for w, k in zip(words.tolist(), lengths.tolist())]
    extra, extra_at = rng.integers(0, len(EXTRAS), n).tolist(), (rng.random(n) < 0.35).tolist()
    typo, typo_at = rng.integers(0, len(MISSPELT), n).tolist(), (rng.random(n) < 0.05).tolist()
    ends = rng.choice(["", ".", "!", "..."], n, p=[0.5, 0.35, 0.1, 0.05]).tolist()
    for i, text in enumerate(out):
        if extra_at[i]:
            text = f"{EXTRAS[extra[i]]} {text}"
        if typo_at[i]:
            text = f"{text} {MISSPELT[typo[i]]}"
        out[i] = text[0].upper() + text[1:] + ends[i]
    return out


def write_csv(path: Path, paintings: int, rows: int, seed: int) -> dict:
    """ArtEmis v1 columns; each painting gets 5 annotations, the rest are spread at random."""
    rng = np.random.default_rng(seed)
    per = np.full(paintings, 5) + np.bincount(rng.integers(0, paintings, rows - 5 * paintings), minlength=paintings)
    painting = np.repeat(np.arange(paintings), per)
    style = rng.integers(0, len(STYLES), paintings)
    emotion = rng.choice(len(EMOTIONS), size=rows, p=EMOTION_PRIOR / EMOTION_PRIOR.sum())
    text = utterances(rng, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["art_style", "painting", "emotion", "utterance", "repetition"])
        w.writerows(
            zip(
                (STYLES[style[p]] for p in painting.tolist()),
                (f"painting-{p:06d}" for p in painting.tolist()),
                (EMOTIONS[e] for e in emotion.tolist()),
                text,
                per[painting].tolist(),
            )
        )
    return {"paintings": paintings, "rows": rows, "bytes": path.stat().st_size}


# Each step runs under this small launcher: a child inherits the peak RSS of the process that
# spawned it (Linux keeps the high-water mark across vfork + exec), so spawning from this
# benchmark, which holds the CSV and a model, would report its memory, not the step's.
LAUNCHER = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)"
)


def run_step(name: str, argv: list[str], log: Path) -> dict:
    """Run `sevlm <argv>` as its own process: wall seconds, peak RSS (MiB) and the load around it."""
    before = load()
    peak = log.with_name(f".{name}.maxrss")
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ sevlm {' '.join(argv)}\n")
        out.flush()
        rc = subprocess.call(
            [sys.executable, "-c", LAUNCHER, str(peak), sys.executable, "-m", "sevlm.cli", *argv],
            stdout=out,
            stderr=out,
        )
    wall = time.perf_counter() - t0
    if rc:
        raise SystemExit(f"{name} failed (exit {rc}); see {log}")
    res = {
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(int(peak.read_text()) / 1024),
        "load_before": before,
        "load_after": load(),
    }
    print(
        f"  {name:9s} {wall:8.1f} s  {res['peak_rss_mib']:6d} MiB  load {before[0]} -> {res['load_after'][0]}",
        file=sys.stderr,
    )
    return res


def write_predictions(dataset: Path, path: Path, seed: int) -> int:
    refs = json.loads((dataset / "test.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    texts = utterances(rng, len(refs))
    emotions = rng.integers(0, len(EMOTIONS), len(refs))
    with open(path, "w", encoding="utf-8") as f:
        for image_id, text, e in zip(refs, texts, emotions.tolist()):
            f.write(json.dumps({"image_id": image_id, "emotion": EMOTIONS[e], "explanation": text}) + "\n")
    return len(refs)


def tiny_run(dataset: Path, work: Path, log: Path) -> tuple[Path, Path, dict]:
    """A tiny random model and tiny-random features of the test paintings (setup, not scored)."""
    import torch
    from PIL import Image

    from sevlm.data.vad import VADLexicon
    from sevlm.export import save_export
    from sevlm.model import SEVLM, SEVLMConfig
    from sevlm.text import SequenceBuilder
    from sevlm.vocab import load_tokenizer

    t0 = time.perf_counter()
    test_only, images = work / "test_only", work / "test_images"
    test_only.mkdir(parents=True, exist_ok=True)
    shutil.copy(dataset / "test.json", test_only / "test.json")  # extract encodes the splits present
    refs = json.loads((dataset / "test.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng(0)
    for rec in refs.values():
        target = images / rec["image_name"]
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(target)
    features = work / "test_features.h5"
    extract = (
        run_step(
            "extract",
            [
                "extract",
                "--images",
                str(images),
                "--dataset",
                str(test_only),
                "--encoder",
                "tiny-random",
                "--out",
                str(features),
            ],
            log,
        )
        if not features.exists()
        else None
    )
    tok = load_tokenizer()
    builder = SequenceBuilder(tok, VADLexicon.demo(), max_len=40)
    torch.manual_seed(0)
    cfg = dict(n_layer=1, n_embd=32, n_head=2, visual_dim=32, contrastive_dim=16, max_len=40, n_positions=64)
    model = SEVLM(SEVLMConfig(**cfg).with_token_ids(builder.ids))
    run = work / "tiny_run"
    save_export(
        run / "export",
        model,
        tok,
        {"data": {"dataset_dir": str(dataset), "features": str(features), "encoder": "tiny-random", "lexicon": "demo"}},
    )
    return run, features, {"setup_s": round(time.perf_counter() - t0, 1), "extract": extract, "model": cfg}


def bench(scale: float, work: Path, seed: int, protocols: list[str], prepare_only: bool) -> dict:
    paintings, rows = round(ARTEMIS_PAINTINGS * scale), round(ARTEMIS_ROWS * scale)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    print(f"scale {scale:g}x: {paintings:,} paintings, {rows:,} rows in {work} (log: {log})", file=sys.stderr)
    t0 = time.perf_counter()
    csv_info = write_csv(work / "artemis_dataset_release_v0.csv", paintings, rows, seed)
    csv_info["write_s"] = round(time.perf_counter() - t0, 1)
    dataset = work / "dataset"
    res: dict = {"scale": scale, "csv": csv_info}
    # Each protocol prepares the same CSV, one after the other, so their times compare.
    for protocol in protocols:
        out = dataset if protocol == protocols[0] else work / f"dataset_{protocol}"
        res[f"prepare_{protocol}"] = run_step(
            f"prepare ({protocol})",
            [
                "prepare",
                "--artemis-csv",
                str(work / "artemis_dataset_release_v0.csv"),
                "--protocol",
                protocol,
                "--out",
                str(out),
            ],
            log,
        )
    res["prepare"] = res[f"prepare_{protocols[0]}"]
    if len(protocols) > 1:
        res["prepare_ratio"] = {
            p: round(res[f"prepare_{p}"]["wall_s"] / res["prepare"]["wall_s"], 2) for p in protocols
        }
    if prepare_only:
        return res
    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    res["dataset"] = {
        s: {k: c.get(k) for k in ("images", "annotations")} for s, c in manifest.get("counts", {}).items()
    }
    n_pred = write_predictions(dataset, work / "predictions_test.jsonl", seed)
    res["evaluate"] = run_step(
        "evaluate",
        [
            "evaluate",
            "--predictions",
            str(work / "predictions_test.jsonl"),
            "--references",
            str(dataset / "test.json"),
            "--out",
            str(work / "eval" / "REPORT.json"),
        ],
        log,
    )
    res["evaluate"]["predictions"] = n_pred
    run, features, setup = tiny_run(dataset, work, log)
    res["retrieve_setup"] = setup
    res["retrieve"] = run_step(
        "retrieve",
        [
            "retrieve",
            "--run",
            str(run),
            "--split",
            "test",
            "--features",
            str(features),
            "--out",
            str(work / "retrieval.json"),
        ],
        log,
    )
    r = json.loads((work / "retrieval.json").read_text(encoding="utf-8"))["model"]["image_to_explanation"]
    res["retrieve"].update(images=r["n_queries"], explanations=r["gallery_size"])
    return res


def table(results: list[dict]) -> str:
    def cell(step: dict, what: str) -> str:
        return f"{step['wall_s']:.0f} s, {step['peak_rss_mib'] / 1024:.2f} GB ({what})"

    if "evaluate" not in results[0]:
        protocols = [k[len("prepare_") :] for k in results[0] if k.startswith("prepare_") and k != "prepare_ratio"]
        lines = [
            "| scale | rows | " + " | ".join(f"prepare --protocol {p}" for p in protocols) + " |",
            "|---|---|" + "---|" * len(protocols),
        ]
        for r in results:
            lines.append(
                f"| {r['scale']:g}x | {r['csv']['rows']:,} | "
                + " | ".join(cell(r[f"prepare_{p}"], f"{r.get('prepare_ratio', {}).get(p, 1):.2f}x") for p in protocols)
                + " |"
            )
        return "\n".join(lines)
    lines = [
        "| scale | rows | prepare | evaluate (test split) | retrieve (test split, tiny random model) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        ret, paintings, n_pred = r["retrieve"], r["csv"]["paintings"], r["evaluate"]["predictions"]
        what = f"{ret['images']:,} images x {ret['explanations']:,} explanations"
        lines.append(
            f"| {r['scale']:g}x | {r['csv']['rows']:,} | {cell(r['prepare'], f'{paintings:,} paintings')} "
            f"| {cell(r['evaluate'], f'{n_pred:,} images')} "
            f"| {cell(ret, what)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--scales", type=float, nargs="+", default=[1.0, 5.0], help="multiples of ArtEmis's size (default: 1 5)"
    )
    p.add_argument("--workdir", type=Path, required=True, help="work folder (several GB at 5x); kept for inspection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--protocols",
        nargs="+",
        choices=("artemis", "sevlm"),
        default=["artemis"],
        help="prepare the CSV with each protocol in turn (the first feeds evaluate and retrieve); default: artemis",
    )
    p.add_argument("--prepare-only", action="store_true", help="stop after prepare (to compare protocols)")
    args = p.parse_args(argv)
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        "load_before": load(),
        "runs": [],
    }
    for scale in args.scales:
        result["runs"].append(bench(scale, args.workdir / f"x{scale:g}", args.seed, args.protocols, args.prepare_only))
    result["load_after"] = load()
    print(table(result["runs"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
