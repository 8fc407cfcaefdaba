"""`sevlm demo-data`: write the synthetic ArtEmis-format demo set (CSV + images)."""

from __future__ import annotations

HELP = "make the synthetic demo dataset (drawn paintings, simulated annotators) in ArtEmis v1 format"
EXAMPLES = """\
  sevlm demo-data --out demo_data
  sevlm demo-data --out demo_small --n-images 180 --image-size 128 --seed 1
  sevlm demo-data --out demo_wikiart --images /data/wikiart   # real paintings, synthetic labels
"""


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--n-images", type=int, default=720, help="number of paintings (default: 720)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--images",
        metavar="DIR",
        default=None,
        help="take the pictures from real paintings in DIR/<Style>/*.jpg instead of drawing them",
    )
    p.add_argument("--image-size", type=int, default=224, help="picture side in pixels (default: 224)")


def run(args) -> int:
    from sevlm.demo import make_demo_data

    s = make_demo_data(
        args.out, n_images=args.n_images, seed=args.seed, images_dir=args.images, image_size=args.image_size
    )
    print(f"wrote {s['out_dir']}: SYNTHETIC demo data from {s['source']}")
    print(f"  {s['images']} images ({s['image_size']}px), {s['annotations']} annotations in {s['csv']}")
    print(
        f"  annotators agree with the drawn emotion {s['crowd_agrees_with_drawn']:.0%} of the time; "
        f"the majority does for {s['majority_is_drawn']:.0%} of the images"
    )
    print(
        f"  next: sevlm prepare --artemis-csv {s['out_dir']}/{s['csv']} --images {s['out_dir']}/images --out "
        "DATASET_DIR"
    )
    return 0
