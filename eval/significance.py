"""Is system B better than system A? Paired bootstrap and permutation tests on one test split.

    .venv/bin/python eval/significance.py --a runs/base/pred.jsonl --b runs/vad/pred.jsonl \
        --references data/ds/test.json [--dataset data/ds] [--emo-classifier tfidf|lstm] \
        [--dominance artemis|strict-majority] [--resamples 1000] [--out sig.json]

Prints one line per metric (A, B, delta, 95% interval, p-values) and writes the full result
as JSON with --out. --dataset adds Emo-Align (the dataset's cached emotion classifier).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from sevlm.emotions import DOMINANCE_RULES
    from sevlm.errors import SevlmError
    from sevlm.evaluation.emo_base import CLASSIFIER_KINDS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="predictions of the baseline system (JSON lines)")
    p.add_argument("--b", required=True, help="predictions of the system under test (JSON lines)")
    p.add_argument("--references", required=True, help="the split's grouped JSON from `sevlm prepare`")
    p.add_argument("--dataset", help="dataset folder: adds Emo-Align with its cached classifier")
    p.add_argument(
        "--emo-classifier",
        choices=CLASSIFIER_KINDS,
        default="tfidf",
        help="with --dataset: the Emo-Align classifier (as `sevlm evaluate --emo-classifier`)",
    )
    p.add_argument(
        "--dominance",
        choices=DOMINANCE_RULES,
        default="artemis",
        help="the dominant-emotion rule (as `sevlm evaluate --dominance`)",
    )
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lenient", action="store_true", help="compare on the images both files cover")
    p.add_argument("--out", help="write the full result here (JSON)")
    args = p.parse_args(argv)
    try:
        from sevlm.evaluation.significance import compare
        from sevlm.io import write_json

        clf = None
        if args.dataset:
            from sevlm.evaluation.emo_classifier import load_or_train

            clf = load_or_train(args.dataset, kind=args.emo_classifier)
        res = compare(
            args.a,
            args.b,
            args.references,
            n_resamples=args.resamples,
            seed=args.seed,
            strict=not args.lenient,
            classifier=clf,
            dominance=args.dominance,
        )
    except SevlmError as e:
        print(f"significance: error: {e}", file=sys.stderr)
        return 1
    print(
        f"{res['n_images']} images, {res['n_resamples']} resamples, dominance rule {res['dominance']}; "
        f"B = {args.b} vs A = {args.a}"
    )
    print(f"{'metric':18s} {'A':>8s} {'B':>8s} {'delta':>8s}   95% CI of delta      p(boot)  p(perm)")
    for name, m in res["metrics"].items():
        lo, hi = m["ci95"]
        print(
            f"{name:18s} {m['a']:8.4f} {m['b']:8.4f} {m['delta']:+8.4f}   [{lo:+.4f}, {hi:+.4f}]   "
            f"{m['p_bootstrap']:.4f}   {m['p_permutation']:.4f}"
        )
    if args.out:
        write_json(args.out, res)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
