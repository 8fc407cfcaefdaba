"""The ablation table: every variant's figures over seeds, each rung against the one before and
the baseline with paired bootstrap p-values, as ABLATION.json, ABLATION.md and ABLATION.png.

Everything is rebuilt from the run folders (sevlm.ablation): a run's figures are its
`report/REPORT.json` and `retrieval_test.json`; the paired tests read the per-image statistics
`sevlm evaluate` kept beside the report (`report/REPORT_stats.npz`, sevlm.evaluation.significance).

Pooling seeds: runs are paired by seed (seed s of variant B against seed s of variant A, only
seeds both have finished), and by image. For each metric, an image's statistics are summed over
the paired seeds (for a mean metric, its score in each seed's run; for BLEU, its n-gram counts),
so the pooled figure is the metric over all the seeds' predictions together (for METEOR, ROUGE-L,
CIDEr and the accuracies, the mean over seeds; for BLEU, the corpus BLEU of the seeds' outputs
pooled). The bootstrap then resamples images, each carrying all its seeds, and p is the two-sided
paired bootstrap p of significance.paired_tests. Images, not training seeds, are the resampled
unit: p says whether the difference would hold on other test images for these trained models, not
for other training seeds (the table's spread over seeds shows that).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from sevlm.evaluation.figures import pyplot
from sevlm.evaluation.significance import STATISTIC_FNS, Statistic, paired_tests, read_statistics
from sevlm.io import atomic_path, write_json, write_text
from sevlm.study_folder import REPORT, RETRIEVAL, RETRIEVAL_STATS, STATS, log_path, run_dir, run_finished

# (key, label, source): REPORT.json keys, and the image -> emotion accuracy of retrieve
METRICS = [
    ("BLEU-1", "BLEU-1", "report"),
    ("BLEU-2", "BLEU-2", "report"),
    ("BLEU-3", "BLEU-3", "report"),
    ("BLEU-4", "BLEU-4", "report"),
    ("METEOR", "METEOR", "report"),
    ("ROUGE-L", "ROUGE-L", "report"),
    ("CIDEr", "CIDEr", "report"),
    ("emotion_accuracy", "Emo acc", "report"),
    ("emo_align", "Emo-Align", "report"),
    ("image_to_emotion", "img→emotion", "retrieval"),
]
PLOTTED = ("BLEU-4", "METEOR", "CIDEr", "emotion_accuracy", "emo_align", "image_to_emotion")
STARS = "p < 0.001 ***, p < 0.01 **, p < 0.05 *, otherwise n.s. (the paper's Figure 5)"


def stars(p: float | None) -> str | None:
    if p is None:
        return None
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "n.s."


def run_figures(folder: Path) -> dict:
    """The table's figures of one finished run folder."""
    report = json.loads((folder / REPORT).read_text(encoding="utf-8"))
    out = {k: report.get(k) for k, _, src in METRICS if src == "report"}
    retrieval = folder / RETRIEVAL
    if retrieval.exists():
        r = json.loads(retrieval.read_text(encoding="utf-8"))
        out["image_to_emotion"] = ((r.get("model") or {}).get("image_to_emotion") or {}).get("accuracy")
    else:
        out["image_to_emotion"] = None
    return {k: (float(v) if isinstance(v, (int, float)) else None) for k, v in out.items()}


def collect(study: Path, spec: dict, names: list[str], seeds: list[int]) -> list[dict]:
    """Per variant: each seed's status (done / failed with its error / not run) and figures."""
    rows = []
    for name in names:
        v = spec["variants"][name]
        runs = []
        for s in seeds:
            folder = run_dir(study, name, s)
            entry = {"seed": s, "run_dir": str(folder)}
            err = log_path(study, name, s, ".error.json")
            if run_finished(study, spec, name, s):
                entry.update(status="done", metrics=run_figures(folder))
            elif err.exists():
                entry.update(status="failed", error=json.loads(err.read_text(encoding="utf-8"))["error"])
            else:
                entry.update(status="not run")
            runs.append(entry)
        done = [r for r in runs if r["status"] == "done"]
        mean, sd = {}, {}
        for key, _, _ in METRICS:
            vals = [r["metrics"][key] for r in done if r["metrics"].get(key) is not None]
            mean[key] = float(np.mean(vals)) if vals else None
            sd[key] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        rows.append(
            {
                "name": name,
                "label": v["label"],
                "overrides": v["overrides"],
                "image": v.get("image", True),
                "runs": runs,
                "n_done": len(done),
                "mean": mean,
                "sd": sd,
            }
        )
    return rows


def _load_stats(folder: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    ids, stats, _ = read_statistics(folder / STATS)
    if (folder / RETRIEVAL_STATS).exists():  # image -> emotion hits, aligned to the report's images by id
        r_ids, r_stats, _ = read_statistics(folder / RETRIEVAL_STATS)
        pos = {i: k for k, i in enumerate(r_ids)}
        if all(i in pos for i in ids):
            stats["image_to_emotion"] = r_stats["image_to_emotion"][[pos[i] for i in ids]]
    return ids, stats


def paired(study: Path, row_a: dict, row_b: dict, n_resamples: int, seed: int = 0) -> dict:
    """Variant B against A, seeds paired and pooled (module docstring)."""
    done_a = {r["seed"]: r for r in row_a["runs"] if r["status"] == "done"}
    done_b = {r["seed"]: r for r in row_b["runs"] if r["status"] == "done"}
    common = sorted(set(done_a) & set(done_b))
    out = {"against": row_a["name"], "seeds": common, "metrics": {}}
    if not common:
        return out
    loaded = {
        s: (_load_stats(run_dir(study, row_a["name"], s)), _load_stats(run_dir(study, row_b["name"], s)))
        for s in common
    }
    images = sorted(set.intersection(*[set(a[0]) & set(b[0]) for a, b in loaded.values()]))
    out["n_images"] = len(images)
    for key, _, _ in METRICS:
        ma = [done_a[s]["metrics"].get(key) for s in common]
        mb = [done_b[s]["metrics"].get(key) for s in common]
        if any(x is None for x in ma + mb):
            out["metrics"][key] = None
            continue
        entry = {"delta": float(np.mean(mb) - np.mean(ma)), "p_bootstrap": None, "stars": None}
        if key in STATISTIC_FNS and all(key in a[1] and key in b[1] for a, b in loaded.values()):
            sums = []
            for side in (0, 1):
                total = None
                for s in common:
                    ids, stats = loaded[s][side]
                    pos = {i: k for k, i in enumerate(ids)}
                    x = stats[key][[pos[i] for i in images]]  # [N, m] rows in `images` order
                    total = x if total is None else total + x
                sums.append(total)
            t = paired_tests(Statistic(key, sums[0], sums[1], STATISTIC_FNS[key]), n_resamples=n_resamples, seed=seed)
            entry.update(
                p_bootstrap=t["p_bootstrap"],
                stars=stars(t["p_bootstrap"]),
                ci95_pooled=t["ci95"],
                delta_pooled=t["delta"],
            )
        else:
            entry["note"] = "no per-image statistics: difference only"
        out["metrics"][key] = entry
    return out


def build_table(study: Path, spec: dict, names: list[str], seeds: list[int], n_resamples: int = 2000) -> dict:
    rows = collect(study, spec, names, seeds)
    for k, row in enumerate(rows):
        row["vs_previous"] = paired(study, rows[k - 1], row, n_resamples) if k > 0 else None
        row["vs_baseline"] = paired(study, rows[0], row, n_resamples) if k > 1 else None
    return {
        "study": str(study),
        "config": spec["config"],
        "overrides": spec["overrides"],
        "split": spec["split"],
        "seeds": seeds,
        "baseline": names[0],
        "n_resamples": n_resamples,
        "metrics": [k for k, _, _ in METRICS],
        "spread": "sample standard deviation over the finished seeds (ddof 1)",
        "pairing": "seed s of a variant against seed s of the other, seeds both finished; per-image statistics "
        "summed over those seeds; images resampled (paired bootstrap)",
        "stars": STARS,
        "variants": rows,
    }


def _f(x, digits=3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(p) -> str:
    return "p<0.001" if p is not None and p < 0.001 else f"p={p:.3f}"


def _delta(entry: dict | None, tag: str) -> str:
    if not entry:
        return ""
    s = f"{tag} {entry['delta']:+.3f}"
    if entry.get("p_bootstrap") is not None:
        s += f" {entry['stars']} ({_p(entry['p_bootstrap'])})"
    return s


def markdown(table: dict) -> str:
    heads = [label for _, label, _ in METRICS]
    lines = [
        "# Ablation study",
        "",
        f"Config `{table['config']}`"
        + (f" with `{' '.join(table['overrides'])}`" if table["overrides"] else "")
        + f"; split `{table['split']}`; seeds {', '.join(map(str, table['seeds']))}.",
        "",
        "Each cell: mean ± spread (sample standard deviation) over the finished seeds; then the difference "
        "from the previous rung (Δprev) and from the baseline (Δbase), with the paired bootstrap p-value "
        f"({table['n_resamples']} resamples) and stars: {table['stars']}. Seeds are paired (seed s against "
        "seed s) and pooled: each image's statistics are summed over the seeds both variants finished, "
        "and the bootstrap resamples images. "
        "— = not applicable (no retrieval without a contrastive head and an image side) or not finished.",
        "",
        "| variant | seeds | " + " | ".join(heads) + " |",
        "|---|---|" + "---|" * len(heads),
    ]
    for row in table["variants"]:
        cells = []
        for key, _, _ in METRICS:
            m, sd = row["mean"][key], row["sd"][key]
            cell = _f(m) + (f" ± {_f(sd)}" if sd is not None else "")
            parts = [
                p
                for p in (
                    _delta((row.get("vs_previous") or {}).get("metrics", {}).get(key), "Δprev"),
                    _delta((row.get("vs_baseline") or {}).get("metrics", {}).get(key), "Δbase"),
                )
                if p
            ]
            if m is not None and parts:
                cell += "<br>" + "<br>".join(parts)
            cells.append(cell)
        n = len(table["seeds"])
        lines.append(f"| **{row['name']}**<br>{row['label']} | {row['n_done']}/{n} | " + " | ".join(cells) + " |")
    problems = [(row["name"], r) for row in table["variants"] for r in row["runs"] if r["status"] != "done"]
    if problems:
        lines += ["", "Runs not in the figures:", ""]
        lines += [
            f"- {name} seed {r['seed']}: {r['status']}" + (f": {r['error']}" if r.get("error") else "")
            for name, r in problems
        ]
    lines += ["", "Variants:", ""]
    lines += [
        f"- `{row['name']}`: " + (" ".join(f"`{o}`" for o in row["overrides"]) or "the config as it is")
        for row in table["variants"]
    ]
    lines += ["", "![ablation ladder](ABLATION.png)", ""]
    return "\n".join(lines)


def plot(table: dict, out: Path) -> None:
    """The ladder of the main metrics: each seed's figure and the mean ± spread, one panel per metric."""
    plt = pyplot()
    labels = dict((k, lab) for k, lab, _ in METRICS)
    names = [r["name"] for r in table["variants"]]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
    for ax, key in zip(axes.flat, PLOTTED):
        x = np.arange(len(names))
        for i, row in enumerate(table["variants"]):
            pts = [
                r["metrics"][key] for r in row["runs"] if r["status"] == "done" and r["metrics"].get(key) is not None
            ]
            ax.scatter([i] * len(pts), pts, s=12, color="0.6", zorder=2)
        mean = np.array([np.nan if r["mean"][key] is None else r["mean"][key] for r in table["variants"]])
        sd = np.array([0.0 if r["sd"][key] is None else r["sd"][key] for r in table["variants"]])
        ladder = np.array([r.get("image", True) for r in table["variants"]])  # the no-image control stands apart
        ax.errorbar(x[ladder], mean[ladder], yerr=sd[ladder], fmt="o-", color="C0", capsize=4, zorder=3)
        if (~ladder).any():
            ax.errorbar(x[~ladder], mean[~ladder], yerr=sd[~ladder], fmt="s", color="C3", capsize=4, zorder=3)
        for i, row in enumerate(table["variants"]):
            e = (row.get("vs_previous") or {}).get("metrics", {}).get(key)
            if e and e.get("stars") and not np.isnan(mean[i]):
                ax.annotate(
                    e["stars"], (i, mean[i] + sd[i]), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8
                )
        ax.set_title(labels[key])
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"ablation ({table['config']}, {len(table['seeds'])} seeds; mean ± sd, grey = seeds, red = no image; "
        f"stars: against the variant before)"
    )
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_tables(study: Path, spec: dict, names: list[str], seeds: list[int], n_resamples: int = 2000) -> dict:
    table = build_table(Path(study), spec, names, seeds, n_resamples)
    write_json(Path(study) / "ABLATION.json", table)
    write_text(Path(study) / "ABLATION.md", markdown(table))
    plot(table, Path(study) / "ABLATION.png")
    return table
