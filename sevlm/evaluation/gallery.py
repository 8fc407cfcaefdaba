"""A run's retrieval galleries: a split embedded with the run's contrastive head
(`sevlm.evaluation.embedding`), cached beside the run under what it depends on, indexed, scored by
`sevlm.evaluation.retrieval`, and written out (per-query ranks, exported embeddings)."""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sevlm.emotions import EMOTIONS
from sevlm.evaluation import embedding
from sevlm.evaluation.retrieval import Index, IndexOptions, retrieval_report
from sevlm.evaluation.scoring import emotion_ranks, image_emotion_hits, normalize
from sevlm.evaluation.significance import write_statistics
from sevlm.export import WEIGHTS
from sevlm.io import atomic_dir, atomic_path, sha256_file, write_json

CACHE_FORMAT = "sevlm-retrieval-gallery-2"  # 2: explanations carry their annotator's emotion


def _file_stamp(path) -> dict:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def gallery_key(run, dataset_dir, split: str, features, side: str) -> dict:
    """What a cached gallery depends on: the model (config and weights hashes), the split file
    and, for images, the feature cache (size and modification time)."""
    export = Path(run.path)
    key = {
        "format": CACHE_FORMAT,
        "side": side,
        "model": {
            "config_sha256": sha256_file(export / "config.json"),
            "weights_sha256": run.config.get("weights_sha256") or sha256_file(export / WEIGHTS),
        },
        "split": split,
        "split_file": _file_stamp(Path(dataset_dir) / f"{split}.json"),
    }
    if side == "images":
        key["features"] = _file_stamp(features)
    return key


def _read_gallery(folder: Path, key: dict) -> tuple[np.ndarray, np.ndarray, list[dict]] | None:
    """(gallery, emotions, names) cached in `folder` under `key`, or None (absent, stale or unreadable)."""
    try:
        if json.loads((folder / "key.json").read_text(encoding="utf-8")) != key:
            return None
        with np.load(folder / "gallery.npz") as z:
            gallery, emotions = z["gallery"], z["emotions"]
        names = json.loads((folder / "names.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return (gallery, emotions, names) if len(names) == len(gallery) else None


def _write_gallery(folder: Path, key: dict, gallery: np.ndarray, emotions: np.ndarray, names: list[dict]) -> None:
    with atomic_dir(folder) as tmp:  # a reader sees the old entry or the whole new one
        np.savez(tmp / "gallery.npz", gallery=gallery, emotions=emotions)
        write_json(tmp / "names.json", names, indent=None)
        write_json(tmp / "key.json", key)


def load_gallery(
    run,
    dataset_dir,
    split: str,
    features,
    side: str,
    options: IndexOptions = IndexOptions(),
    batch_size: int = 64,
    cache_dir=None,
    progress: bool = True,
):
    """One side ("images" | "explanations") of a split, embedded, with its index.

    With `cache_dir`, the embedded gallery and an approximate index are kept in
    `<cache_dir>/<split>-<side>/` under `gallery_key` and reused while the model, split and
    features are unchanged. Returns (gallery [N, E], emotions [9, E], names [N] ({"image_id"[,
    "explanation", "explanation_emotion"]}), cache {"path", "reused"} or None, Index).
    """
    folder = Path(cache_dir) / f"{split}-{side}" if cache_dir is not None else None
    key = gallery_key(run, dataset_dir, split, features, side) if folder else None
    cached = _read_gallery(folder, key) if folder else None
    if cached:
        gallery, emotions, names = cached
    else:
        emb = embedding.embed_split(
            run,
            dataset_dir,
            split,
            features,
            batch_size=batch_size,
            progress=progress,
            images=side == "images",
            texts=side == "explanations",
        )
        emotions = normalize(emb.emotion_emb)
        if side == "images":
            gallery, names = normalize(emb.image_emb), [{"image_id": i} for i in emb.image_ids]
        else:
            gallery = normalize(emb.text_emb)
            names = [
                {"image_id": emb.image_ids[i], "explanation": t, "explanation_emotion": EMOTIONS[e]}
                for t, i, e in zip(emb.texts, emb.text_image, emb.text_emotion)
            ]
        if folder:
            try:
                _write_gallery(folder, key, gallery, emotions, names)
            except OSError as e:  # a read-only run folder still searches, just without a cache
                print(f"warning: cannot cache the gallery in {folder} ({e})", file=sys.stderr)
                folder = None
    # an approximate index is kept beside the gallery, named by its build settings; a flat one
    # is only a copy of the gallery, rebuilt at memory speed
    build = {k: v for k, v in asdict(options).items() if k not in ("use_gpu", "nprobe", "ef_search", "tune_recall")}
    index_file = None
    if folder and options.kind != "flat":
        index_file = folder / f"index-{hashlib.sha256(repr(sorted(build.items())).encode()).hexdigest()[:12]}.faiss"
    if cached and index_file and index_file.exists():
        index = Index.load(index_file, options)
    else:
        index = Index(gallery, options)
        if index_file:
            index.save(index_file)
    cache = {"path": str(folder), "reused": bool(cached)} if folder else None
    return gallery, emotions, names, cache, index


def score_split(
    run,
    dataset_dir,
    split: str,
    features,
    options: IndexOptions = IndexOptions(),
    batch_size: int = 64,
    random_runs: int = 0,
    seed: int = 0,
    image_stats_out: str | Path | None = None,
    artifacts: dict | None = None,
) -> dict:
    """Embed a split's images, explanations and emotions and score retrieval between them; with
    `image_stats_out`, also write the per-image image -> emotion hits there for paired tests
    (significance.write_statistics). An `artifacts` dict receives "embeddings" (SplitEmbeddings)
    and "ranks" (each query's exact rank per direction), for `write_query_ranks` and
    `export_embeddings`."""
    emb = embedding.embed_split(run, dataset_dir, split, features, batch_size=batch_size)
    if image_stats_out is not None:
        write_statistics(
            image_stats_out,
            list(emb.image_ids),
            {"image_to_emotion": image_emotion_hits(emb.image_emb, emb.emotion_emb, emb.image_dominant)},
            {"split": split, "dataset": str(dataset_dir)},
        )
    ranks: dict = {}
    result = retrieval_report(
        emb.image_emb,
        emb.text_emb,
        emb.text_image,
        emb.emotion_emb,
        emb.image_dominant,
        options=options,
        random_runs=random_runs,
        seed=seed,
        ranks=ranks,
    )
    if artifacts is not None:
        artifacts.update(embeddings=emb, ranks=ranks)
    result["text_sequence"] = "the emotion is <annotator's emotion> because <explanation> (text only, no image)"
    result["embedding_space"] = retrieval_space(run.model)
    return result


def write_query_ranks(path: str | Path, emb, ranks: dict) -> Path:
    """Every query's exact rank, one JSON line each, images first: {"direction": "image_to_emotion",
    "image_id", "dominant_emotion", "nearest_emotion", "rank" (of the dominant among the 9, null
    without one)}, {"direction": "image_to_explanation", "image_id", "rank" (of the best
    ranked of its own explanations)}, then {"direction": "explanation_to_image", "image_id", "explanation_index"
    (in the split's order), "explanation", "rank" (of its painting)}."""
    dominant = np.asarray(emb.image_dominant)
    nearest, emo_rank = emotion_ranks(emb.image_emb, emb.emotion_emb, dominant)
    name = lambda k: EMOTIONS[k] if k >= 0 else None  # noqa: E731
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, image_id in enumerate(emb.image_ids):
            f.write(
                json.dumps(
                    {
                        "direction": "image_to_emotion",
                        "image_id": image_id,
                        "dominant_emotion": name(dominant[i]),
                        "nearest_emotion": EMOTIONS[nearest[i]],
                        "rank": int(emo_rank[i]) or None,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
        for i, image_id in enumerate(emb.image_ids):
            f.write(
                json.dumps(
                    {
                        "direction": "image_to_explanation",
                        "image_id": image_id,
                        "rank": int(ranks["image_to_explanation"][i]),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
        for t, (i, text) in enumerate(zip(emb.text_image, emb.texts)):
            f.write(
                json.dumps(
                    {
                        "direction": "explanation_to_image",
                        "image_id": emb.image_ids[i],
                        "explanation_index": t,
                        "explanation": text,
                        "rank": int(ranks["explanation_to_image"][t]),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    return Path(path)


EXPORT_FORMAT = "sevlm-retrieval-embeddings-1"


def export_embeddings(folder: str | Path, emb, meta: dict) -> Path:
    """The split's L2-normalised embeddings as .npy arrays with their ids (docs/RETRIEVAL.md):
    images.npy [I, E], explanations.npy [N, E], emotions.npy [9, E] (float32, row i of each is
    id i of ids.json), explanation_image.npy [N] (int64 row of images.npy), image_dominant.npy
    [I] (int64 index into EMOTIONS, -1 for none), and ids.json. Inner product = cosine, so a
    faiss.IndexFlatIP over them reproduces `sevlm retrieve`'s ranks."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:  # a reader sees the old export or the whole new one
        np.save(tmp / "images.npy", normalize(emb.image_emb))
        np.save(tmp / "explanations.npy", normalize(emb.text_emb))
        np.save(tmp / "emotions.npy", normalize(emb.emotion_emb))
        np.save(tmp / "explanation_image.npy", np.asarray(emb.text_image, dtype=np.int64))
        np.save(tmp / "image_dominant.npy", np.asarray(emb.image_dominant, dtype=np.int64))
        write_json(
            tmp / "ids.json",
            {
                "format": EXPORT_FORMAT,
                **meta,
                "dim": int(emb.image_emb.shape[1]),
                "normalised": True,
                "images": list(emb.image_ids),
                "emotions": list(EMOTIONS),
                "explanations": list(emb.texts),
                "explanation_emotions": [EMOTIONS[e] for e in emb.text_emotion],
            },
        )
    return folder


def retrieval_space(model) -> dict:
    """Which projections a model (SEVLM) retrieves with, and whether its image side was trained."""
    head = "alignment" if model.retrieval_head() is model.contrastive.align else "ternary"
    if model.config.mode == "none":
        return {
            "head": head,
            "image_side_trained": False,
            "note": "model.mode=none (the no-image control): no loss reads the image, so its image "
            "embeddings are the untrained initial projection of the features; image-side figures "
            "show what an untrained projection gives, and only its text-side figures are trained",
        }
    return {"head": head, "image_side_trained": True}
