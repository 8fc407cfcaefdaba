"""Evaluation and retrieval reports: REPORT.json, a Markdown summary and PNG plots.

`write_evaluation_report(report, out)` writes `out` (JSON), `out` with suffix .md and the
plots in `<out stem>_figures/`; `write_retrieval_report` does the same for `sevlm retrieve`.
Plots use matplotlib's Agg backend (no display needed). All writes are atomic.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sevlm.emotions import EMOTIONS
from sevlm.io import atomic_path, write_json, write_text

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


# ----------------------------------------------------------------------------- VAD
def text_vad(text: str, lexicon) -> np.ndarray | None:
    """Mean bipolar VAD [3] of the words found in the lexicon, or None when none is."""
    vecs = [v for w in _WORD.findall(text.lower()) if (v := lexicon.lookup(w)) is not None]
    return np.mean(vecs, axis=0) if vecs else None


def vad_summary(generated: list[str], human: list[str], lexicon) -> dict:
    """Mean VAD of generated vs human explanations; `coverage` = share with >= 1 lexicon word."""
    out = {}
    for name, texts in (("generated", generated), ("human", human)):
        vads = [v for t in texts if (v := text_vad(t, lexicon)) is not None]
        arr = np.array(vads, dtype=np.float64).reshape(-1, 3)
        out[name] = {
            "mean": arr.mean(axis=0).tolist() if len(arr) else None,
            "std": arr.std(axis=0).tolist() if len(arr) else None,
            "coverage": len(arr) / len(texts) if texts else None,
            "valence": arr[:, 0].tolist(),  # per text, for the histogram; dropped from REPORT.json
        }
    return out


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_confusion(
    confusion: dict, path: Path, title: str = "Emotion confusion (row-normalised; numbers are counts)"
) -> Path:
    plt = _plt()
    cm = np.array(confusion["counts"], dtype=np.float64)  # [9, 10]
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(8, 6.5))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(
        range(cm.shape[1]),
        [c.replace("something else", "sth. else") for c in confusion["columns_predicted"]],
        rotation=45,
        ha="right",
    )
    ax.set_yticks(range(cm.shape[0]), confusion["rows_true"])
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted emotion")
    ax.set_ylabel("dominant human emotion")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_per_emotion(per_class: dict, path: Path) -> Path:
    plt = _plt()
    x = np.arange(len(EMOTIONS))
    fig, ax = plt.subplots(figsize=(9, 4))
    for k, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, [per_class[e][key] for e in EMOTIONS], width=0.27, label=key)
    ax.set_xticks(x, EMOTIONS, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("Per-emotion scores (images with a dominant emotion)")
    ax.legend()
    return _save(fig, path)


def plot_vad(vad: dict, path: Path) -> Path:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(3)
    for k, name in enumerate(("human", "generated")):
        if vad[name]["mean"] is not None:
            ax1.bar(x + (k - 0.5) * 0.38, vad[name]["mean"], yerr=vad[name]["std"], width=0.38, label=name, capsize=3)
        ax2.hist(vad[name]["valence"], bins=30, range=(-1, 1), alpha=0.55, density=True, label=name)
    ax1.set_xticks(x, ["valence", "arousal", "dominance"])
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.set_title("Mean VAD of explanations (bipolar, [-1, 1])")
    ax1.legend()
    ax2.set_title("Valence per explanation")
    ax2.legend()
    return _save(fig, path)


def plot_recall_curves(retrieval: dict, path: Path) -> Path:
    """Recall@K per direction: one colour per direction, the model solid, chance dotted and paler."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for direction, color in (("image_to_explanation", "C0"), ("explanation_to_image", "C1")):
        for system, style, alpha in (("model", "-", 1.0), ("chance", ":", 0.6)):
            curve = retrieval[system][direction]["recall_curve"]
            ax.plot(
                [int(k) for k in curve],
                list(curve.values()),
                style,
                color=color,
                alpha=alpha,
                marker="o",
                ms=3,
                label=f"{direction.replace('_', ' ')} ({system})",
            )
    ax.set_xscale("log")
    ax.set_ylim(0, 1.03)  # lines at recall 1 stay visible
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_title("Retrieval recall@K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_embedding_map(image_emb: np.ndarray, emotion_emb: np.ndarray, image_dominant, path: Path) -> Path:
    """The image embeddings' first two principal components, each painting coloured by its dominant
    emotion, with the 9 emotion embeddings projected on the same axes (stars, labelled)."""
    from sevlm.evaluation.scoring import normalize

    plt = _plt()
    img, emo = normalize(image_emb).astype(np.float64), normalize(emotion_emb).astype(np.float64)
    mean = img.mean(axis=0)
    _, sv, vt = np.linalg.svd(img - mean, full_matrices=False)
    axes = vt[:2]  # [2, E]; fewer than 2 images or a rank-1 cloud leave one axis
    share = sv[:2] ** 2 / max((sv**2).sum(), 1e-12)
    p_img, p_emo = (img - mean) @ axes.T, (emo - mean) @ axes.T  # [I, 2], [9, 2]
    if p_img.shape[1] < 2:
        p_img, p_emo = np.pad(p_img, ((0, 0), (0, 1))), np.pad(p_emo, ((0, 0), (0, 1)))
    dominant = np.asarray(image_dominant)
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7.5, 6))
    if (dominant < 0).any():
        ax.scatter(*p_img[dominant < 0].T, s=10, c="0.7", label="no dominant", alpha=0.6)
    for k, e in enumerate(EMOTIONS):
        sel = dominant == k
        if sel.any():
            ax.scatter(*p_img[sel].T, s=12, color=cmap(k), label=f"{e} ({int(sel.sum())})", alpha=0.75)
        ax.scatter(*p_emo[k], marker="*", s=260, color=cmap(k), edgecolors="black", linewidths=0.8, zorder=3)
        ax.annotate(e, p_emo[k], xytext=(5, 5), textcoords="offset points", fontsize=8, fontweight="bold")
    ax.set_xlabel(f"PC1 ({share[0]:.0%} of image variance)")
    ax.set_ylabel(f"PC2 ({share[1]:.0%})" if len(share) > 1 else "PC2")
    ax.set_title("Image embeddings by dominant emotion; stars: emotion embeddings")
    ax.legend(fontsize=7, loc="best", markerscale=1.5)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ----------------------------------------------------------------------------- examples
EXAMPLE_PAINTINGS = 8
EXAMPLE_COLUMNS = 4
EXAMPLE_PANEL_INCHES = (4.0, 5.0)  # width, height of one painting with its two explanations
EXAMPLE_DPI = 80  # with the panel size, fixes the picture's pixel size (no tight bounding box)


def pick_examples(ev, images_dir: str | Path, n: int = EXAMPLE_PAINTINGS) -> tuple[list[dict], str | None]:
    """Up to `n` scored paintings, spread evenly over the sorted image ids among those whose image
    is in `images_dir`, each with its generated and first human explanation; or ([], why not)."""
    from sevlm.data.folder import resolve_image

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        return [], f"images folder {images_dir} not found"
    found = []
    for p in sorted(ev.predictions, key=lambda p: p.image_id):
        ref = ev.references[p.image_id]
        path = resolve_image(images_dir, ref.image_name or f"{p.image_id}.jpg")
        if path is not None:
            found.append(
                {
                    "image_id": p.image_id,
                    "image": path,
                    "generated": p.explanation,
                    "generated_emotion": p.emotion or None,
                    "human": ref.explanations[0],
                    "human_emotion": ref.emotions[0],
                }
            )
    if not found:
        return [], f"none of the scored paintings' images is in {images_dir}"
    picks = sorted(set(np.linspace(0, len(found) - 1, min(n, len(found))).round().astype(int).tolist()))
    return [found[i] for i in picks], None


def plot_examples(examples: list[dict], path: Path) -> Path:
    """Paintings in a grid of EXAMPLE_COLUMNS, each above its generated and human explanation."""
    import textwrap

    from PIL import Image

    plt = _plt()
    cols = min(EXAMPLE_COLUMNS, len(examples))
    rows = -(-len(examples) // cols)
    w, h = EXAMPLE_PANEL_INCHES
    fig = plt.figure(figsize=(cols * w, rows * h), dpi=EXAMPLE_DPI)
    grid = fig.add_gridspec(
        2 * rows,
        cols,
        height_ratios=[3, 2] * rows,
        hspace=0.08,
        wspace=0.08,
        left=0.02,
        right=0.98,
        top=0.97,
        bottom=0.02,
    )
    for k, ex in enumerate(examples):
        r, c = divmod(k, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        try:
            with Image.open(ex["image"]) as im:
                im = im.convert("RGB")
                im.thumbnail((400, 400))
                ax.imshow(np.asarray(im))
        except (OSError, Image.DecompressionBombError) as e:  # one bad file does not cost the report
            ax.text(
                0.5,
                0.5,
                textwrap.fill(f"image unreadable: {e}", 40),
                ha="center",
                va="center",
                fontsize=8,
                transform=ax.transAxes,
            )
        name = ex["image_id"]
        ax.set_title(name if len(name) <= 50 else name[:47] + "...", fontsize=8)
        ax.axis("off")
        text = fig.add_subplot(grid[2 * r + 1, c])
        text.axis("off")
        text.text(
            0,
            1,
            f"generated ({ex['generated_emotion'] or 'n/a'}):\n"
            + textwrap.fill(ex["generated"], 44)
            + f"\n\nhuman ({ex['human_emotion']}):\n"
            + textwrap.fill(ex["human"], 44),
            va="top",
            ha="left",
            fontsize=8,
            transform=text.transAxes,
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=EXAMPLE_DPI)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- query gallery
GALLERY_COLUMNS = 8  # results drawn per query at most (the JSON keeps all --top)
GALLERY_PANEL_PX = (240, 370)  # one painting with its caption: width, height
GALLERY_THUMB_PX = 200
GALLERY_MATCH_COLOUR = (0, 128, 0)  # a result whose dominant emotion is the query's nearest emotion


def _gallery_fonts():
    """(regular, bold) TrueType fonts: matplotlib's DejaVu Sans, else PIL's built-in font."""
    from PIL import ImageFont

    try:
        import matplotlib

        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        return ImageFont.truetype(str(ttf / "DejaVuSans.ttf"), 11), ImageFont.truetype(
            str(ttf / "DejaVuSans-Bold.ttf"), 12
        )
    except (ImportError, OSError):
        return ImageFont.load_default(), ImageFont.load_default()


def _thumbnail(images_dir: Path, image_name: str | None):
    """The painting as an RGB thumbnail, or (None, why) when it cannot be read."""
    from PIL import Image

    from sevlm.data.folder import resolve_image

    path = resolve_image(images_dir, image_name) if image_name else None
    if path is None:
        return None, f"no image: not in {images_dir}"
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((GALLERY_THUMB_PX, GALLERY_THUMB_PX))
            return im, ""
    except (OSError, Image.DecompressionBombError) as e:  # one missing painting does not cost the picture
        return None, f"no image: {e}"


def _truth_lines(gt: dict) -> list[str]:
    from collections import Counter

    votes = ", ".join(f"{e} {n}" for e, n in Counter(gt["emotions"]).most_common())
    return [f"dominant: {gt['dominant_emotion'] or 'none'}", f"votes: {votes}"]


def plot_query_gallery(result: dict, images_dir: str | Path, path: str | Path) -> Path:
    """One row per query: the query (its image, or its text) then its top results, each painting
    with its score, its ground truth (dominant emotion, votes) and its first human explanation
    (or, for an explanation result, the matched explanation and its annotator's emotion). A
    result's title is green when its dominant emotion is the query's nearest emotion.

    Drawn with PIL, not matplotlib: a 20-query gallery is ~180 panels, which matplotlib's axes
    take seconds to lay out and render."""
    import textwrap

    from PIL import Image, ImageDraw

    images_dir, path = Path(images_dir), Path(path)
    queries = result["queries"]
    cols = 1 + min(GALLERY_COLUMNS, max(len(q["results"]) for q in queries))
    w, h = GALLERY_PANEL_PX
    canvas = Image.new("RGB", (cols * w, len(queries) * h), "white")
    draw = ImageDraw.Draw(canvas)
    font, bold = _gallery_fonts()
    line_h, wrap_at = 14, 36

    def panel(r: int, c: int, title: str, image, why: str, lines: list[str], colour=(0, 0, 0), italic_text=None):
        x0, y0 = c * w + 8, r * h + 6
        draw.text((x0, y0), title, fill=colour, font=bold)
        box_y = y0 + 20
        if italic_text is not None:  # a text query stands where a painting would
            for k, line in enumerate(textwrap.wrap(italic_text, 30)[:12]):
                draw.text((x0, box_y + 4 + k * line_h), line, fill=(40, 40, 40), font=font)
        elif image is not None:
            canvas.paste(
                image, (x0 + (GALLERY_THUMB_PX - image.width) // 2, box_y + (GALLERY_THUMB_PX - image.height) // 2)
            )
        else:
            draw.rectangle([x0, box_y, x0 + GALLERY_THUMB_PX, box_y + GALLERY_THUMB_PX], fill=(230, 230, 230))
            for k, line in enumerate(textwrap.wrap(why, 30)[:6]):
                draw.text((x0 + 4, box_y + 60 + k * line_h), line, fill=(0, 0, 0), font=font)
        y = box_y + GALLERY_THUMB_PX + 6
        room = (r + 1) * h - 4 - y
        wrapped = [part for line in lines for part in (textwrap.wrap(line, wrap_at) or [""])]
        for k, line in enumerate(wrapped[: room // line_h]):
            draw.text((x0, y + k * line_h), line, fill=(0, 0, 0), font=font)

    for r, q in enumerate(queries):
        top_emotion = q["emotions"][0]["emotion"]
        title = f"Q{r + 1} {q['kind']} -> {q['target']}"
        if q["kind"] == "image":
            image_path = Path(q["query"]["image"])
            im, why = _thumbnail(image_path.parent, image_path.name)
            lines = [image_path.name, *(_truth_lines(q["ground_truth"]) if "ground_truth" in q else [])]
            panel(r, 0, title, im, why, [*lines, f"nearest emotion: {top_emotion}"])
        else:
            panel(r, 0, title, None, "", [f"nearest emotion: {top_emotion}"], italic_text=f"\u201c{q['query']}\u201d")
        for c, res in enumerate(q["results"][: cols - 1], 1):
            gt = res["ground_truth"]
            im, why = _thumbnail(images_dir, res.get("image_name"))
            explanation = (
                f"[{res['explanation_emotion']}] {res['explanation']}"
                if "explanation" in res
                else f"1st human: {gt['explanation']}"
            )
            panel(
                r,
                c,
                f"#{res['rank']}  {res['score']:.3f}  {gt['dominant_emotion'] or 'none'}",
                im,
                why,
                [*_truth_lines(gt), explanation],
                colour=GALLERY_MATCH_COLOUR if gt["dominant_emotion"] == top_emotion else (0, 0, 0),
            )
        if r:
            draw.line([(0, r * h), (cols * w, r * h)], fill=(200, 200, 200))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


# ----------------------------------------------------------------------------- reports
def _fmt(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _figures_dir(out: Path) -> Path:
    return out.parent / f"{out.stem}_figures"


def write_evaluation_report(
    report: dict,
    out: str | Path,
    vad: dict | None = None,
    examples: list[dict] | None = None,
    examples_note: str | None = None,
) -> dict[str, Path]:
    """Write REPORT.json, REPORT.md and the plots; returns {what: path}. `report` is not modified.
    `examples` (from `pick_examples`) become a picture of paintings with their explanations;
    `examples_note` says why there is none."""
    from sevlm.evaluation.coco_caption import LANGUAGE_METRICS

    out = Path(out)
    figs = _figures_dir(out)
    written: dict[str, Path] = {}
    emo = report.get("emotions", {})
    if "confusion_matrix" in emo:
        written["confusion"] = plot_confusion(emo["confusion_matrix"], figs / "confusion_matrix.png")
        written["per_emotion"] = plot_per_emotion(emo["per_class"], figs / "per_emotion.png")
    full = dict(report)
    if vad is not None:
        written["vad"] = plot_vad(vad, figs / "vad.png")
        full["vad"] = {k: {kk: vv for kk, vv in v.items() if kk != "valence"} for k, v in vad.items()}
    if examples:
        written["examples"] = plot_examples(examples, figs / "examples.png")
        full["examples"] = [{k: v for k, v in ex.items() if k != "image"} for ex in examples]
    elif examples_note:
        full["examples_note"] = examples_note
    full["figures"] = {k: str(p.relative_to(out.parent)) for k, p in written.items()}
    out.unlink(missing_ok=True)  # REPORT.json is written last (_write_pair): never beside another run's .md

    lines = [
        "# Evaluation report",
        "",
        f"- predictions: `{full['predictions']}`",
        f"- references: `{full['references']}`",
        f"- scored images: {full['n_predictions']} of {full['n_reference_images']} (coverage {full['coverage']:.3f})",
    ]
    if full.get("warnings"):
        lines.append("- **warnings**: " + ", ".join(f"{k}: {v}" for k, v in full["warnings"].items()))
    lines += [
        "",
        "## Language (coco-caption)",
        "",
        "| " + " | ".join(LANGUAGE_METRICS) + " |",
        "|" + "---|" * len(LANGUAGE_METRICS),
        "| " + " | ".join(_fmt(full[k]) for k in LANGUAGE_METRICS) + " |",
        "",
    ]
    lines += [f"- {k}: unavailable ({v})" for k, v in full.get("unavailable", {}).items()]
    if full.get("because") == "last":
        lines.append(
            f'- explanations scored after their last "because" (the SEVLM authors\' scoring): '
            f"{full.get('explanations_cut_at_a_later_because', 0)} cut at a later one"
        )
    lines += [
        "",
        "## Emotion",
        "",
        f"- emotion accuracy: {_fmt(full['emotion_accuracy'])} over {full['emotion_accuracy_n']} images with a "
        "dominant emotion"
        f" (dominance rule: {full.get('dominance', 'artemis')})",
        f"- macro F1: {_fmt(emo.get('macro_f1'))}",
        f"- predictions whose emotion is not one of the 9: {_fmt(full['emotion_not_one_of_9_share'])}",
    ]
    if "emo_align" in full:
        acc = full.get("emo_classifier", {}).get("held_out_accuracy", {})
        lines.append(
            f"- Emo-Align: {_fmt(full['emo_align'])} over {full['emo_align_n']} images "
            f"(classifier: {full.get('emo_classifier', {}).get('kind', 'tfidf')}; held-out accuracy: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in acc.items() if not k.endswith("_n"))
            + ")"
        )
    if "per_class" in emo:
        lines += ["", "| emotion | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [
            f"| {e} | {_fmt(v['precision'])} | {_fmt(v['recall'])} | {_fmt(v['f1'])} | {v['support']} |"
            for e, v in emo["per_class"].items()
        ]
    lines += [
        "",
        "## Explanations",
        "",
        f"- distinct explanations: {_fmt(full['distinct_explanations_share'])}",
        f"- distinct-1: {_fmt(full.get('distinct_1'))}, distinct-2: {_fmt(full.get('distinct_2'))} (over all "
        "generated explanations)",
        f"- explanations with a repeated bigram: {_fmt(full.get('repeated_bigram_share'))}",
        f"- mean length (words): generated {_fmt(full['mean_length_words'])}, human "
        f"{_fmt(full['human_mean_length_words'])}",
        f"- copies of a training utterance: {_fmt(full.get('copied_training_share'))}"
        + ("" if full.get("copied_training_share") is not None else " (needs --dataset)"),
        f"- metaphor-like expressions (ArtEmis's phrases): generated {_fmt(full.get('metaphor_rate_generated'))}, "
        f"human {_fmt(full.get('metaphor_rate_human'))}",
    ]
    if "vad" in full:
        for k, v in full["vad"].items():
            lines.append(
                f"- VAD {k}: mean {[round(x, 3) for x in v['mean']] if v['mean'] else 'n/a'} (lexicon coverage "
                f"{_fmt(v['coverage'])})"
            )
    if "examples" in written:
        lines += ["", "## Examples", "", f"![examples]({written['examples'].relative_to(out.parent)})"]
    elif examples_note:
        lines += ["", "## Examples", "", f"- no picture of examples: {examples_note}"]
    if written.keys() - {"json", "examples"}:
        lines += ["", "## Figures", ""] + [
            f"![{k}]({p.relative_to(out.parent)})" for k, p in written.items() if k not in ("json", "examples")
        ]
    written.update(_write_pair(out, full, lines))
    return written


def _write_pair(out: Path, report: dict, lines: list[str]) -> dict[str, Path]:
    """REPORT.md, then REPORT.json (each atomic). The JSON comes last and the old one is removed
    before anything is written, so a kill at any moment never leaves a JSON beside a Markdown of
    another run: a JSON present means its Markdown is the one written with it."""
    out.unlink(missing_ok=True)
    md = out.with_suffix(".md")
    write_text(md, "\n".join(lines) + "\n")
    write_json(out, report)
    return {"json": out, "markdown": md}


def write_retrieval_report(result: dict, out: str | Path, embeddings=None) -> dict[str, Path]:
    """Write the retrieval JSON, a Markdown table (model vs exact chance, per dominant emotion),
    the recall@K plot, the image -> emotion confusion and, given the split's `embeddings`
    (SplitEmbeddings), the embedding map."""
    out = Path(out)
    out.unlink(missing_ok=True)  # written last (_write_pair)
    figs = _figures_dir(out)
    written = {"recall_curves": plot_recall_curves(result, figs / "recall_at_k.png")}
    i2e = result["model"]["image_to_emotion"]
    if "confusion" in i2e:
        written["image_to_emotion_confusion"] = plot_confusion(
            i2e["confusion"],
            figs / "image_to_emotion_confusion.png",
            title="Image -> nearest emotion embedding (row-normalised; numbers are counts)",
        )
    if embeddings is not None:
        written["embedding_map"] = plot_embedding_map(
            embeddings.image_emb, embeddings.emotion_emb, embeddings.image_dominant, figs / "embedding_map.png"
        )
    full = {**result, "figures": {k: str(p.relative_to(out.parent)) for k, p in written.items()}}
    ks = result["ks"]
    idx = result["model"]["index"]
    rand = result.get("random_embeddings")
    systems = ("model", "chance") + (("random_embeddings",) if rand else ())
    lines = [
        "# Retrieval report",
        "",
        f"- index: {idx['kind']} on {idx['device']} "
        f"({', '.join(f'{k}={v}' for k, v in idx.items() if k not in ('kind', 'device'))})",
        "- chance: the exact expectation under a random ordering of the gallery"
        + (f"; random embeddings: mean ± std over {rand['runs']} seeds" if rand else ""),
        "- ranks: 1 + the wrong items scoring at least as high as the best correct one (ties count against the query)",
    ]
    for d in ("image_to_explanation", "explanation_to_image"):
        r = result["model"][d]
        if "recall_vs_exact" in r:
            lines.append(
                f"- {d.replace('_', ' ')}: {idx['kind']} search's recall against the exact search: "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in r["recall_vs_exact"].items())
                + (f" (tuned to {r['tuned']['chosen']} for {r['tuned']['target']:g})" if "tuned" in r else "")
            )
    lines += [
        "",
        "| direction | system | " + " | ".join(f"R@{k}" for k in ks) + " | median rank |",
        "|---|---|" + "---|" * (len(ks) + 1),
    ]
    for d in ("image_to_explanation", "explanation_to_image"):
        for s in systems:
            r = result[s][d]
            cell = (
                (lambda k: f"{r[k]['mean']:.4f} ± {r[k]['std']:.4f}")
                if s == "random_embeddings"
                else (lambda k: _fmt(r[k]))
            )
            median = f"{r['median_rank']['mean']:g}" if s == "random_embeddings" else f"{r['median_rank']:g}"
            lines.append(
                f"| {d.replace('_', ' ')} | {s.replace('_', ' ')} | "
                + " | ".join(cell(f"R@{k}") for k in ks)
                + f" | {median} |"
            )
    lines += ["", "| emotion accuracy | model | chance (1/9) | majority class | n |", "|---|---|---|---|---|"]
    for d in ("image_to_emotion", "explanation_to_emotion", "explanation_to_own_emotion"):
        if d in result["model"]:
            c = result["chance"][d]
            lines.append(
                f"| {d.replace('_', ' ')} | {_fmt(result['model'][d]['accuracy'])} | {_fmt(c['accuracy'])} | "
                f"{_fmt(c['majority_class'])} | {result['model'][d]['n']} |"
            )
    per = i2e.get("per_emotion")
    if per:
        lines += [
            "",
            "Image-side figures by the image's dominant emotion (accuracy: image -> emotion, the class's "
            "recall; precision: of the images whose nearest emotion it is; R@K: image -> explanation, exact ranks)",
            "",
            "| dominant emotion | n | correct | accuracy | precision | "
            + " | ".join(f"R@{k}" for k in ks)
            + " | median rank |",
            "|---|---|---|---|---|" + "---|" * (len(ks) + 1),
        ]
        for e, g in per.items():
            lines.append(
                f"| {e} | {g['n']} | {g.get('correct', '')} | {_fmt(g.get('accuracy'))} | {_fmt(g.get('precision'))} | "
                + " | ".join(_fmt(g[f"R@{k}"]) for k in ks)
                + f" | {_fmt(g['median_rank'])} |"
            )
    stats = result.get("embedding_stats")
    if stats:
        lines += [
            "",
            "| embeddings | n | effective rank | total variance | mean pairwise cosine |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {side} | {st['n']} | {_fmt(st['effective_rank'])} | {_fmt(st['variance'])} | "
            f"{_fmt(st['mean_cosine'])} |"
            for side, st in stats.items()
        ]
        lines.append("(a collapsed side: mean cosine near 1, variance and effective rank near their minimum)")
    space = result.get("embedding_space")
    if space:
        lines += [
            "",
            f"- retrieval space: the {space['head']} head" + (f"; {space['note']}" if space.get("note") else ""),
        ]
    lines += [""] + [f"![{k.replace('_', ' ')}]({p.relative_to(out.parent)})" for k, p in written.items()]
    written.update(_write_pair(out, full, lines))
    return written


def evaluate_and_report(
    predictions,
    references,
    out,
    dataset_dir=None,
    vad_lexicon=None,
    strict: bool = True,
    retrain_classifier: bool = False,
    dominance: str = "artemis",
    emo_classifier: str = "tfidf",
    because: str = "first",
    artemis_classifier: tuple | None = None,
) -> dict:
    """Score, then write REPORT.json + .md + figures; returns the report dict. With `dataset_dir`:
    Emo-Align, copies of training utterances, and a picture of example paintings. With
    `emo_classifier="artemis"`, Emo-Align uses ArtEmis's released classifier,
    `artemis_classifier` = (checkpoint, vocabulary), with or without `dataset_dir`."""
    from sevlm.evaluation.metrics import evaluate

    classifier = training = images_dir = None
    if emo_classifier == "artemis":
        from sevlm.evaluation.artemis_checkpoint import ArtEmisTextClassifier

        if not artemis_classifier or not all(artemis_classifier):
            from sevlm.errors import ConfigError

            raise ConfigError("the 'artemis' Emo-Align classifier needs ArtEmis's checkpoint and vocabulary files")
        classifier = ArtEmisTextClassifier(*artemis_classifier)
    if dataset_dir:
        from sevlm.evaluation.emo_classifier import load_or_train, training_texts

        if classifier is None:
            classifier = load_or_train(dataset_dir, retrain=retrain_classifier, kind=emo_classifier)
        training = training_texts(dataset_dir)
        images_dir = _recorded_images_dir(dataset_dir)
    ev = evaluate(
        predictions,
        references,
        classifier=classifier,
        strict=strict,
        dominance=dominance,
        training_texts=training,
        because=because,
    )
    # per-image statistics for later paired tests (sevlm ablate), written before REPORT.json: a
    # REPORT.json that exists has them beside it
    from sevlm.evaluation.significance import image_statistics, write_statistics

    write_statistics(
        statistics_path(out),
        [p.image_id for p in ev.predictions],
        image_statistics(ev.predictions, ev.references, ev.captions, ev.emo_labels),
        {
            "predictions": str(predictions),
            "references": str(references),
            "dominance": dominance,
            "because": because,
            "emo_classifier": ev.report.get("emo_classifier", {}).get("kind"),
        },
    )
    vad = None
    if vad_lexicon:
        from sevlm.data.vad import VADLexicon

        lex = VADLexicon.load(vad_lexicon)
        human = [t for p in ev.predictions for t in ev.references[p.image_id].explanations]
        vad = vad_summary([p.explanation for p in ev.predictions], human, lex)
    if images_dir is not None:
        examples, note = pick_examples(ev, images_dir)
    elif dataset_dir:
        examples, note = [], f"{Path(dataset_dir) / 'manifest.json'}: no images folder recorded"
    else:
        examples, note = [], "no --dataset, whose manifest records the images folder"
    write_evaluation_report(ev.report, out, vad, examples, note)
    return ev.report


def statistics_path(report_json) -> Path:
    """Where `sevlm evaluate` keeps the per-image statistics of REPORT.json: REPORT_stats.npz beside it."""
    report_json = Path(report_json)
    return report_json.with_name(f"{report_json.stem}_stats.npz")


def _recorded_images_dir(dataset_dir) -> Path | None:
    from sevlm.data.folder import dataset_images_dir
    from sevlm.errors import DataError

    try:
        return dataset_images_dir(dataset_dir)
    except DataError:
        return None
