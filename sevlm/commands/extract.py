"""`sevlm extract`: encode every image of a dataset folder once into an HDF5 feature file."""

from __future__ import annotations

HELP = "encode each image once with a frozen image encoder into an HDF5 feature file (resumable)"
EXAMPLES = """\
  sevlm extract --dataset data/artemis --encoder clip-vit-b16 --out features/clip.h5
  sevlm extract --images wikiart --dataset data/artemis --encoder efficientnet-lite0 --out features/eff.h5 --workers 2
  sevlm extract --dataset data/artemis --encoder clip-vit-b16 --weights /models/clip-vit-base-patch16 --out f.h5
  (killed? run the same command again: it continues from F.h5.partial)
"""


def add_arguments(p) -> None:
    p.add_argument("--images", metavar="DIR", default=None,
                   help="image folder (<Style>/<painting>.jpg); default: images_dir in the dataset's manifest.json")
    p.add_argument("--dataset", required=True, metavar="DATASET_DIR", help="dataset folder written by `sevlm prepare`")
    p.add_argument("--encoder", required=True, metavar="NAME",
                   help="clip-vit-b16 | efficientnet-lite0 | tiny-random")
    p.add_argument("--out", required=True, metavar="F.h5", help="feature file to write")
    p.add_argument("--weights", metavar="PATH_OR_HUB", default=None,
                   help="encoder weights: a hub name or local directory (clip), a .pth file (efficientnet)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images (default: 2)")
    p.add_argument("--device", default="cpu", help="torch device for the encoder (default: cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing finished feature file")


def run(args) -> int:
    from sevlm.features.hdf5 import extract_features

    summary = extract_features(
        images_dir=args.images,
        dataset_dir=args.dataset,
        encoder_name=args.encoder,
        out_path=args.out,
        batch_size=args.batch_size,
        num_workers=args.workers,
        encoder_kwargs={"weights": args.weights} if args.weights else None,
        device=args.device,
        overwrite=args.overwrite,
    )
    T, D = summary["token_shape"]
    resumed = f", resumed at image {summary['resumed_from']}" if summary["resumed_from"] else ""
    print(f"wrote {summary['out']}: {summary['num_encoded']} of {summary['num_images']} images, "
          f"{summary['encoder']} tokens {T}x{D} float16 ({summary['images_per_s']} images/s{resumed})")
    if summary["failed"]:
        print(f"  {summary['num_failed']} image(s) could not be used (recorded in the file under failed/):")
        for name, reason in summary["failed"].items():
            print(f"    {name}: {reason}")
    return 0
