"""Reference points for image-side retrieval, printed beside runs: the two simple models of
`sevlm.evaluation.reference` (a logistic-regression probe and a linear CLIP-style model of the
pooled image features; what they are and why: that module's docstring), trained on the train
split and scored on a test split exactly as `sevlm retrieve` scores a run.

With `--run RUN ...` each run's own figures (its `retrieval_<split>.json`, written by `sevlm
retrieve`, or computed when absent) are printed in the same table. The last line printed is one
JSON object with every figure. The models live in `sevlm.evaluation.reference`; `sevlm retrieve
--compare RUN ... --reference probe [--out C.json]` puts them beside runs (on their own feature
files, if need be) with paired p-values, as Markdown and JSON.

    .venv/bin/python tools/retrieval_reference.py --dataset demo_out/dataset \\
        --features demo_out/features.h5 --run demo_out/run demo_out/run_no_image
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import sevlm  # noqa: F401  first: the passive OpenMP wait before torch loads OpenMP
from sevlm.evaluation.reference import (  # noqa: E402,F401  (retrieval_study imports them from here)
    SplitData,
    linear_clip,
    load_split_data,
    logistic_probe,
    majority_share,
    reference_points,
)


def run_figures(run_dir, dataset_dir, features, split: str = "test") -> dict:
    """A run's retrieval report: its `retrieval_<split>.json` when `sevlm retrieve` wrote one, else computed."""
    saved = Path(run_dir) / f"retrieval_{split}.json"
    if saved.exists():
        return json.loads(saved.read_text(encoding="utf-8"))
    from sevlm.evaluation.gallery import score_split
    from sevlm.export import load_run

    return score_split(load_run(run_dir), dataset_dir, split, features)


def row(name: str, report: dict) -> str:
    m = report["model"]
    i2x, i2e = m["image_to_explanation"], m["image_to_emotion"]["accuracy"]
    return f"| {name} | {i2e:.3f} | {i2x['R@1']:.3f} | {i2x['R@10']:.3f} | {m['explanation_to_image']['R@10']:.3f} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="dataset folder (sevlm prepare --out)")
    ap.add_argument("--features", required=True, help="HDF5 feature cache (sevlm extract --out)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--run", nargs="*", default=[], help="run folders whose retrieval figures to print beside")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    ref = reference_points(args.dataset, args.features, args.split, args.seed)
    runs = {r: run_figures(r, args.dataset, args.features, args.split) for r in args.run}
    chance = ref["linear_clip"]["chance"]
    probe = ref["logistic_probe"]
    print(
        f"{args.split} split: {probe['n']} images with a dominant emotion; chance 0.111, "
        f"majority class {ref['majority_class']:.3f}"
    )
    print("| model | image->emotion | image->expl R@1 | image->expl R@10 | expl->image R@10 |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| logistic-regression probe (C={probe['C']}) | {probe['accuracy']:.3f} | - | - | - |")
    print(row("linear CLIP-style (pooled features, TF-IDF)", ref["linear_clip"]))
    for name, rep in runs.items():
        print(row(name, rep))
    print(
        f"| exact chance | {1 / 9:.3f} | {chance['image_to_explanation']['R@1']:.3f} | "
        f"{chance['image_to_explanation']['R@10']:.3f} | {chance['explanation_to_image']['R@10']:.3f} |"
    )
    print(json.dumps({"reference": ref, "runs": {k: v["model"] for k, v in runs.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
