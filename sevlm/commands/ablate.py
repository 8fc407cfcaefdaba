"""`sevlm ablate`: the paper's ablation (Figure 5) on your data: variants x seeds, paired tests, one table."""

from __future__ import annotations

HELP = "ablation study: train, generate, evaluate and retrieve each variant x seed; table with paired p-values"
EXAMPLES = """\
  sevlm ablate --config demo --out runs/ablate --seeds 3          # the ladder on the synthetic demo set
  sevlm ablate --config paper --out runs/ablate_paper --seeds 3 --parallel 4 \\
               data.dataset_dir=D data.features=F.h5 data.lexicon=NRC.txt
  sevlm ablate --config demo --out runs/ab --variants baseline full no_image
  sevlm ablate --config demo --out runs/ab --variants full --variant no_align:model.w_align=0
  sevlm ablate --config demo --out runs/ablate --seeds 3           # again: reuses every finished run
"""


def add_arguments(p) -> None:
    from sevlm.ablation import LADDER

    p.add_argument("--config", required=True, help="base training config name (sevlm/configs) or JSON file")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="study folder: one run folder per variant x seed, ABLATION.md/.json/.png (rerun to resume)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant: the config's seed, +1, ... (default: 3)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"built-in rungs, in order (default: all: {' '.join(v.name for v in LADDER)}); the first "
        "is the baseline the others are compared with",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="NAME:key=value,...",
        help="a custom rung (repeatable), after the built-in ones; e.g. no_align:model.w_align=0",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="runs at once (processes; on a GPU machine, child k gets GPU k mod #GPUs; default: 1)",
    )
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per test (default: 2000)")
    p.add_argument(
        "--demo-images",
        type=int,
        default=720,
        help="size of the synthetic demo set built when a demo-lexicon config names no dataset (default: 720)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base config, for every run")


def run(args) -> int:
    import sys

    from sevlm.ablation import run_study, select_variants

    variants = select_variants(args.variants, args.variant)
    table = run_study(
        args.out,
        args.config,
        args.overrides,
        variants,
        args.seeds,
        parallel=args.parallel,
        demo_images=args.demo_images,
        n_resamples=args.resamples,
    )
    bad = [f"{row['name']} seed {r['seed']}" for row in table["variants"] for r in row["runs"] if r["status"] != "done"]
    if bad:
        print(
            f"sevlm ablate: {len(bad)} runs did not finish ({', '.join(bad)}); the table shows the others. "
            f"Rerun the same command to retry them.",
            file=sys.stderr,
        )
        return 1
    return 0
