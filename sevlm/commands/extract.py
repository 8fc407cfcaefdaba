"""`sevlm extract`: encode every image of a dataset folder once into an HDF5 feature file."""

from __future__ import annotations

HELP = "encode each image once with a frozen image encoder into an HDF5 feature file (resumable)"
EXAMPLES = """\
  sevlm extract --dataset data/artemis --encoder clip-vit-b16 --out features/clip.h5
  sevlm extract --images wikiart --dataset data/artemis --encoder efficientnet-lite0 --out features/eff.h5 --workers 2
  sevlm extract --dataset data/artemis --encoder clip-vit-b16 --weights /models/clip-vit-base-patch16 --out f.h5
  (killed? run the same command again: it continues from F.h5.partial)
  torchrun --nproc_per_node 4 -m sevlm.cli extract --dataset data/artemis --encoder clip-vit-b16 \
      --out f.h5 --device cuda
  (each rank writes f.h5.part-K-of-N, the last to finish merges them into f.h5; a rank that died is
   rerun alone: sevlm extract ... --rank K --world-size N, with the same other flags)
"""


def add_arguments(p) -> None:
    from sevlm.encoders.base import IMAGE_PREPROCESSING

    p.add_argument(
        "--images",
        metavar="DIR",
        default=None,
        help="image folder (<Style>/<painting>.jpg); default: images_dir in the dataset's manifest.json",
    )
    p.add_argument("--dataset", required=True, metavar="DATASET_DIR", help="dataset folder written by `sevlm prepare`")
    p.add_argument("--encoder", required=True, metavar="NAME", help="clip-vit-b16 | efficientnet-lite0 | tiny-random")
    p.add_argument("--out", required=True, metavar="F.h5", help="feature file to write")
    p.add_argument(
        "--weights",
        metavar="PATH_OR_HUB",
        default=None,
        help="encoder weights: a hub name or local directory (clip), a .pth file (efficientnet)",
    )
    p.add_argument(
        "--image-preprocess",
        choices=IMAGE_PREPROCESSING,
        default="encoder",
        help="how images become pixels: 'encoder' (its own: resize, centre crop, its mean/std; default) or "
        "'imagenet-squash' (the SEVLM authors': squashed to the encoder's size, ImageNet mean/std)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images (default: 2)")
    p.add_argument("--device", default="cpu", help="torch device for the encoder (default: cpu)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing finished feature file (only once the new one is complete)",
    )
    p.add_argument(
        "--rank",
        type=int,
        default=None,
        help="this process's share of a distributed extraction (default: $RANK from torchrun/deepspeed, else 0)",
    )
    p.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="number of shares (default: $WORLD_SIZE from torchrun/deepspeed, else 1)",
    )


def run(args) -> int:
    import os

    from sevlm.features.common import launcher_rank
    from sevlm.features.hdf5 import FeatureStore
    from sevlm.features.hdf5_writer import extract_features

    rank, world_size = launcher_rank(args.rank, args.world_size)
    device = args.device
    if device == "cuda" and world_size > 1:
        device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"  # one GPU per rank on each node
    summary = extract_features(
        images_dir=args.images,
        dataset_dir=args.dataset,
        encoder_name=args.encoder,
        out_path=args.out,
        batch_size=args.batch_size,
        num_workers=args.workers,
        encoder_kwargs={
            **({"weights": args.weights} if args.weights else {}),
            **({"image_preprocess": args.image_preprocess} if args.image_preprocess != "encoder" else {}),
        }
        or None,
        device=device,
        overwrite=args.overwrite,
        rank=rank,
        world_size=world_size,
    )
    T, D = summary["token_shape"]
    resumed = f", resumed at image {summary['resumed_from']}" if summary["resumed_from"] else ""
    what = f"part {rank} of {world_size}" if world_size > 1 else f"wrote {summary['out']}"
    print(
        f"{what}: {summary['num_encoded']} of {summary['num_images']} images, "
        f"{summary['encoder']} tokens {T}x{D} float16 ({summary['images_per_s']} images/s{resumed})"
    )
    if world_size > 1:
        if summary["merged"]:
            print(f"merged {world_size} parts into {summary['out']}: {len(FeatureStore(summary['out']))} images")
        elif summary["waiting_for"]:
            ranks = ", ".join(map(str, summary["waiting_for"]))
            print(
                f"  waiting for rank(s) {ranks}; the last rank to finish merges into {summary['out']} "
                f"(a rank that died: rerun the same command with --rank K --world-size {world_size})"
            )
        else:
            print(f"  another rank merges the parts into {summary['out']}")
    if summary["failed"]:
        print(f"  {summary['num_failed']} image(s) could not be used (recorded in the file under failed/):")
        for name, reason in summary["failed"].items():
            print(f"    {name}: {reason}")
    return 0
