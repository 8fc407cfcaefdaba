"""Predictions from a trained run: for a split of the feature cache (`generate_split`, JSON lines
described by a `<out>.meta.json` sidecar) or for image files (`predict_images`), each decoded with
the run's recorded decoding or changes to it (`run_decoding`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sevlm.config import from_dict
from sevlm.decoding import DecodingConfig
from sevlm.errors import DataError
from sevlm.export import load_run
from sevlm.features.hdf5 import H5FeatureDataset
from sevlm.generate import generate, generate_for_features, prediction_record
from sevlm.io import write_json, write_text


def run_decoding(run, decoding: DecodingConfig | dict | None = None) -> DecodingConfig:
    """The decoding to use with a LoadedRun: `decoding` itself when it is a DecodingConfig, else
    the run's recorded one (its train config's `decoding` section, else the defaults) with the
    changes in the dict `decoding` applied (see `DecodingConfig.updated`)."""
    if isinstance(decoding, DecodingConfig):
        return decoding
    section = (run.config.get("train") or {}).get("decoding")
    recorded = from_dict(DecodingConfig, section, where=f"{run.path / 'config.json'}:train.decoding")
    return recorded.updated(**(decoding or {}))


PREDICTIONS_META_FORMAT = "sevlm-predictions-meta-1"


def predictions_meta_path(predictions: str | Path) -> Path:
    """The sidecar that describes a predictions file: `<predictions>.meta.json`."""
    predictions = Path(predictions)
    return predictions.with_name(predictions.name + ".meta.json")


def split_visual_tokens(features_path: str | Path, dataset_dir: str | Path, split: str) -> tuple[list[str], np.ndarray]:
    """(image_ids, tokens (N, T, D)) of a split's images from the HDF5 feature cache.

    Images without features (failed extraction) are left out with a warning by the reader.
    """
    ds = H5FeatureDataset(features_path, dataset_dir, split)
    if len(ds) == 0:
        raise DataError(f"{dataset_dir}: split {split!r} has no images with features in {features_path}")
    image_ids = [image_id for image_id, _, _ in ds.items]
    tokens = np.stack([np.asarray(ds.store.tokens(row), dtype=np.float32) for _, _, row in ds.items])  # (N, T, D)
    return image_ids, tokens


def generate_split(
    run_dir: str | Path,
    split: str,
    out: str | Path,
    dataset_dir: str | Path | None = None,
    features: str | Path | None = None,
    batch_size: int = 32,
    decoding: DecodingConfig | dict | None = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Predictions for a split as JSON lines {"image_id","emotion","explanation","emotion_prob","raw"},
    described by the sidecar `<out>.meta.json` (run, split, decoding, batch size).

    Dataset folder and feature cache default to those recorded in the run's config; `decoding`
    is a DecodingConfig, or changes to the run's own (see `run_decoding`).
    """
    run = load_run(run_dir, device=device)
    decoding = run_decoding(run, decoding)
    recorded = run.data_paths
    dataset_dir = dataset_dir or recorded.dataset_dir
    features = features or recorded.features
    if not dataset_dir:
        raise DataError(f"{run_dir}: no dataset_dir recorded in the run config; pass it explicitly")
    if not features:
        raise DataError(f"{run_dir}: no feature cache recorded in the run config; pass --features")
    image_ids, tokens = split_visual_tokens(features, dataset_dir, split)
    run.check_visual_dim(tokens.shape[-1], features)
    preds = generate_for_features(run, tokens, image_ids, batch_size=batch_size, decoding=decoding)
    write_text(out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
    # batch_size is recorded for the record only: each image samples from its own stream (seed, image id)
    write_json(
        predictions_meta_path(out),
        {
            "format": PREDICTIONS_META_FORMAT,
            "run": str(run.path),
            "split": split,
            "count": len(preds),
            "batch_size": batch_size,
            "decoding": decoding.to_dict(),
        },
    )
    return preds


def predict_images(
    run_dir: str | Path,
    image_paths: Sequence[str | Path],
    decoding: DecodingConfig | dict | None = None,
    device: str = "cpu",
    lexicon: str | None = None,
) -> list[dict[str, Any]]:
    """Encode image files with the run's recorded encoder and decode each (`decoding` as in
    `generate_split`); one dict per image."""
    run = load_run(run_dir, device=device, lexicon=lexicon)
    decoding = run_decoding(run, decoding)
    tokens = run.encode_images(image_paths, device)  # (N, T, D)
    # an image's sampling stream, whatever its batch-mates: "<folder>/<name>", the image id `prepare` gives
    # a painting stored as <Style>/<painting>.jpg, so predict and generate sample it alike
    keys = [f"{Path(p).parent.name}/{Path(p).stem}" for p in image_paths]
    hyps = generate(run.model, run.tokenizer, run.lexicon, tokens, decoding, vocab=run.vocab, image_keys=keys)
    return [{"image": str(p), **prediction_record(Path(p).stem, h)} for p, h in zip(image_paths, hyps)]
