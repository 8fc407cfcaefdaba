"""`sevlm prepare`: ArtEmis CSV(s) -> the dataset folder (split JSONs, COCO refs, manifest)."""

from __future__ import annotations

HELP = "turn ArtEmis v1 (and optionally v2 Contrastive) CSVs into a split dataset folder"
EXAMPLES = """\
  sevlm prepare --artemis-csv artemis_dataset_release_v0.csv --out data/artemis
  sevlm prepare --artemis-csv artemis_dataset_release_v0.csv --contrastive-csv Contrastive.csv \\
      --images wikiart --out data/artemis_v2
  sevlm prepare --artemis-csv demo_out/demo_data/artemis_dataset_release_v0.csv --skip-bad-rows --out d
"""


def add_arguments(p) -> None:
    p.add_argument("--artemis-csv", required=True, metavar="CSV", help="ArtEmis v1 artemis_dataset_release_v0.csv")
    p.add_argument("--contrastive-csv", metavar="CSV", default=None,
                   help="ArtEmis v2 Contrastive.csv: its annotations join their paintings' splits "
                        "(val/test become the Combined test set)")
    p.add_argument("--train-subset", choices=("combined", "all"), default=None,
                   help="with --contrastive-csv: 'combined' (default, the authors' training set: every v2 "
                        "training annotation plus an equal-size sample of v1's) or 'all' (every v1 and v2 one)")
    p.add_argument("--images", metavar="DIR", default=None,
                   help="WikiArt folder (<Style>/<painting>.jpg): check images exist, record their on-disk names")
    p.add_argument("--out", required=True, metavar="DATASET_DIR", help="dataset folder to write")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="skip malformed rows (counted by reason in manifest.json) instead of stopping")
    p.add_argument("--allow-missing-images", action="store_true",
                   help="leave out the annotations of images not found under --images even when they are "
                        "more than 5%% of all (below that they are always left out, and counted)")
    p.add_argument("--seed", type=int, default=2021, help="split and sampling seed (default: 2021)")
    p.add_argument("--min-tokens", type=int, default=5, help="drop utterances with fewer tokens (default: 5)")
    p.add_argument("--max-repetition", type=int, default=41,
                   help="set aside paintings with repetition >= this (default: 41)")


def run(args) -> int:
    from sevlm.data.artemis import prepare_dataset

    m = prepare_dataset(
        artemis_csv=args.artemis_csv,
        out_dir=args.out,
        contrastive_csv=args.contrastive_csv,
        images_dir=args.images,
        skip_bad_rows=args.skip_bad_rows,
        seed=args.seed,
        min_tokens=args.min_tokens,
        max_repetition=args.max_repetition,
        allow_missing_images=args.allow_missing_images,
        train_subset=args.train_subset,
    )
    c = m["counts"]
    print(f"wrote {args.out} (training set: {m['training_set']}; seed {m['seed']})")
    for split, n in c.items():
        print(f"  {split:5s}: {n['images']:6d} images {n['annotations']:7d} annotations "
              f"({n['images_with_dominant_emotion']} with a dominant emotion; "
              + ", ".join(f"{k} {v}" for k, v in n["annotations_by_source"].items()) + ")")
    print(f"  set aside ({m['set_aside']['rule']}): {m['set_aside']['paintings']} paintings, "
          f"{m['set_aside']['annotations']} annotations")
    print(f"  dropped short utterances ({m['dropped_short_utterances']['rule']}): "
          f"{m['dropped_short_utterances']['total']}")
    if m["skipped_rows"]:
        print("  skipped bad rows: " + ", ".join(f"{k} {v}" for k, v in m["skipped_rows"].items()))
    if m["missing_images"]["count"]:
        print(f"  images not found (left out): {m['missing_images']['count']}, e.g. "
              + ", ".join(m["missing_images"]["examples"][:3]))
    return 0
