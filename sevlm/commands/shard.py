"""`sevlm shard`: splits of an HDF5 feature file -> WebDataset tar shards + manifest."""

from __future__ import annotations

HELP = "write splits of a feature file as WebDataset shards with a checksummed manifest"
EXAMPLES = """\
  sevlm shard --features features/clip.h5 --dataset data/artemis --split train val --out shards/clip
  (training from shards reads its validation split from them too: shard train and val)
  sevlm shard --features features/clip.h5 --dataset data/artemis --split val --out shards/clip --samples-per-shard 500
  torchrun --nproc_per_node 4 -m sevlm.cli shard --features features/clip.h5 --dataset data/artemis \
      --split train --out shards/clip
  (each rank writes a range of the shards; the last to finish moves them into place and writes the manifest)
"""


def add_arguments(p) -> None:
    p.add_argument("--features", required=True, metavar="F.h5", help="feature file written by `sevlm extract`")
    p.add_argument("--dataset", required=True, metavar="DATASET_DIR", help="dataset folder written by `sevlm prepare`")
    p.add_argument(
        "--split",
        required=True,
        nargs="+",
        choices=("train", "val", "test"),
        help="which split(s) to write, e.g. `--split train val` (what training reads)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="shard folder (holds {split}-%%06d.tar and manifest.json)"
    )
    p.add_argument("--samples-per-shard", type=int, default=1000, help="samples per tar shard (default: 1000)")
    p.add_argument(
        "--rank",
        type=int,
        default=None,
        help="this process's range of shards when writing in parallel (default: $RANK from torchrun/deepspeed, else 0)",
    )
    p.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="number of parallel writers (default: $WORLD_SIZE from torchrun/deepspeed, else 1)",
    )


def run(args) -> int:
    from sevlm.features.common import launcher_rank

    rank, world_size = launcher_rank(args.rank, args.world_size)
    for split in dict.fromkeys(args.split):  # in order, each once
        _write(args, split, rank, world_size)
    return 0


def _write(args, split: str, rank: int, world_size: int) -> None:
    from sevlm.features.shard_writer import pending_shard_parts, write_shards

    entry = write_shards(
        features_path=args.features,
        dataset_dir=args.dataset,
        split=split,
        out_dir=args.out,
        max_samples_per_shard=args.samples_per_shard,
        rank=rank,
        world_size=world_size,
    )
    if entry is None:
        waiting = pending_shard_parts(args.out, split, world_size)
        print(
            f"wrote part {rank} of {world_size} of split {split} in {args.out}; "
            + (
                f"waiting for rank(s) {', '.join(map(str, waiting))}: the last to finish writes the manifest"
                if waiting
                else "another rank put the shards in place"
            )
        )
        return
    size = sum(s["bytes"] for s in entry["shards"]) / 2**20
    print(
        f"wrote {args.out}: split {entry['split']}, {entry['num_samples']} samples in "
        f"{entry['num_shards']} shard(s), {size:.1f} MiB; manifest {args.out}/manifest.json"
    )
    if entry["missing"]:
        print(f"  {len(entry['missing'])} image(s) of the split have no features (failed extraction), left out:")
        for image_id, reason in entry["missing"].items():
            print(f"    {image_id}: {reason}")
