"""`sevlm retrieve`: FAISS retrieval between images, emotions and explanations of a split."""

from __future__ import annotations

import argparse

HELP = "cross-modal retrieval (FAISS) with the contrastive head: Recall@K vs exact chance, or search a query"
EXAMPLES = """\
  sevlm retrieve --run runs/demo --split test --out runs/demo/retrieval.json
  sevlm retrieve --run runs/demo --split test --out R.json --index hnsw
  sevlm retrieve --run runs/demo --split test --out R.json --random-runs 20
  sevlm retrieve --run runs/demo --split test --out q.json --query "the dark sky feels threatening"
  sevlm retrieve --run runs/demo --split test --out q.json --query-image painting.jpg --top 5
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder (or its export/ folder)")
    p.add_argument("--split", default="test", help="split whose images and explanations form the gallery (default: test)")
    p.add_argument("--out", required=True, help="result JSON (a .md report and plots go beside it)")
    p.add_argument("--dataset", help="dataset folder (default: the one recorded in the run)")
    p.add_argument("--features", help="HDF5 feature cache (default: the one recorded in the run)")
    p.add_argument("--index", choices=("flat", "ivf", "hnsw"), default="flat",
                   help="flat: exact inner product (default); ivf/hnsw: approximate, for large galleries")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--gpu", dest="use_gpu", action="store_const", const=True, help="require a FAISS GPU index")
    dev.add_argument("--cpu", dest="use_gpu", action="store_const", const=False, help="search on the CPU even if a GPU is present")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--query", help="search the split's images and emotions with this text instead of scoring")
    q.add_argument("--query-image", help="search the split's explanations and emotions with this image file")
    p.add_argument("--cache-dir", help="where --query/--query-image keep the embedded gallery and its index "
                   "(default: retrieval_cache/ in the run folder); reused while model, split and features are unchanged")
    p.add_argument("--no-cache", action="store_true", help="embed the gallery afresh and keep nothing")
    p.add_argument("--top", type=int, default=10, help="results to show per query (default 10)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--random-runs", type=int, default=0,
                   help="also score N >= 20 random-embedding draws (mean and spread), a check of the exact chance levels")
    p.add_argument("--seed", type=int, default=0, help="first seed of the random-embedding draws")


def run(args: argparse.Namespace) -> int:
    from sevlm.errors import ConfigError, DataError
    from sevlm.evaluation.retrieval import IndexOptions, score_split, search_split
    from sevlm.export import load_run

    if args.top < 1:
        raise ConfigError(f"--top: must be >= 1, got {args.top}")
    if args.query is not None and not args.query.strip():  # else "" would fall through to scoring the split
        raise ConfigError("--query: empty text; give the words to search for")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    run_ = load_run(args.run, device=args.device)
    if not run_.model.config.use_contrastive:
        raise ConfigError(f"{run_.path}: the model has no contrastive head (use_contrastive=false): no retrieval embeddings")
    recorded = run_.data_paths
    dataset_dir = args.dataset or recorded.dataset_dir
    features = args.features or recorded.features
    if not dataset_dir or (not features and not args.query_image):
        raise DataError(f"{args.run}: no dataset_dir/features recorded in the run config; pass --dataset and --features")
    options = IndexOptions(kind=args.index, use_gpu=args.use_gpu)
    source = {"run": str(run_.path), "dataset": str(dataset_dir), "features": str(features), "split": args.split}

    if args.query is not None or args.query_image is not None:
        from sevlm.io import write_json

        run_folder = run_.path.parent if run_.path.name == "export" else run_.path
        cache_dir = None if args.no_cache else (args.cache_dir or run_folder / "retrieval_cache")
        result = {**source, **search_split(run_, dataset_dir, args.split, features, query=args.query,
                                           query_image=args.query_image, top=args.top, options=options,
                                           batch_size=args.batch_size, cache_dir=cache_dir)}
        write_json(args.out, result)
        if result["gallery_cache"]:
            print(f"gallery: {'reused' if result['gallery_cache']['reused'] else 'embedded and cached'} in {result['gallery_cache']['path']}")
        print("nearest emotions: " + ", ".join(f"{e['emotion']} {e['score']:.3f}" for e in result["emotions"][:3]))
        for r in result["results"]:
            print(f"{r['rank']:3d}  {r['score']:.3f}  {r['image_id']}" + (f"  {r['explanation']}" if "explanation" in r else ""))
        print(f"wrote {args.out}")
        return 0

    from sevlm.evaluation.report import statistics_path, write_retrieval_report

    # per-image image -> emotion hits beside the result (RESULT_stats.npz), for paired tests (sevlm ablate)
    result = {**score_split(run_, dataset_dir, args.split, features, options=options, batch_size=args.batch_size,
                            random_runs=args.random_runs, seed=args.seed, image_stats_out=statistics_path(args.out)),
              **source}
    write_retrieval_report(result, args.out)
    m, c = result["model"], result["chance"]
    for d in ("image_to_explanation", "explanation_to_image"):
        print(f"{d}: " + " ".join(f"R@{k} {m[d][f'R@{k}']:.3f} (chance {c[d][f'R@{k}']:.3f})" for k in result["ks"])
              + f"  median rank {m[d]['median_rank']:g} (chance {c[d]['median_rank']:g})")
    for d in ("image_to_emotion", "explanation_to_emotion"):
        if m[d]["accuracy"] is not None:
            print(f"{d} accuracy {m[d]['accuracy']:.3f} (chance {c[d]['accuracy']:.3f}, "
                  f"majority class {c[d]['majority_class']:.3f}, n={m[d]['n']})")
    if not result["embedding_space"]["image_side_trained"]:
        print(f"note: {result['embedding_space']['note']}")
    print(f"index: {m['index']['kind']} on {m['index']['device']}; wrote {args.out}")
    return 0
