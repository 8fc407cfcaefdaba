"""Image-side retrieval of the demo over seeds x precisions, for one or more checkouts side by side.

Builds the demo's data once (`sevlm demo-data`, `prepare`, `extract`, `shard`, with this
checkout), then for every code x precision x seed trains the demo model and its no-image
control (`sevlm train --config demo ... seed=S precision=P [model.mode=none]`, in a
subprocess that imports sevlm from that checkout), embeds the test split with that checkout's
own code, and scores every run here with one scorer (`retrieval_report`, embedding
statistics included). The reference points of `tools/retrieval_reference.py` (logistic probe,
linear CLIP-style model) are computed once on the same data.

Printed: one row per run (image->emotion accuracy, the control's, image->explanation R@1/R@10,
embedding statistics of each side, the last contrastive loss), then per code x precision the
mean and min over seeds, and whether issue 19's targets hold: image->emotion >= control + 0.25
and >= majority + 0.25, image->explanation R@10 >= 2x its exact chance, image->emotion within 0.1
of the probe. The last line is one JSON object with every figure. Finished runs are kept under
`--out` and reused, so an interrupted study continues where it stopped.

    git worktree add /tmp/before <commit>
    .venv/bin/python tools/retrieval_study.py --out /tmp/study --code before=/tmp/before --code after=.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np  # noqa: E402

import sevlm  # noqa: F401  first: the passive OpenMP wait before torch loads OpenMP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_reference import reference_points  # noqa: E402

# Runs in the checkout under study: only APIs every version of sevlm has (load_run, embed_split).
EMBED = """
import sys, numpy as np
from sevlm.export import load_run
from sevlm.evaluation.embedding import embed_split
run_dir, dataset, features, out = sys.argv[1:5]
e = embed_split(load_run(run_dir), dataset, "test", features, progress=False)
np.savez(out, image_emb=e.image_emb, text_emb=e.text_emb, text_image=e.text_image,
         emotion_emb=e.emotion_emb, image_dominant=e.image_dominant, text_emotion=e.text_emotion)
"""
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env(code: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["PYTHONPATH"] = str(code)
    return env


def _call(argv: list[str], code: Path, log: Path) -> None:
    with open(log, "a", encoding="utf-8") as f:
        proc = subprocess.run([sys.executable, *argv], cwd=code, env=_env(code), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed (exit {proc.returncode}); see {log}")


def build_data(out: Path, n_images: int, seed: int) -> dict:
    from sevlm.cli import main

    d = {
        "raw": out / "demo_data",
        "dataset": out / "dataset",
        "features": out / "features.h5",
        "shards": out / "shards",
    }
    steps = [
        (
            d["raw"] / "artemis_dataset_release_v0.csv",
            ["demo-data", "--out", str(d["raw"]), "--n-images", str(n_images), "--seed", str(seed)],
        ),
        (
            d["dataset"] / "manifest.json",
            [
                "prepare",
                "--artemis-csv",
                str(d["raw"] / "artemis_dataset_release_v0.csv"),
                "--protocol",
                "sevlm",
                "--images",
                str(d["raw"] / "images"),
                "--out",
                str(d["dataset"]),
            ],
        ),
        (
            d["features"],
            [
                "extract",
                "--images",
                str(d["raw"] / "images"),
                "--dataset",
                str(d["dataset"]),
                "--encoder",
                "efficientnet-lite0",
                "--out",
                str(d["features"]),
            ],
        ),
        (
            d["shards"] / "manifest.json",
            [
                "shard",
                "--features",
                str(d["features"]),
                "--dataset",
                str(d["dataset"]),
                "--split",
                "train",
                "val",
                "--out",
                str(d["shards"]),
            ],
        ),
    ]
    for done, argv in steps:
        if not done.exists() and main(argv) != 0:
            raise SystemExit(f"sevlm {argv[0]} failed")
    return d


def last_losses(run_dir: Path, n: int = 10) -> dict:
    """Mean of the last `n` logged training steps' losses."""
    rows = [
        json.loads(line) for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    rows = [r for r in rows if "cl_loss" in r and "step" in r][-n:]
    return {
        k: float(np.mean([r[k] for r in rows if r.get(k) is not None]))
        for k in ("lm_loss", "cl_loss")
        if any(r.get(k) is not None for r in rows)
    }


def study_run(code: Path, run_dir: Path, data: dict, overrides: list[str]) -> dict:
    """Train (unless done), embed with the run's own code, score here."""
    from sevlm.evaluation.retrieval import retrieval_report

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    t0 = time.perf_counter()
    if not (run_dir / "done.json").exists():
        argv = (
            ["-m", "sevlm.cli", "train", "--resume", str(run_dir)]
            if (run_dir / "config.json").exists()
            else [
                "-m",
                "sevlm.cli",
                "train",
                "--config",
                "demo",
                "--out",
                str(run_dir),
                f"data.dataset_dir={data['dataset']}",
                f"data.shards={data['shards']}",
                *overrides,
            ]
        )
        _call(argv, code, log)
    emb = run_dir / "test_embeddings.npz"
    if not emb.exists():
        _call(["-c", EMBED, str(run_dir), str(data["dataset"]), str(data["features"]), str(emb)], code, log)
    z = np.load(emb)
    rep = retrieval_report(z["image_emb"], z["text_emb"], z["text_image"], z["emotion_emb"], z["image_dominant"])
    m = rep["model"]
    return {
        "image_to_emotion": m["image_to_emotion"]["accuracy"],
        "i2x_R@1": m["image_to_explanation"]["R@1"],
        "i2x_R@10": m["image_to_explanation"]["R@10"],
        "x2i_R@10": m["explanation_to_image"]["R@10"],
        "chance_i2x_R@10": rep["chance"]["image_to_explanation"]["R@10"],
        "stats": rep["embedding_stats"],
        "losses": last_losses(run_dir),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def check(row: dict, majority: float, probe: float) -> dict:
    return {
        "control+0.25": row["model"]["image_to_emotion"] >= row["control"]["image_to_emotion"] + 0.25,
        "majority+0.25": row["model"]["image_to_emotion"] >= majority + 0.25,
        "R@10>=2x chance": row["model"]["i2x_R@10"] >= 2 * row["model"]["chance_i2x_R@10"],
        "probe-0.1": row["model"]["image_to_emotion"] >= probe - 0.1,
    }


def _stats(s: dict) -> str:
    return f"{s['effective_rank']:.1f} / {s['mean_cosine']:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="work folder (data, runs, results); reused when it exists")
    ap.add_argument(
        "--code",
        action="append",
        default=None,
        metavar="LABEL=DIR",
        help="a checkout to study (repeatable; default: this one, as 'here')",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--n-images", type=int, default=720)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--no-control", action="store_true", help="skip the no-image control runs")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="extra training overrides for every run")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    codes = dict(c.split("=", 1) for c in (args.code or [f"here={Path(__file__).resolve().parents[1]}"]))
    data = build_data(out, args.n_images, args.data_seed)
    ref = reference_points(data["dataset"], data["features"])
    probe, majority = ref["logistic_probe"]["accuracy"], ref["majority_class"]
    print(
        f"load average {os.getloadavg()[0]:.1f}; logistic probe {probe:.3f}, linear CLIP-style "
        f"{ref['linear_clip']['model']['image_to_emotion']['accuracy']:.3f} (R@10 "
        f"{ref['linear_clip']['model']['image_to_explanation']['R@10']:.3f}), majority class {majority:.3f}",
        flush=True,
    )

    rows = []
    variants = {"model": []} if args.no_control else {"model": [], "control": ["model.mode=none"]}
    for label, code in codes.items():
        for precision in args.precisions:
            for seed in args.seeds:
                row = {"code": label, "precision": precision, "seed": seed}
                for variant, extra in variants.items():
                    run_dir = out / "runs" / label / f"{precision}-seed{seed}-{variant}"
                    row[variant] = study_run(
                        Path(code).resolve(),
                        run_dir,
                        data,
                        [f"seed={seed}", f"precision={precision}", *args.overrides, *extra],
                    )
                if "control" in row:
                    row["checks"] = check(row, majority, probe)
                rows.append(row)
                m = row["model"]
                print(
                    f"{label} {precision} seed {seed}: image->emotion {m['image_to_emotion']:.3f}"
                    + (f" (control {row['control']['image_to_emotion']:.3f})" if "control" in row else "")
                    + f", R@10 {m['i2x_R@10']:.3f}, cl_loss {m['losses'].get('cl_loss', float('nan')):.3f}, "
                    f"{m['seconds']:.0f} s",
                    flush=True,
                )

    print(
        "\n| code | precision | seed | image->emotion | control | image->expl R@1 | R@10 (chance) | "
        "image rank / mean cos | emotion rank / mean cos | explanation rank / mean cos | last cl_loss |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        m, c = r["model"], r.get("control")
        print(
            f"| {r['code']} | {r['precision']} | {r['seed']} | {m['image_to_emotion']:.3f} | "
            f"{c['image_to_emotion'] if c else float('nan'):.3f} | {m['i2x_R@1']:.3f} | "
            f"{m['i2x_R@10']:.3f} ({m['chance_i2x_R@10']:.3f}) | {_stats(m['stats']['image'])} | "
            f"{_stats(m['stats']['emotion'])} | {_stats(m['stats']['explanation'])} | "
            f"{m['losses'].get('cl_loss', float('nan')):.3f} |"
        )
    summary = {}
    print("\n| code | precision | image->emotion mean / min | control mean / max | R@10 mean / min | targets met |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label in codes:
        for precision in args.precisions:
            group = [r for r in rows if r["code"] == label and r["precision"] == precision]
            acc = [r["model"]["image_to_emotion"] for r in group]
            r10 = [r["model"]["i2x_R@10"] for r in group]
            ctl = [r["control"]["image_to_emotion"] for r in group if "control" in r]
            met = [all(r["checks"].values()) for r in group if "checks" in r]
            summary[f"{label}/{precision}"] = {
                "image_to_emotion_mean": float(np.mean(acc)),
                "image_to_emotion_min": min(acc),
                "R@10_mean": float(np.mean(r10)),
                "R@10_min": min(r10),
                "control_mean": float(np.mean(ctl)) if ctl else None,
                "control_max": max(ctl) if ctl else None,
                "runs_meeting_targets": sum(met),
            }
            print(
                f"| {label} | {precision} | {np.mean(acc):.3f} / {min(acc):.3f} | "
                + (f"{np.mean(ctl):.3f} / {max(ctl):.3f}" if ctl else "-")
                + f" | {np.mean(r10):.3f} / {min(r10):.3f} | {sum(met)} of {len(met)} |"
            )
    print(f"load average {os.getloadavg()[0]:.1f}")
    result = {
        "reference": {
            "logistic_probe": ref["logistic_probe"],
            "majority_class": majority,
            "linear_clip": ref["linear_clip"]["model"],
        },
        "rows": rows,
        "summary": summary,
    }
    (out / "study.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
