"""Retrieval embeddings from a trained run's contrastive head (the model side of `sevlm retrieve`).

- images: `model.embed_images(visual tokens)` from the HDF5 feature cache, streamed in batches;
- explanations: `model.embed_explanations(...)` on the sequence "the emotion is <annotator's emotion>
  because <explanation>" (text only: no image is involved), keeping the explanation embedding;
- emotions: `model.embed_emotions(...)` of the 9 sequences "the emotion is <label> because ...":
  the alignment head's emotion vectors, or without one the emotion segment's embedding, which
  comes before " because" (the decoder is causal), so it does not depend on the filler text.
A free-text query with no emotion of its own is embedded under each of the 9 labels and averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sevlm.data.folder import load_split_records
from sevlm.emotions import EMOTION_TO_INDEX, EMOTIONS
from sevlm.errors import DataError
from sevlm.evaluation.inputs import entry_dominant
from sevlm.features.hdf5 import FeatureStore
from sevlm.generate import parse_output
from sevlm.text import to_device

FILLER = "it"  # explanation text for the emotion-only sequences; the emotion embedding ignores it


@dataclass
class SplitEmbeddings:
    image_ids: list[str]
    image_emb: np.ndarray  # [I, E]
    image_dominant: np.ndarray  # [I] emotion index, -1 for none
    texts: list[str]  # human explanations, [N]
    text_image: np.ndarray  # [N] index into image_ids
    text_emotion: np.ndarray  # [N] annotator's emotion index
    text_emb: np.ndarray  # [N, E]
    emotion_emb: np.ndarray  # [9, E], EMOTIONS order


def _embed_sequences(
    run, pairs: list[tuple[str, str]], batch_size: int, desc: str, progress: bool, side: str = "explanations"
) -> np.ndarray:
    """Retrieval embeddings [N, E] of (emotion, explanation) sequences: of their explanations
    (`side="explanations"`), or of the 9 emotions (`side="emotions"`, the 9 sequences in EMOTIONS
    order), through the model's `embed_explanations` / `embed_emotions`."""
    embed = {"explanations": run.model.embed_explanations, "emotions": run.model.embed_emotions}[side]
    out = []
    with torch.no_grad():
        for s in tqdm(range(0, len(pairs), batch_size), desc=desc, unit="batch", disable=not progress):
            seqs = [run.builder.encode(e, x) for e, x in pairs[s : s + batch_size]]
            out.append(embed(**to_device(run.builder._stack(seqs), run.model.device)).cpu().numpy())  # (b, E)
    return np.concatenate(out)


def embed_emotions(run) -> np.ndarray:
    """[9, E] emotion embeddings in EMOTIONS order."""
    return _embed_sequences(run, [(e, FILLER) for e in EMOTIONS], len(EMOTIONS), "emotions", False, side="emotions")


def embed_query_text(run, text: str) -> np.ndarray:
    """[1, E] explanation embedding of a free-text query.

    "the emotion is awe because ..." is embedded as written; any other text is embedded under
    each of the 9 labels and the (normalised) mean is returned, since its emotion is unknown.
    """
    if not text.strip():
        raise DataError("--query: empty text")
    emotion, explanation, _ = parse_output(text)
    if emotion is not None and explanation:
        pairs = [(emotion, explanation)]
    else:
        pairs = [(e, text.strip()) for e in EMOTIONS]
    exp = _embed_sequences(run, pairs, len(pairs), "query", progress=False)
    q = exp.mean(axis=0, keepdims=True)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def embed_image_files(run, paths: list[str | Path]) -> np.ndarray:
    """[N, E] embeddings of image files, encoded with the run's recorded image encoder (ImageError
    names a file it cannot use)."""
    tokens = run.encode_images(list(paths))  # (N, T, D)
    with torch.no_grad():
        return run.model.embed_images(tokens).cpu().numpy()


def embed_split(
    run,
    dataset_dir: str | Path,
    split: str,
    features: str | Path | None,
    batch_size: int = 64,
    progress: bool = True,
    images: bool = True,
    texts: bool = True,
) -> SplitEmbeddings:
    """Embed a split's images (from the feature cache), its human explanations and the 9 emotions.

    `images=False` / `texts=False` skip that side (its embeddings are then empty [0, E] arrays).
    """
    records = load_split_records(dataset_dir, split)
    image_ids = list(records)
    if not image_ids:
        raise DataError(f"{dataset_dir}/{split}.json: no images")
    emotion_emb = embed_emotions(run)
    image_emb = [np.zeros((0, emotion_emb.shape[1]), dtype=np.float32)]
    if images:
        store = FeatureStore(features)
        run.check_visual_dim(store.token_shape[1], features)
        rows = [store.index_of(records[i]["image_name"]) for i in image_ids]  # DataError names a missing image
    with torch.no_grad():
        for s in tqdm(
            range(0, len(image_ids) if images else 0, batch_size),
            desc="embed images",
            unit="batch",
            disable=not progress,
        ):
            tok = np.stack([store.tokens(i) for i in rows[s : s + batch_size]])  # (b, T, D) float16
            bad = [k for k in range(len(tok)) if not np.isfinite(tok[k]).all()]
            if bad:  # else only "embeddings contain NaN or inf", naming nothing
                name = records[image_ids[s + bad[0]]]["image_name"]
                raise DataError(
                    f"{features}: image {name!r} has NaN or inf features"
                    + (f" ({len(bad)} such image(s) in this batch)" if len(bad) > 1 else "")
                    + "; extract it again"
                )
            visual = torch.from_numpy(tok.astype(np.float32))
            image_emb.append(run.model.embed_images(visual).cpu().numpy())
    if images:
        store.close()
    all_texts, text_image, text_emotion, dominant = [], [], [], []
    for k, image_id in enumerate(image_ids):
        rec = records[image_id]
        emos, exps = rec.get("emotions") or [], rec.get("explanations") or []
        if not exps or len(emos) != len(exps) or any(e not in EMOTION_TO_INDEX for e in emos):
            raise DataError(
                f"{dataset_dir}/{split}.json: image {image_id!r}: no explanations, or emotions that do not "
                "match them one to one / are not among the 9"
            )
        all_texts += exps
        text_image += [k] * len(exps)
        text_emotion += [EMOTION_TO_INDEX[e] for e in emos]
        d = entry_dominant(rec, f"{dataset_dir}/{split}.json: image {image_id!r}")
        dominant.append(EMOTION_TO_INDEX[d] if d is not None else -1)
    pairs = [(EMOTIONS[e], t) for e, t in zip(text_emotion, all_texts)] if texts else []
    text_emb = image_emb[0][:0]
    if pairs:
        text_emb = _embed_sequences(run, pairs, batch_size, "embed explanations", progress)
    return SplitEmbeddings(
        image_ids=image_ids,
        image_emb=np.concatenate(image_emb),
        image_dominant=np.asarray(dominant, dtype=np.int64),
        texts=all_texts,
        text_image=np.asarray(text_image, dtype=np.int64),
        text_emotion=np.asarray(text_emotion, dtype=np.int64),
        text_emb=text_emb,
        emotion_emb=emotion_emb,
    )
