"""`sevlm evaluate`: coco-caption metrics, emotion accuracy, Emo-Align and a report with plots."""

from __future__ import annotations

import argparse

HELP = "score predictions (BLEU/METEOR/ROUGE-L/CIDEr, emotion accuracy, Emo-Align) and write a report"
EXAMPLES = """\
  sevlm evaluate --predictions runs/demo/pred.jsonl --references data/demo_ds/test.json \\
                 --dataset data/demo_ds --out runs/demo/report/REPORT.json
  sevlm evaluate --run runs/demo --split test --out runs/demo/report/REPORT.json
  sevlm evaluate --run runs/paper --dominance strict-majority --emo-classifier lstm \
                 --out runs/paper/report/REPORT.json          # the SEVLM authors' rule, ArtEmis's classifier
  sevlm evaluate --run runs/paper --dominance strict-majority --because last --emo-classifier artemis \\
                 --artemis-checkpoint txt_to_emotion/best_model.pt --artemis-vocabulary vocabulary.pkl \\
                 --out runs/paper/report/REPORT.json          # as the SEVLM authors scored
  sevlm evaluate --predictions pred.jsonl --references test.json --out R.json \\
                 --vad-lexicon /path/to/NRC-VAD-Lexicon.txt --lenient
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sevlm.emotions import DOMINANCE_RULES
    from sevlm.evaluation.emo_base import CLASSIFIER_KINDS  # light modules: the parser is built at every start
    from sevlm.evaluation.inputs import BECAUSE_RULES

    src = p.add_argument_group("what to score (predictions + references, or a run to generate from)")
    src.add_argument("--predictions", help="JSON lines {image_id, emotion, explanation}")
    src.add_argument(
        "--references", help="the split's grouped JSON written by `sevlm prepare` (e.g. DATASET/test.json)"
    )
    src.add_argument("--run", help="a training run folder: generate predictions for --split first")
    src.add_argument("--split", default="test", help="split to generate and score with --run (default: test)")
    src.add_argument("--features", help="with --run: the HDF5 feature cache (default: the one recorded in the run)")
    p.add_argument("--out", required=True, help="REPORT.json path; REPORT.md and REPORT_figures/ go beside it")
    p.add_argument(
        "--dataset",
        help="dataset folder: enables Emo-Align (its classifier is trained once and cached there); "
        "with --run, defaults to the run's recorded dataset",
    )
    p.add_argument("--vad-lexicon", help="NRC-VAD file (or 'demo') for the VAD plot of generated vs human explanations")
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip predictions for unknown images and score only the predicted images (counted in the report) "
        "instead of stopping",
    )
    p.add_argument(
        "--dominance",
        choices=DOMINANCE_RULES,
        default="artemis",
        help="when an image has a dominant emotion, recomputed from its votes: 'artemis' = at least half "
        "with a unique maximum (ArtEmis's code, default), 'strict-majority' = more than half (the "
        "SEVLM authors' evaluation)",
    )
    p.add_argument(
        "--emo-classifier",
        choices=CLASSIFIER_KINDS + ("artemis",),
        default="tfidf",
        help="the text classifier behind Emo-Align: 'tfidf' (TF-IDF + logistic regression, default) or "
        "'lstm' (ArtEmis's kind of classifier, for numbers comparable with ArtEmis), trained once on "
        "the training split and cached in DATASET/emo_classifier/<kind>/; or 'artemis': ArtEmis's "
        "released classifier (--artemis-checkpoint, --artemis-vocabulary), as the SEVLM authors scored",
    )
    p.add_argument(
        "--artemis-checkpoint",
        help="with --emo-classifier artemis: ArtEmis's text-to-emotion "
        "best_model.pt (read without running pickle code)",
    )
    p.add_argument(
        "--artemis-vocabulary",
        help="with --emo-classifier artemis: the vocabulary.pkl of ArtEmis's "
        "preprocessing that the classifier was trained with",
    )
    p.add_argument(
        "--because",
        choices=BECAUSE_RULES,
        default="first",
        help="where the scored explanation starts: after the first 'because' (default) or after the last "
        "one (the SEVLM authors' scoring: a second 'because' cuts the explanation there)",
    )
    p.add_argument("--retrain-classifier", action="store_true", help="retrain the Emo-Align classifier even if cached")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sevlm.errors import ConfigError
    from sevlm.evaluation.report import evaluate_and_report

    if args.run:
        if args.predictions or args.references:
            raise ConfigError("give either --run or --predictions/--references, not both")
        if not args.dataset:
            args.dataset = _recorded_dataset(args.run)
        predictions = Path(args.out).parent / f"predictions_{args.split}.jsonl"
        _generate(args.run, args.dataset, args.split, predictions, features=args.features)
        references = Path(args.dataset) / f"{args.split}.json"
    else:
        if not (args.predictions and args.references):
            raise ConfigError("give --predictions and --references, or --run with --dataset")
        predictions, references = Path(args.predictions), Path(args.references)
    artemis = (args.artemis_checkpoint, args.artemis_vocabulary)
    if args.emo_classifier == "artemis" and not all(artemis):
        raise ConfigError("--emo-classifier artemis needs --artemis-checkpoint and --artemis-vocabulary")
    if args.emo_classifier != "artemis" and any(artemis):
        raise ConfigError("--artemis-checkpoint/--artemis-vocabulary go with --emo-classifier artemis")
    if args.emo_classifier == "lstm" and not args.dataset:
        raise ConfigError(f"--emo-classifier {args.emo_classifier} needs --dataset (it trains on the training split)")
    summary = evaluate_and_report(
        predictions,
        references,
        args.out,
        dataset_dir=args.dataset,
        vad_lexicon=args.vad_lexicon,
        strict=not args.lenient,
        retrain_classifier=args.retrain_classifier,
        dominance=args.dominance,
        emo_classifier=args.emo_classifier,
        because=args.because,
        artemis_classifier=artemis,
    )
    keys = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "emotion_accuracy", "emo_align")
    print("  ".join(f"{k} {summary[k]:.4f}" for k in keys if isinstance(summary.get(k), float)))
    if summary.get("warnings"):
        print("warnings: " + ", ".join(f"{k}={v}" for k, v in summary["warnings"].items()))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


def _generate(run_dir, dataset_dir, split, out_path, features=None) -> None:
    """Generate predictions for a split with the run's model (greedy, as the paper)."""
    from sevlm.predictions import generate_split

    generate_split(run_dir, split, out_path, dataset_dir=dataset_dir, features=features)


def _recorded_dataset(run_dir) -> str:
    """The dataset folder recorded in the run's exported config."""
    from sevlm.errors import ConfigError
    from sevlm.export import RunDataPaths

    dataset = RunDataPaths.of(run_dir).dataset_dir
    if not dataset:
        raise ConfigError(f"{run_dir}: no dataset_dir recorded in the run; pass --dataset")
    return dataset
