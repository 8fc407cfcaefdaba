"""`sevlm export`: an export folder (what generate, evaluate, retrieve and predict load) from any
finished checkpoint of a run, not only the best-accuracy one `train` exports."""

from __future__ import annotations

HELP = "write an export folder from any finished checkpoint of a run (export/ holds the best-accuracy one)"
EXAMPLES = """\
  sevlm export --run runs/demo --tag last --out exports/demo_last
  sevlm export --run runs/demo --tag step00000200 --out exports/demo_step200
  sevlm generate --run exports/demo_last --split test --out pred_last.jsonl
"""


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="training run folder")
    p.add_argument(
        "--tag",
        default="last",
        help="a checkpoint tag under RUN_DIR/checkpoints (stepNNNNNNNN) or a pointer: last (default), "
        "best_accuracy, best_bleu",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="export folder to write (must not exist inside the run)")


def run(args) -> int:
    from pathlib import Path

    from sevlm.checkpoint_export import export_checkpoint
    from sevlm.outputs import check_outputs

    check_outputs({"--out": args.out}, {"--run": args.run})
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        from sevlm.errors import ConfigError

        raise ConfigError(f"--out {out}: exists and is not empty; choose a new folder")
    folder, tag = export_checkpoint(args.run, args.tag, out)
    print(f"wrote {folder} from {args.run}/checkpoints/{tag}")
    return 0
