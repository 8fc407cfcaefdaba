"""`sevlm demo`: the whole pipeline on built-in synthetic data, on a laptop, offline.

Each stage is one `sevlm` subcommand, run through the same entry point a user types, and is
skipped when its output already exists (every output is written atomically, so an existing
file is a finished one). A second run therefore reuses the cached steps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sevlm.errors import SevlmError

HELP = "run the whole pipeline (data, features, training, evaluation, retrieval) on demo data"
EXAMPLES = """\
  sevlm demo                       # everything into ./demo_out
  sevlm demo --out /tmp/d --n-images 300 schedule.max_steps=100
  sevlm demo --images /data/wikiart   # real paintings, synthetic annotations
"""


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--n-images", type=int, default=720, help="number of demo paintings (default: 720)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", default=None, help="draw the pictures from real paintings in DIR instead")
    p.add_argument("--encoder", default="efficientnet-lite0", help="image encoder (default: efficientnet-lite0)")
    p.add_argument("--config", default="demo", help="training config name or file (default: demo)")
    p.add_argument("--no-control", action="store_true", help="skip the no-image control model")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides")


def _stage(name: str, done: Path | None, argv: list[str], timings: dict) -> bool:
    """Run one stage unless its output exists; True when it ran."""
    from sevlm.cli import main

    if done is not None and done.exists():
        print(f"[demo] {name}: cached ({done})", flush=True)
        timings[name] = 0.0
        return False
    print(f"[demo] {name}: sevlm {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    rc = main(argv)
    timings[name] = round(time.perf_counter() - t0, 1)
    if rc != 0:
        raise SevlmError(f"stage {name!r} failed (exit code {rc}); rerun `sevlm demo` to resume from it")
    return True


def build_demo_data(
    out: Path, n_images: int, seed: int, images: str | None, encoder: str, timings: dict
) -> tuple[Path, Path, Path]:
    """The demo's data stages into `out` (each skipped when done): -> (dataset, features, train shards)."""
    raw, dataset = out / "demo_data", out / "dataset"
    features, shards = out / "features.h5", out / "shards"

    argv = ["demo-data", "--out", str(raw), "--n-images", str(n_images), "--seed", str(seed)]
    if images:
        argv += ["--images", images]
    _stage("demo-data", raw / "artemis_dataset_release_v0.csv", argv, timings)
    _stage(
        "prepare",
        dataset / "manifest.json",
        # the synthetic demo keeps sevlm's own text protocol (its utterances need no spelling)
        [
            "prepare",
            "--artemis-csv",
            str(raw / "artemis_dataset_release_v0.csv"),
            "--protocol",
            "sevlm",
            "--images",
            str(raw / "images"),
            "--out",
            str(dataset),
        ],
        timings,
    )
    _stage(
        "extract",
        features,
        [
            "extract",
            "--images",
            str(raw / "images"),
            "--dataset",
            str(dataset),
            "--encoder",
            encoder,
            "--out",
            str(features),
        ],
        timings,
    )
    # training reads one source, validation included: the shards of train and val
    _stage(
        "shard",
        shards / "manifest.json",
        [
            "shard",
            "--features",
            str(features),
            "--dataset",
            str(dataset),
            "--split",
            "train",
            "val",
            "--out",
            str(shards),
        ],
        timings,
    )
    return dataset, features, shards


def run(args) -> int:
    from sevlm.train.run_folder import CONFIG_FILE, DONE_FILE

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    dataset, features, shards = build_demo_data(out, args.n_images, args.seed, args.images, args.encoder, timings)

    runs = {"model": (out / "run", [])}
    if not args.no_control:
        runs["no_image_control"] = (out / "run_no_image", ["model.mode=none"])
    results: dict = {"out": str(out)}
    for key, (run_dir, extra) in runs.items():
        overrides = [
            f"data.dataset_dir={dataset}",
            f"data.shards={shards}",  # generate and retrieve read the test split from the cache it names
            *args.overrides,
            *extra,
        ]
        # A training run that died part-way resumes from its last finished checkpoint (or starts over).
        train_argv = (
            ["train", "--resume", str(run_dir)]
            if (run_dir / CONFIG_FILE).exists()
            else ["train", "--config", args.config, "--out", str(run_dir), *overrides]
        )
        preds = run_dir / "predictions_test.jsonl"
        report = run_dir / "report" / "REPORT.json"
        retrieval = run_dir / "retrieval_test.json"
        if _stage(f"train[{key}]", run_dir / DONE_FILE, train_argv, timings):
            for stale in (preds, report, retrieval):  # outputs of an earlier, unfinished model
                stale.unlink(missing_ok=True)
        _stage(
            f"generate[{key}]",
            preds,
            ["generate", "--run", str(run_dir), "--split", "test", "--out", str(preds)],
            timings,
        )
        _stage(
            f"evaluate[{key}]",
            report,
            [
                "evaluate",
                "--predictions",
                str(preds),
                "--references",
                str(dataset / "test.json"),
                "--dataset",
                str(dataset),
                "--vad-lexicon",
                "demo",
                "--out",
                str(report),
            ],
            timings,
        )
        _stage(
            f"retrieve[{key}]",
            retrieval,
            ["retrieve", "--run", str(run_dir), "--split", "test", "--out", str(retrieval)],
            timings,
        )
        entry = json.loads(report.read_text(encoding="utf-8"))
        entry["retrieval"] = json.loads(retrieval.read_text(encoding="utf-8"))
        entry["report_markdown"] = str(report.with_suffix(".md"))
        results[key] = entry

    main_report = results.pop("model")
    summary = {**main_report, "no_image_control": results.get("no_image_control"), "timings_s": timings}
    from sevlm.io import write_json

    write_json(out / "results.json", summary)
    _print_table(summary)
    print(f"\nMarkdown report: {main_report['report_markdown']}")
    print(f"All results:     {out / 'results.json'}")
    return 0


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _retrieval_figure(report: dict, *path: str, which: str = "model"):
    node = (report.get("retrieval") or {}).get(which) or {}
    for p in path:
        node = node.get(p) if isinstance(node, dict) else None
    return node


def _print_table(summary: dict) -> None:
    control = summary.get("no_image_control") or {}
    rows = [
        ("emotion accuracy", "emotion_accuracy"),
        ("emo-align", "emo_align"),
        ("BLEU-4", "BLEU-4"),
        ("METEOR", "METEOR"),
        ("ROUGE-L", "ROUGE-L"),
        ("CIDEr", "CIDEr"),
    ]
    print("\n{:<28}{:>10}{:>14}{:>10}".format("metric", "SEVLM", "no-image", "chance"))
    # Uniform guessing over the 9 classes; retrieval rows show retrieve's exact chance levels.
    chance = {"emotion_accuracy": 1 / 9, "emo_align": 1 / 9}
    for label, key in rows:
        print(
            "{:<28}{:>10}{:>14}{:>10}".format(
                label, _fmt(summary.get(key)), _fmt(control.get(key)), _fmt(chance.get(key))
            )
        )
    for label, path in [
        ("img->expl R@1", ("image_to_explanation", "R@1")),
        ("img->expl R@10", ("image_to_explanation", "R@10")),
        ("img->emotion acc", ("image_to_emotion", "accuracy")),
    ]:
        print(
            "{:<28}{:>10}{:>14}{:>10}".format(
                label,
                _fmt(_retrieval_figure(summary, *path)),
                _fmt(_retrieval_figure(control, *path)),
                _fmt(_retrieval_figure(summary, *path, which="chance")),
            )
        )
    space = (control.get("retrieval") or {}).get("embedding_space") or {}
    if space.get("image_side_trained") is False:
        print("(no-image control: no loss reads its image, so its image-side retrieval is an untrained projection)")
