"""`sevlm train`: train SEVLM from cached features with DeepSpeed (one process, `deepspeed`, torchrun)."""

from __future__ import annotations

HELP = "train the model from cached features with DeepSpeed ZeRO-2 (resumable)"
EXAMPLES = """\
  sevlm train --config demo data.dataset_dir=out/dataset data.features=out/features.h5
  sevlm train --config paper --out runs/paper data.dataset_dir=D data.features=F.h5 data.lexicon=NRC.txt
  sevlm train --resume runs/paper                      # continue after a kill, same data order
  deepspeed --num_gpus 4 --no_local_rank --module sevlm train --config paper ...   # multi-GPU
  torchrun --nproc_per_node 2 -m sevlm train --config tiny device=cpu ...   # two CPU ranks (gloo)
"""


def add_arguments(p) -> None:
    p.add_argument("--config", default=None, help="config name (sevlm/configs) or JSON file")
    p.add_argument("--out", default=None, help="run folder (default: the config's out_dir)")
    p.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. schedule.max_steps=100")


def run(args) -> int:
    from sevlm.errors import ConfigError
    from sevlm.train import load_train_config, train

    # --resume's rules (no config, no --out) are checked by the library (sevlm.train.run_folder)
    config = load_train_config(args.config, args.overrides) if args.config else None
    if args.overrides and config is None:
        raise ConfigError(
            "key=value overrides change the config named by --config; a resumed run keeps its saved config.json"
        )
    run_dir = train(config, resume=args.resume, out_dir=args.out)
    print(run_dir)
    return 0
