"""`sevlm retrieve`: FAISS retrieval between images, emotions and explanations of a split."""

from __future__ import annotations

import argparse

HELP = "cross-modal retrieval (FAISS) with the contrastive head: Recall@K vs exact chance, or search a query"
EXAMPLES = """\
  sevlm retrieve --run runs/demo --split test --out runs/demo/retrieval.json
  sevlm retrieve --run runs/demo --split test --out R.json --index hnsw
  sevlm retrieve --run runs/demo --split test --out R.json --random-runs 20
  sevlm retrieve --run runs/demo --split test --out R.json --export-embeddings runs/demo/emb
  sevlm retrieve --run runs/big --split test --out R.json --index ivf --tune 0.95
  sevlm retrieve --run runs/demo --split test --out q.json --query "the dark sky feels threatening"
  sevlm retrieve --run runs/demo --split test --out q.json --query-image painting.jpg --top 5
  sevlm retrieve --run runs/demo --out q.json --query "a calm sea" --query "a burning city" --gallery-image g.png
  sevlm retrieve --run runs/demo --out q.json --queries q.txt --gallery-image g.png   # one text or image path a line
  sevlm retrieve --run runs/demo --out q.json --query-image painting.jpg --target images   # image -> image
  sevlm retrieve --compare runs/demo/run runs/demo/run_no_image runs/other --split test --out C.json
  sevlm retrieve --compare runs/a runs/b --reference probe   # with the data's reference points
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run folder (or its export/ folder)")
    p.add_argument(
        "--split", default="test", help="split whose images and explanations form the gallery (default: test)"
    )
    p.add_argument("--out", help="result JSON (a .md report and plots go beside it); optional with --compare")
    p.add_argument("--dataset", help="dataset folder (default: the one recorded in the run)")
    p.add_argument("--features", help="HDF5 feature cache (default: the one recorded in the run)")
    p.add_argument(
        "--index",
        choices=("flat", "ivf", "hnsw", "ivfpq"),
        default="flat",
        help="flat: exact inner product (default); ivf/hnsw/ivfpq: approximate, for large galleries "
        "(each reports its recall@K against the exact search)",
    )
    ix = p.add_argument_group("approximate index settings (docs/RETRIEVAL.md)")
    ix.add_argument("--nlist", type=int, help="ivf/ivfpq: cells (default ~4 sqrt(N), at most N/39)")
    ix.add_argument("--nprobe", type=int, default=32, help="ivf/ivfpq: cells visited per query (default 32)")
    ix.add_argument("--hnsw-m", type=int, default=32, help="hnsw: graph degree M (default 32)")
    ix.add_argument("--ef-search", type=int, default=128, help="hnsw: search breadth efSearch (default 128)")
    ix.add_argument("--ef-construction", type=int, default=40, help="hnsw: build breadth efConstruction (default 40)")
    ix.add_argument("--pq-m", type=int, help="ivfpq: sub-quantizers, dividing the embedding size (default size/4)")
    ix.add_argument("--pq-bits", type=int, default=8, help="ivfpq: bits per sub-quantizer code (default 8)")
    ix.add_argument(
        "--tune",
        type=float,
        metavar="RECALL",
        help="scoring: search with the fastest setting (nprobe or efSearch, faiss ParameterSpace) "
        "whose recall@10 against the exact search reaches RECALL, e.g. 0.95",
    )
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--gpu", dest="use_gpu", action="store_const", const=True, help="require a FAISS GPU index")
    dev.add_argument(
        "--cpu", dest="use_gpu", action="store_const", const=False, help="search on the CPU even if a GPU is present"
    )
    q = p.add_argument_group("queries (instead of scoring; all answered in one process against one embedded gallery)")
    q.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="TEXT",
        help="search the split's images and emotions with this text (repeatable)",
    )
    q.add_argument(
        "--query-image",
        action="append",
        default=[],
        metavar="FILE",
        help="search the split's explanations and emotions with this image file (repeatable)",
    )
    q.add_argument("--queries", metavar="FILE", help="one query a line: a text, or an image path (docs/RETRIEVAL.md)")
    q.add_argument(
        "--target",
        choices=("images", "explanations"),
        help="gallery every query searches (default: text -> images, image -> explanations); "
        "--query-image ... --target images is image -> image search",
    )
    q.add_argument(
        "--gallery-image", metavar="PNG", help="draw each query with its top results (at most 8) and their ground truth"
    )
    q.add_argument(
        "--images",
        metavar="DIR",
        help="painting folder for --gallery-image (default: images_dir in the dataset's manifest.json)",
    )
    p.add_argument(
        "--cache-dir",
        help="where --query/--query-image keep the embedded gallery and its index "
        "(default: retrieval_cache/ in the run folder); reused while model, split and features are unchanged",
    )
    p.add_argument("--no-cache", action="store_true", help="embed the gallery afresh and keep nothing")
    p.add_argument("--top", type=int, default=10, help="results to show per query (default 10)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument(
        "--random-runs",
        type=int,
        default=0,
        help="also score N >= 20 random-embedding draws (mean and spread), a check of the exact chance levels",
    )
    p.add_argument("--seed", type=int, default=0, help="first seed of the random-embedding draws")
    c = p.add_argument_group("comparing runs (instead of --run; docs/RETRIEVAL.md)")
    c.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN",
        help="score these runs on --split and print one table: figures, exact chance, each run's "
        "difference from the first with a paired bootstrap p; runs may use different feature "
        "files and encoders if their split holds the same images",
    )
    c.add_argument(
        "--reference",
        choices=("probe",),
        help="probe: add the data's reference points (a logistic-regression probe and a linear "
        "CLIP-style model on the first run's pooled features) as rows",
    )
    c.add_argument("--resamples", type=int, default=1000, help="bootstrap/permutation resamples (default 1000)")
    p.add_argument(
        "--export-embeddings",
        metavar="DIR",
        help="scoring: also write the split's embeddings as .npy arrays with their ids (docs/RETRIEVAL.md)",
    )


def run(args: argparse.Namespace) -> int:
    from sevlm.errors import ConfigError, DataError
    from sevlm.evaluation.gallery import score_split
    from sevlm.export import load_run

    if args.top < 1:
        raise ConfigError(f"--top: must be >= 1, got {args.top}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.compare:
        return _compare(args)
    if args.reference:
        raise ConfigError("--reference: only with --compare")
    if not args.run or not args.out:
        raise ConfigError("give --run and --out (or --compare RUN RUN ...)")
    queries = _gather_queries(args)
    if not queries and (args.target or args.gallery_image):
        raise ConfigError("--target/--gallery-image: give queries (--query, --query-image or --queries FILE)")
    if queries and args.export_embeddings:
        raise ConfigError("--export-embeddings: only when scoring a split, not with queries")
    run_ = load_run(args.run, device=args.device)
    if not run_.model.config.use_contrastive:
        raise ConfigError(
            f"{run_.path}: the model has no contrastive head (use_contrastive=false): no retrieval embeddings"
        )
    recorded = run_.data_paths
    dataset_dir = args.dataset or recorded.dataset_dir
    features = args.features or recorded.features
    needs_features = not queries or any((args.target or q.default_target) == "images" for q in queries)
    if not dataset_dir or (not features and needs_features):
        raise DataError(
            f"{args.run}: no dataset_dir/features recorded in the run config; pass --dataset and --features"
        )
    options = index_options(args)
    if queries and options.tune_recall is not None:
        raise ConfigError("--tune: only when scoring a split (it times the split's queries), not with queries")
    source = {"run": str(run_.path), "dataset": str(dataset_dir), "features": str(features), "split": args.split}

    if queries:
        return _answer_queries(args, run_, queries, dataset_dir, features, options, source)

    from pathlib import Path

    from sevlm.evaluation.gallery import export_embeddings, write_query_ranks
    from sevlm.evaluation.report import statistics_path, write_retrieval_report

    # per-image image -> emotion hits beside the result (RESULT_stats.npz), for paired tests (sevlm ablate)
    artifacts: dict = {}
    result = {
        **score_split(
            run_,
            dataset_dir,
            args.split,
            features,
            options=options,
            batch_size=args.batch_size,
            random_runs=args.random_runs,
            seed=args.seed,
            image_stats_out=statistics_path(args.out),
            artifacts=artifacts,
        ),
        **source,
    }
    out = Path(args.out)
    ranks_path = write_query_ranks(
        out.with_name(f"{out.stem}_ranks.jsonl"), artifacts["embeddings"], artifacts["ranks"]
    )
    result["ranks_file"] = ranks_path.name
    if args.export_embeddings:
        result["embeddings_export"] = str(export_embeddings(args.export_embeddings, artifacts["embeddings"], source))
    write_retrieval_report(result, args.out, embeddings=artifacts["embeddings"])
    m, c = result["model"], result["chance"]
    for d in ("image_to_explanation", "explanation_to_image"):
        print(
            f"{d}: "
            + " ".join(f"R@{k} {m[d][f'R@{k}']:.3f} (chance {c[d][f'R@{k}']:.3f})" for k in result["ks"])
            + f"  median rank {m[d]['median_rank']:g} (chance {c[d]['median_rank']:g})"
        )
    for d in ("image_to_emotion", "explanation_to_emotion"):
        if m[d]["accuracy"] is not None:
            print(
                f"{d} accuracy {m[d]['accuracy']:.3f} (chance {c[d]['accuracy']:.3f}, "
                f"majority class {c[d]['majority_class']:.3f}, n={m[d]['n']})"
            )
    if not result["embedding_space"]["image_side_trained"]:
        print(f"note: {result['embedding_space']['note']}")
    per = m["image_to_emotion"].get("per_emotion", {})
    if per:
        print(
            "image_to_emotion per dominant emotion: "
            + ", ".join(f"{e} {g['correct']}/{g['n']}" for e, g in per.items() if g["n"] and e != "none")
        )
    print(
        f"per-query ranks: {ranks_path}"
        + (f"; embeddings: {result['embeddings_export']}" if args.export_embeddings else "")
    )
    for d in ("image_to_explanation", "explanation_to_image"):
        if "recall_vs_exact" in m[d]:
            tuned = m[d].get("tuned")
            print(
                f"{d} {m['index']['kind']} search, recall against the exact search: "
                + " ".join(f"{k} {v:.3f}" for k, v in m[d]["recall_vs_exact"].items())
                + (
                    f" (tuned: {tuned['chosen']}, target {tuned['target']:g} "
                    f"{'reached' if tuned['reached'] else 'NOT reached'})"
                    if tuned
                    else ""
                )
            )
    print(f"index: {m['index']['kind']} on {m['index']['device']}; wrote {args.out}")
    return 0


def index_options(args):
    """The IndexOptions the flags describe (ConfigError naming a bad flag)."""
    from sevlm.evaluation.retrieval import IndexOptions

    return IndexOptions(
        kind=args.index,
        use_gpu=args.use_gpu,
        nlist=args.nlist,
        nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        ef_search=args.ef_search,
        ef_construction=args.ef_construction,
        pq_m=args.pq_m,
        pq_bits=args.pq_bits,
        tune_recall=args.tune,
        seed=args.seed,
    ).check()


def _compare(args) -> int:
    from sevlm.errors import ConfigError
    from sevlm.evaluation.comparison import (
        chance_figures,
        compare,
        reference_rows,
        score_run,
        table_lines,
        write_comparison,
    )

    if args.run or _gather_queries(args) or args.export_embeddings:
        raise ConfigError("--compare: give the runs to it alone (no --run, queries or --export-embeddings)")
    if args.resamples < 100:
        raise ConfigError(f"--resamples: {args.resamples}; use at least 100")
    options = index_options(args)
    rows = [
        score_run(r, args.split, args.dataset, args.features, options, args.batch_size, args.device)
        for r in args.compare
    ]
    if args.reference:
        rows += reference_rows(rows[0]["dataset"], rows[0]["features"], args.split, seed=args.seed)
    result = {"split": args.split, **compare(rows, chance_figures(rows[0]["report"]), args.resamples, args.seed)}
    print(
        f"{args.split} split, {result['split_images']} images; each run against {result['baseline']}: "
        f"figure (difference, paired bootstrap p over {args.resamples} resamples of images)"
    )
    print("\n".join(table_lines(result)))
    if args.out:
        written = write_comparison(result, args.out)
        print(f"wrote {written['json']} and {written['markdown']}")
    return 0


def _gather_queries(args):
    """--query, --query-image, then --queries FILE, in that order."""
    from sevlm.errors import ConfigError
    from sevlm.evaluation.queries import Query, read_queries

    queries = []
    for n, text in enumerate(args.query, 1):
        if not text.strip():  # else "" would be a query of nothing
            raise ConfigError(
                f"--query{f' {n}' if len(args.query) > 1 else ''}: empty text; give the words to search for"
            )
        queries.append(Query("text", text, f"--query {n}"))
    queries += [Query("image", path, f"--query-image {n}") for n, path in enumerate(args.query_image, 1)]
    if args.queries:
        queries += read_queries(args.queries)
    return queries


def _answer_queries(args, run_, queries, dataset_dir, features, options, source) -> int:
    import sys

    from sevlm.evaluation.queries import search_queries
    from sevlm.io import write_json

    run_folder = run_.path.parent if run_.path.name == "export" else run_.path
    cache_dir = None if args.no_cache else (args.cache_dir or run_folder / "retrieval_cache")
    result = {
        **source,
        **search_queries(
            run_,
            dataset_dir,
            args.split,
            features,
            queries,
            target=args.target,
            top=args.top,
            options=options,
            batch_size=args.batch_size,
            cache_dir=cache_dir,
        ),
    }
    if result["image_side_untrained_warning"]:
        print(f"warning: {run_.path}: {result['embedding_space']['note']}", file=sys.stderr)
    if args.gallery_image:
        from sevlm.data.folder import dataset_images_dir
        from sevlm.evaluation.query_picture import plot_query_gallery

        images_dir = args.images or dataset_images_dir(dataset_dir)
        result["gallery_image"] = str(plot_query_gallery(result, images_dir, args.gallery_image))
    write_json(args.out, result)
    for side, cache in result["gallery_cache"].items():
        if cache:
            print(f"{side} gallery: {'reused' if cache['reused'] else 'embedded and cached'} in {cache['path']}")
    for side, ix in result["index"].items():
        if "recall_vs_exact" in ix:
            print(
                f"{side}: {ix['kind']} search, recall against the exact search on these queries: "
                + " ".join(f"{k} {v:.3f}" for k, v in ix["recall_vs_exact"].items())
            )
    for q in result["queries"]:
        query = q["query"] if q["kind"] == "text" else q["query"]["image"]
        truth = f"  [ground truth: {q['ground_truth']['dominant_emotion']}]" if "ground_truth" in q else ""
        print(f"\n{q['source']}: {query!r} -> {q['target']}{truth}")
        print("  nearest emotions: " + ", ".join(f"{e['emotion']} {e['score']:.3f}" for e in q["emotions"][:3]))
        for r in q["results"]:
            gt = r["ground_truth"]
            text = f"[{r['explanation_emotion']}] {r['explanation']}" if "explanation" in r else gt["explanation"]
            print(
                f"  {r['rank']:3d}  {r['score']:.3f}  {r['image_id']}  dominant {gt['dominant_emotion'] or 'none'}  "
                f"{text}"
            )
    if args.gallery_image:
        print(f"wrote {result['gallery_image']}")
    print(f"wrote {args.out}")
    return 0
