"""`sevlm generate`: a trained run's predictions for a split, as JSON lines."""

from __future__ import annotations

HELP = "generate emotion + explanation for every image of a split with a trained run"
EXAMPLES = """\
  sevlm generate --run runs/sevlm --split test --out preds_test.jsonl
  sevlm generate --run runs/sevlm --split val --out preds_val.jsonl --beams 3 --batch-size 64
  sevlm generate --run runs/sevlm/export --split test --features feats/clip.h5 --dataset data/artemis --out p.jsonl
"""


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="training run folder (or its export/ folder)")
    p.add_argument("--split", default="test", help="split to decode (default: test)")
    p.add_argument("--out", required=True, metavar="P.jsonl",
                   help='output: one {"image_id","emotion","explanation","emotion_prob","raw"} per line')
    p.add_argument("--features", metavar="F.h5", default=None,
                   help="HDF5 feature cache (default: the one recorded in the run's config)")
    p.add_argument("--dataset", metavar="DATASET_DIR", default=None,
                   help="dataset folder with <split>.json (default: the one recorded in the run's config)")
    p.add_argument("--beams", type=int, default=1, help="beam width; 1 = greedy (default: 1)")
    p.add_argument("--batch-size", type=int, default=32, help="images decoded at once (default: 32)")
    p.add_argument("--max-new-tokens", type=int, default=25, help="cap on generated tokens (default: 25)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def run(args) -> int:
    from collections import Counter

    from sevlm.errors import ConfigError
    from sevlm.generate import generate_split

    if args.beams < 1 or args.batch_size < 1:
        raise ConfigError("--beams and --batch-size must be >= 1")
    preds = generate_split(
        run_dir=args.run,
        split=args.split,
        out=args.out,
        dataset_dir=args.dataset,
        features=args.features,
        batch_size=args.batch_size,
        num_beams=args.beams,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
    )
    unknown = Counter(p["raw"] for p in preds if p["emotion"] is None)
    print(f"wrote {len(preds)} predictions to {args.out}")
    if unknown:
        shown = ", ".join(f"{k!r} x{v}" for k, v in unknown.most_common(5))
        print(f"{sum(unknown.values())} outputs have a label that is not one of the 9 emotions: {shown}")
    return 0
