"""`sevlm prepare`: annotation files (ArtEmis CSVs, or any affective dataset's CSV/JSON Lines)
-> the dataset folder (split JSONs, COCO refs, manifest)."""

from __future__ import annotations

HELP = "turn ArtEmis v1 (+ v2 Contrastive) CSVs, or any affective dataset's files, into a split dataset folder"
EXAMPLES = """\
  sevlm prepare --artemis-csv artemis_dataset_release_v0.csv --images wikiart --out data/artemis
  sevlm prepare --artemis-csv artemis_preprocessed.csv --images wikiart --out data/artemis   # ArtEmis's own output
  sevlm prepare --artemis-csv combined/train/artemis_preprocessed.csv --test-csv test_all/test_all.csv \\
      --images wikiart --out data/artemis_v2_combined
  sevlm prepare --artemis-csv artemis_dataset_release_v0.csv --contrastive-csv Contrastive.csv \\
      --images wikiart --out data/artemis_v2
  sevlm prepare --artemis-csv demo_out/demo_data/artemis_dataset_release_v0.csv --skip-bad-rows --out d
  sevlm prepare --format generic --input affection.jsonl --input ours.csv --images wikiart --out data/mixed
"""

ARTEMIS_ONLY = (
    "artemis_csv",
    "contrastive_csv",
    "train_subset",
    "max_repetition",
    "protocol",
    "test_csv",
    "too_long_percentile",
)


def add_arguments(p) -> None:
    p.add_argument(
        "--format",
        choices=("artemis", "generic"),
        default="artemis",
        help="'artemis' (default): ArtEmis CSVs; 'generic': CSV or JSON Lines files with columns "
        "image (path under --images), emotion (one of the 9 ArtEmis emotions), utterance, "
        "and optionally split (train/val/test, fixes that image's split) and source",
    )
    p.add_argument("--artemis-csv", metavar="CSV", default=None, help="ArtEmis v1 artemis_dataset_release_v0.csv")
    p.add_argument(
        "--contrastive-csv",
        metavar="CSV",
        default=None,
        help="ArtEmis v2 Contrastive.csv: its annotations join their paintings' splits "
        "(val/test become the Combined test set)",
    )
    p.add_argument(
        "--train-subset",
        choices=("combined", "all"),
        default=None,
        help="with --contrastive-csv: 'combined' (default, the authors' training set: every v2 "
        "training annotation plus an equal-size sample of v1's) or 'all' (every v1 and v2 one)",
    )
    p.add_argument(
        "--protocol",
        choices=("artemis", "sevlm"),
        default=None,
        help="ArtEmis input: 'artemis' (default) reproduces ArtEmis's own preprocessing for deep nets "
        "(its split, spell-checked text, length rules, a 'rest' split for paintings annotated 41+ "
        "times), so results compare with published numbers; 'sevlm' is sevlm's earlier protocol "
        "(for datasets built with it). A CSV with split and utterance_spelled columns is taken as is",
    )
    p.add_argument(
        "--test-csv",
        metavar="CSV",
        default=None,
        help="with a preprocessed CSV (e.g. ArtEmis v2's released combined/train/artemis_preprocessed.csv): "
        "a test CSV (e.g. test_all.csv) that replaces its test split",
    )
    p.add_argument(
        "--too-long-percentile",
        type=float,
        default=None,
        help="(--protocol artemis) drop utterances longer than this percentile of the train split's "
        "token counts (default: 95, as ArtEmis; 100 keeps all)",
    )
    p.add_argument(
        "--input",
        action="append",
        metavar="FILE",
        default=None,
        help="(--format generic) an annotation file; repeat to combine several into one dataset",
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        default=None,
        help="image folder (ArtEmis: WikiArt's <Style>/<painting>.jpg): check images exist, record "
        "their on-disk names; required with --format generic",
    )
    p.add_argument("--out", required=True, metavar="DATASET_DIR", help="dataset folder to write")
    p.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="skip malformed rows (counted by reason in manifest.json) instead of stopping",
    )
    p.add_argument(
        "--allow-missing-images",
        action="store_true",
        help="leave out the annotations of images not found under --images even when they are "
        "more than 5%% of all (below that they are always left out, and counted)",
    )
    p.add_argument(
        "--split-fractions",
        metavar="TRAIN,VAL,TEST",
        default=None,
        help="(--format generic) shares of the images whose split no row fixes (default: 0.85,0.05,0.1); "
        "a small dataset may want more validation images, e.g. 0.7,0.15,0.15",
    )
    p.add_argument("--seed", type=int, default=2021, help="split and sampling seed (default: 2021)")
    p.add_argument("--min-tokens", type=int, default=5, help="drop utterances with fewer tokens (default: 5)")
    p.add_argument(
        "--max-repetition",
        type=int,
        default=None,
        help="set aside ArtEmis paintings with repetition >= this (default: 41)",
    )


def run(args) -> int:
    from sevlm.errors import ConfigError

    common = dict(
        out_dir=args.out,
        skip_bad_rows=args.skip_bad_rows,
        seed=args.seed,
        min_tokens=args.min_tokens,
        allow_missing_images=args.allow_missing_images,
    )
    if args.format == "generic":
        from sevlm.data.generic import prepare_generic

        given = [f"--{k.replace('_', '-')}" for k in ARTEMIS_ONLY if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: ArtEmis options, not for --format generic")
        if not args.input or not args.images:
            raise ConfigError("--format generic needs --input FILE (one or more) and --images DIR")
        from sevlm.data.split import parse_split_fractions

        fractions = parse_split_fractions(args.split_fractions) if args.split_fractions else None
        m = prepare_generic(args.input, args.images, split_fractions=fractions, **common)
    else:
        from sevlm.data.artemis import prepare_dataset

        if args.input or not args.artemis_csv:
            raise ConfigError("--format artemis reads --artemis-csv CSV (--input is for --format generic)")
        if args.split_fractions:
            raise ConfigError("--split-fractions is for --format generic (ArtEmis keeps the paper's 85/5/10 split)")
        m = prepare_dataset(
            args.artemis_csv,
            contrastive_csv=args.contrastive_csv,
            images_dir=args.images,
            max_repetition=41 if args.max_repetition is None else args.max_repetition,
            train_subset=args.train_subset,
            protocol=args.protocol or "artemis",
            test_csv=args.test_csv,
            too_long_percentile=95 if args.too_long_percentile is None else args.too_long_percentile,
            **common,
        )
    if args.format == "generic":
        shares = "/".join(f"{100 * m['split_fractions'][k]:g}" for k in ("train", "val", "test"))
        print(
            f"wrote {args.out} ({len(m['sources'])} input file(s); images split {shares} train/val/test, "
            f"{m['images_with_fixed_split']} fixed by a split column; seed {m['seed']})"
        )
    else:
        print(f"wrote {args.out} (protocol: {m['protocol']}; training set: {m['training_set']}; seed {m['seed']})")
    for split, n in m["counts"].items():
        print(
            f"  {split:5s}: {n['images']:6d} images {n['annotations']:7d} annotations "
            f"({n['images_with_dominant_emotion']} with a dominant emotion; "
            + ", ".join(f"{k} {v}" for k, v in n["annotations_by_source"].items())
            + ")"
        )
    report = m.get(m.get("protocol"), {})
    if "text" in report:
        t = report["text"]
        print(
            f"  ArtEmis text: {t['explanations_changed']} explanations changed ({t['contractions_expanded']} "
            f"contractions expanded, {t['tokens_spelled_manually']} tokens spelled by ArtEmis's table, "
            f"{t['tokens_corrected']} corrected by SymSpell)"
        )
        print(
            f"  too long ({report['too_long']['rule']}, > {report['too_long']['threshold']:g} tokens): "
            f"{report['too_long']['dropped']} dropped; rest split (repetition >= "
            f"{args.max_repetition or 41}): {report['rest']['annotations']} annotations"
        )
    if "set_aside" in m:
        print(
            f"  set aside ({m['set_aside']['rule']}): {m['set_aside']['paintings']} paintings, "
            f"{m['set_aside']['annotations']} annotations"
        )
    print(
        f"  dropped short utterances ({m['dropped_short_utterances']['rule']}): "
        f"{m['dropped_short_utterances']['total']}"
    )
    if m["skipped_rows"]:
        print("  skipped bad rows: " + ", ".join(f"{k} {v}" for k, v in m["skipped_rows"].items()))
    if m["missing_images"]["count"]:
        print(
            f"  images not found (left out): {m['missing_images']['count']}, e.g. "
            + ", ".join(m["missing_images"]["examples"][:3])
        )
    return 0
