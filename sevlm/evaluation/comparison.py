"""`sevlm retrieve --compare`: several runs scored on the same split, side by side, with paired tests.

Each run is scored as `sevlm retrieve` scores it (`gallery.score_split`), on its own dataset
folder and feature cache, so runs with different encoders or feature files compare as long as
their split holds the same images (by image id). Every figure is a ratio of per-image sums:

- image -> emotion accuracy: (hit, has a dominant emotion) per image;
- image -> explanation R@K: (the image's rank <= K, 1);
- explanation -> image R@K: (how many of the image's explanations rank it <= K, how many it has).

so the paired bootstrap and permutation tests of `sevlm.evaluation.significance` resample
images (an image's explanations move together: they are not independent queries). Each run
after the first is tested against the first.

With `reference=True` the data's own reference points (`sevlm.evaluation.reference`: a
logistic-regression probe and a linear CLIP-style model on the pooled features of the first
run's feature cache) join as rows, tested the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sevlm.errors import ConfigError, DataError
from sevlm.evaluation.gallery import score_split
from sevlm.evaluation.reference import load_split_data, reference_points
from sevlm.evaluation.retrieval import IndexOptions
from sevlm.evaluation.scoring import image_emotion_hits
from sevlm.evaluation.significance import STATISTIC_FNS, Statistic, paired_tests
from sevlm.export import load_run
from sevlm.io import write_json, write_text

KS = (1, 5, 10)
METRICS = (
    "image_to_emotion",
    *(f"image_to_explanation R@{k}" for k in KS),
    *(f"explanation_to_image R@{k}" for k in KS),
)


def image_statistics(image_emb, emotion_emb, image_dominant, text_image, ranks: dict, ks=KS) -> dict[str, np.ndarray]:
    """{metric: [I, 2]} per-image statistics whose column-sum ratio is the figure (module docstring)."""
    text_image = np.asarray(text_image, dtype=np.int64)
    n_img = len(image_dominant)
    ones = np.ones(n_img)
    per_image_texts = np.bincount(text_image, minlength=n_img).astype(np.float64)
    out = {"image_to_emotion": image_emotion_hits(image_emb, emotion_emb, np.asarray(image_dominant))}
    for k in ks:
        out[f"image_to_explanation R@{k}"] = np.stack(
            [(ranks["image_to_explanation"] <= k).astype(np.float64), ones], 1
        )
        hits = np.bincount(text_image, weights=(ranks["explanation_to_image"] <= k).astype(np.float64), minlength=n_img)
        out[f"explanation_to_image R@{k}"] = np.stack([hits, per_image_texts], 1)
    return out


def figures(stats: dict[str, np.ndarray]) -> dict[str, float]:
    return {m: float(STATISTIC_FNS["image_to_emotion"](s.sum(0))) for m, s in stats.items()}


def score_run(
    run_dir,
    split: str,
    dataset_dir=None,
    features=None,
    options: IndexOptions = IndexOptions(),
    batch_size: int = 64,
    device: str = "cpu",
) -> dict:
    """One run scored on `split` with its recorded dataset and features (or the given ones):
    {"name", "run", "dataset", "features", "encoder", "image_ids", "stats", "report"}."""
    run = load_run(run_dir, device=device)
    if not run.model.config.use_contrastive:
        raise ConfigError(f"{run.path}: the model has no contrastive head (use_contrastive=false): nothing to compare")
    recorded = run.data_paths
    dataset_dir, features = dataset_dir or recorded.dataset_dir, features or recorded.features
    if not dataset_dir or not features:
        raise DataError(f"{run_dir}: no dataset_dir/features recorded in the run config; pass --dataset and --features")
    artifacts: dict = {}
    report = score_split(run, dataset_dir, split, features, options=options, batch_size=batch_size, artifacts=artifacts)
    emb, ranks = artifacts["embeddings"], artifacts["ranks"]
    return {
        "name": str(run_dir),
        "run": str(run.path),
        "dataset": str(dataset_dir),
        "features": str(features),
        "encoder": (run.config.get("encoder") or {}).get("name") or run.config.get("data", {}).get("encoder"),
        "image_ids": list(emb.image_ids),
        "image_side_trained": report["embedding_space"]["image_side_trained"],
        "stats": image_statistics(emb.image_emb, emb.emotion_emb, emb.image_dominant, emb.text_image, ranks),
        "report": report,
    }


def reference_rows(dataset_dir, features, split: str, seed: int = 0) -> list[dict]:
    """The logistic probe (image -> emotion only) and the linear CLIP-style model as rows like `score_run`'s."""
    emb: dict = {}
    ref = reference_points(dataset_dir, features, split, seed=seed, embeddings=emb)
    test = load_split_data(dataset_dir, features, split)
    known = test.dominant >= 0
    hits = known & (np.asarray(ref["logistic_probe"]["predicted"]) == test.dominant)
    probe = {"image_to_emotion": np.stack([hits, known], 1).astype(np.float64)}
    clip = image_statistics(emb["image"], emb["emotion"], test.dominant, test.text_image, emb["ranks"])
    common = {
        "run": None,
        "dataset": str(dataset_dir),
        "features": str(features),
        "encoder": None,
        "image_ids": emb["image_ids"],
        "image_side_trained": True,
        "reference": True,
    }
    return [
        {**common, "name": f"reference: logistic-regression probe (C={ref['logistic_probe']['C']})", "stats": probe},
        {**common, "name": "reference: linear CLIP-style (pooled features, TF-IDF)", "stats": clip},
    ]


def _aligned(rows: list[dict]) -> list[dict]:
    """Rows with their statistics in the first row's image order; a DataError when a row's split
    does not hold the same images."""
    order = rows[0]["image_ids"]
    want = set(order)
    out = []
    for r in rows:
        have = set(r["image_ids"])
        if have != want:
            raise DataError(
                f"{r['name']}: its split has {len(have)} images, {rows[0]['name']}'s {len(want)}, "
                f"{len(have & want)} in common; --compare needs the same images "
                f"(e.g. {sorted(want ^ have)[0]!r} is in one only)"
            )
        pos = {i: k for k, i in enumerate(r["image_ids"])}
        idx = np.array([pos[i] for i in order])
        out.append({**r, "stats": {m: s[idx] for m, s in r["stats"].items()}})
    return out


def compare(rows: list[dict], chance: dict, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Every row's figures, its difference from the first row and the paired tests of that
    difference (significance.paired_tests), with `chance` (chance.chance_levels) beside."""
    if len(rows) < 2:
        raise ConfigError("--compare: give at least two runs (the first is the baseline)")
    rows = _aligned(rows)
    base = rows[0]
    table = []
    for r in rows:
        entry = {k: v for k, v in r.items() if k not in ("stats", "report", "image_ids")}
        entry["figures"] = figures(r["stats"])
        if r is not base:
            entry["against_first"] = {
                m: paired_tests(
                    Statistic(m, base["stats"][m], r["stats"][m], STATISTIC_FNS["image_to_emotion"]), n_resamples, seed
                )
                for m in METRICS
                if m in r["stats"]
            }
        table.append(entry)
    return {
        "split_images": len(base["image_ids"]),
        "n_resamples": n_resamples,
        "seed": seed,
        "baseline": base["name"],
        "chance": chance,
        "rows": table,
    }


def chance_figures(report: dict) -> dict[str, float]:
    """The exact chance level of every compared figure, from a `retrieval_report`."""
    c = report["chance"]
    out = {"image_to_emotion": c["image_to_emotion"]["accuracy"]}
    for k in KS:
        out[f"image_to_explanation R@{k}"] = c["image_to_explanation"][f"R@{k}"]
        out[f"explanation_to_image R@{k}"] = c["explanation_to_image"][f"R@{k}"]
    return out


def _cell(row: dict, m: str) -> str:
    if m not in row["figures"]:
        return "-"
    text = f"{row['figures'][m]:.3f}"
    t = row.get("against_first", {}).get(m)
    if t:
        text += f" ({t['delta']:+.3f}, p={t['p_bootstrap']:.3f})"
    return text


def table_lines(result: dict) -> list[str]:
    """The comparison as a Markdown table: figure (difference from the first row, bootstrap p)."""
    head = ["image->emotion", *(f"img->expl R@{k}" for k in KS), *(f"expl->img R@{k}" for k in KS)]
    lines = ["| run | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for r in result["rows"]:
        name = r["name"] + ("" if r.get("image_side_trained", True) else " (image side untrained)")
        lines.append(f"| {name} | " + " | ".join(_cell(r, m) for m in METRICS) + " |")
    lines.append("| exact chance | " + " | ".join(f"{result['chance'][m]:.3f}" for m in METRICS) + " |")
    return lines


def write_comparison(result: dict, out: str | Path) -> dict[str, Path]:
    """The comparison's JSON (`out`) and Markdown (`out` with .md)."""
    out = Path(out)
    md = out.with_suffix(".md")
    lines = [
        "# Retrieval comparison",
        "",
        f"- split images: {result['split_images']}; each row against the first ({result['baseline']}): "
        f"difference and paired bootstrap p ({result['n_resamples']} resamples of images, seed {result['seed']}; "
        "permutation p in the JSON)",
        "",
    ]
    lines += [
        f"- {r['name']}: dataset `{r['dataset']}`, features `{r['features']}`"
        + (f", encoder {r['encoder']}" if r.get("encoder") else "")
        for r in result["rows"]
    ]
    lines += ["", *table_lines(result)]
    write_text(md, "\n".join(lines) + "\n")
    write_json(out, result)
    return {"json": out, "markdown": md}
