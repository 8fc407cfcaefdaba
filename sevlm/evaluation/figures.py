"""The PNG figures of the evaluation and retrieval reports: the emotion confusion, per-emotion
scores, VAD, recall@K curves, the embedding map and the picture of example paintings.

Drawn with matplotlib's Agg backend, so no display is needed; every file is written atomically.
pyplot is imported in `pyplot()`, after the backend is chosen, as matplotlib requires.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from sevlm.emotions import EMOTIONS
from sevlm.evaluation.scoring import normalize
from sevlm.io import atomic_path

EXAMPLE_COLUMNS = 4
EXAMPLE_PANEL_INCHES = (4.0, 5.0)  # width, height of one painting with its two explanations
EXAMPLE_DPI = 80  # with the panel size, fixes the picture's pixel size (no tight bounding box)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def plot_confusion(
    confusion: dict, path: Path, title: str = "Emotion confusion (row-normalised; numbers are counts)"
) -> Path:
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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


def plot_examples(examples: list[dict], path: Path) -> Path:
    """Paintings in a grid of EXAMPLE_COLUMNS, each above its generated and human explanation."""
    plt = pyplot()
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
