"""`sevlm generate`: a trained run's predictions for a split, as JSON lines."""

from __future__ import annotations

HELP = "generate emotion + explanation for every image of a split with a trained run"
EXAMPLES = """\
  sevlm generate --run runs/sevlm --split test --out preds_test.jsonl
  sevlm generate --run runs/sevlm --split val --out preds_val.jsonl --beams 3 --length-penalty 1.0 --batch-size 64
  sevlm generate --run runs/sevlm --split val --out greedy3.jsonl --strategy greedy --no-repeat-ngram 3
  sevlm generate --run runs/sevlm --split val --out rp.jsonl --repetition-penalty 1.2 --no-repeat-ngram 0
  sevlm generate --run runs/sevlm --split test --out s.jsonl --strategy sample --top-p 0.9 --temperature 0.8 --seed 1
  sevlm generate --run runs/sevlm/export --split test --features feats/clip.h5 --dataset data/artemis --out p.jsonl

Decoding starts from the run's own (its train config's `decoding` section, else the
defaults); each flag given changes one setting. The settings used are written beside the
predictions, in <out>.meta.json.
"""


def add_decoding_arguments(p) -> None:
    """The decoding flags of `generate` and `predict` (sevlm.decoding.DecodingConfig fields)."""
    g = p.add_argument_group("decoding (default: the run's recorded decoding; see sevlm/decoding.py)")
    g.add_argument(
        "--strategy",
        choices=("greedy", "beam", "sample"),
        default=None,
        help="how tokens are picked (default: the run's; --beams N > 1 alone means beam)",
    )
    g.add_argument(
        "--beams",
        type=int,
        default=None,
        dest="num_beams",
        metavar="N",
        help="beam width for --strategy beam (1 = greedy)",
    )
    g.add_argument(
        "--no-repeat-ngram",
        type=int,
        default=None,
        metavar="N",
        help="an explanation never repeats an N-token n-gram; 0 = off (default: 2)",
    )
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        metavar="P",
        help="penalise tokens already in the explanation; 1.0 = off (default: 1.2)",
    )
    g.add_argument(
        "--length-penalty",
        type=float,
        default=None,
        metavar="A",
        help="beams ranked by log-prob / length**A; 0 = no normalisation (default: 1.0)",
    )
    g.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="sampling: keep the K likeliest tokens; 0 = off"
    )
    g.add_argument("--top-p", type=float, default=None, metavar="P", help="sampling: nucleus mass, e.g. 0.9; 1.0 = off")
    g.add_argument("--temperature", type=float, default=None, metavar="T", help="sampling temperature (default: 1.0)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed (default: 0)")
    g.add_argument(
        "--max-new-tokens", type=int, default=None, metavar="N", help="cap on generated tokens (default: 25)"
    )
    g.add_argument(
        "--corpus-words",
        choices=("on", "off"),
        default=None,
        help="on: explanations spell only words of the training text (corpus-vocabulary runs)",
    )


DECODING_FLAGS = (
    "strategy",
    "num_beams",
    "no_repeat_ngram",
    "repetition_penalty",
    "length_penalty",
    "top_k",
    "top_p",
    "temperature",
    "seed",
    "max_new_tokens",
)


def decoding_changes(args) -> dict:
    """The decoding settings given on the command line (for DecodingConfig.updated)."""
    changes = {k: getattr(args, k) for k in DECODING_FLAGS if getattr(args, k) is not None}
    if getattr(args, "corpus_words", None) is not None:
        changes["corpus_words"] = args.corpus_words == "on"
    return changes


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="training run folder (or its export/ folder)")
    p.add_argument("--split", default="test", help="split to decode (default: test)")
    p.add_argument(
        "--out",
        required=True,
        metavar="P.jsonl",
        help='output: one {"image_id","emotion","explanation","emotion_prob","raw"} per line',
    )
    p.add_argument(
        "--features",
        metavar="F.h5",
        default=None,
        help="HDF5 feature cache (default: the one recorded in the run's config)",
    )
    p.add_argument(
        "--dataset",
        metavar="DATASET_DIR",
        default=None,
        help="dataset folder with <split>.json (default: the one recorded in the run's config)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images decoded at once (default: 32)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_decoding_arguments(p)


def run(args) -> int:
    from collections import Counter

    from sevlm.errors import ConfigError
    from sevlm.predictions import generate_split

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    preds = generate_split(
        run_dir=args.run,
        split=args.split,
        out=args.out,
        dataset_dir=args.dataset,
        features=args.features,
        batch_size=args.batch_size,
        decoding=decoding_changes(args),
        device=args.device,
    )
    unknown = Counter(p["raw"] for p in preds if p["emotion"] is None)
    print(f"wrote {len(preds)} predictions to {args.out}")
    if unknown:
        shown = ", ".join(f"{k!r} x{v}" for k, v in unknown.most_common(5))
        print(f"{sum(unknown.values())} outputs have a label that is not one of the 9 emotions: {shown}")
    return 0
