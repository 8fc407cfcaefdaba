"""The evaluation and retrieval reports: REPORT.json, a Markdown summary and the figures.

`write_evaluation_report(report, out)` writes `out` (JSON), `out` with suffix .md and the
figures (`figures`) in `<out stem>_figures/`; `write_retrieval_report` does the same for
`sevlm retrieve`, and `evaluate_and_report` scores a predictions file and writes its report.
The JSON is written last, so a JSON present always has the Markdown written with it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sevlm.data.folder import dataset_images_dir, resolve_image
from sevlm.data.vad import VADLexicon
from sevlm.errors import ConfigError, DataError
from sevlm.evaluation.artemis_checkpoint import ArtEmisTextClassifier
from sevlm.evaluation.coco_caption import LANGUAGE_METRICS
from sevlm.evaluation.emo_classifier import load_or_train, training_texts
from sevlm.evaluation.figures import EXAMPLE_DPI as EXAMPLE_DPI
from sevlm.evaluation.figures import EXAMPLE_PANEL_INCHES as EXAMPLE_PANEL_INCHES
from sevlm.evaluation.figures import (
    plot_confusion,
    plot_embedding_map,
    plot_examples,
    plot_per_emotion,
    plot_recall_curves,
    plot_vad,
)
from sevlm.evaluation.metrics import evaluate
from sevlm.evaluation.significance import image_statistics, write_statistics
from sevlm.io import write_json, write_text

# `name as name`: names importers reach as `report.<name>` (tests take the module whole).

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
EXAMPLE_PAINTINGS = 8


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


def pick_examples(ev, images_dir: str | Path, n: int = EXAMPLE_PAINTINGS) -> tuple[list[dict], str | None]:
    """Up to `n` scored paintings, spread evenly over the sorted image ids among those whose image
    is in `images_dir`, each with its generated and first human explanation; or ([], why not)."""
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
    classifier = training = images_dir = None
    if emo_classifier == "artemis":
        if not artemis_classifier or not all(artemis_classifier):
            raise ConfigError("the 'artemis' Emo-Align classifier needs ArtEmis's checkpoint and vocabulary files")
        classifier = ArtEmisTextClassifier(*artemis_classifier)
    if dataset_dir:
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
    try:
        return dataset_images_dir(dataset_dir)
    except DataError:
        return None
