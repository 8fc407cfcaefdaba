"""What every Emo-Align classifier shares: `predict` from `predict_proba`, and the storage of a
trained one (weights written first, then a JSON spec naming their sha256, so a half-saved
classifier is never loaded). Its own module so each kind imports it without importing the others."""

from __future__ import annotations

from pathlib import Path

from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError
from sevlm.io import atomic_path, read_json, sha256_file, write_json

SPEC_NAME = "classifier.json"
CLASSIFIER_KINDS = ("tfidf", "lstm")  # the kinds trained here (`sevlm evaluate --emo-classifier`)


class TextEmotionClassifier:
    """Base of the text -> emotion classifiers: a subclass sets `classes` and `predict_proba`."""

    classes: list[str]

    def predict_proba(self, texts: list[str]):
        raise NotImplementedError

    def predict(self, texts: list[str]) -> list[str]:
        """The most probable emotion of each text."""
        if not len(texts):
            return []
        return [self.classes[k] for k in self.predict_proba(list(texts)).argmax(axis=1)]


def save_spec(directory: str | Path, weights_name: str, write_weights, spec: dict) -> None:
    """Write the weights (`write_weights(tmp_path)`) atomically, then the JSON spec naming their sha256."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / weights_name) as tmp:
        write_weights(tmp)
    write_json(directory / SPEC_NAME, {**spec, "weights_sha256": sha256_file(directory / weights_name)}, indent=None)


def load_spec(directory: str | Path, fmt: str, weights_name: str) -> tuple[dict, Path, Path]:
    """The checked JSON spec, the weights path (its sha256 verified) and the spec's path."""
    directory = Path(directory)
    where = directory / SPEC_NAME
    spec = read_json(where)
    if not isinstance(spec, dict) or spec.get("format") != fmt:
        raise DataError(f"{where}: not a {fmt} file")
    weights = directory / weights_name
    if not weights.exists() or sha256_file(weights) != spec.get("weights_sha256"):
        raise DataError(f"{weights}: missing or does not match {where} (delete the folder to retrain)")
    classes = spec.get("classes")
    if not isinstance(classes, list) or any(c not in EMOTIONS for c in classes):
        raise DataError(f"{where}: unknown class in {classes}")
    return spec, weights, where
