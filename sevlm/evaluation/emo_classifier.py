"""Text -> emotion classifiers for the Emo-Align score, trained on the training split.

Two kinds, chosen with `sevlm evaluate --emo-classifier`:
- "tfidf" (default): TF-IDF + logistic regression. Prediction recomputes TF-IDF directly
  from the saved vocabulary and idf weights, which is what sklearn's TfidfVectorizer does;
  a test holds the two to the same probabilities.
- "lstm": ArtEmis's kind of classifier (word embeddings -> LSTM -> max-pool -> MLP), for
  numbers comparable with ArtEmis's Emo-Align (sevlm.evaluation.emo_lstm).
(A third, "artemis", is not trained here: ArtEmis's released checkpoint, read without running
pickle code by sevlm.evaluation.artemis_checkpoint.)

Each is trained once on the training split's human explanations (each labelled with its
annotator's emotion) and saved beside the dataset in `DATASET_DIR/emo_classifier/<kind>/` as
plain JSON + a weights file (numpy archive or safetensors; no pickle: loading runs no code).
The JSON is written last and names the weights' sha256, so a half-saved classifier is never
loaded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from sevlm.errors import ConfigError, DataError
from sevlm.evaluation.emo_base import CLASSIFIER_KINDS, SPEC_NAME, TextEmotionClassifier, load_spec, save_spec
from sevlm.evaluation.emo_lstm import LSTMEmotionClassifier
from sevlm.io import read_json, sha256_file

CLASSIFIER_DIRNAME = "emo_classifier"
FORMAT = "sevlm-emo-classifier/1"
DEFAULT_PARAMS = {
    "lowercase": True,
    "token_pattern": r"(?u)\b\w+\b",
    "ngram_range": [1, 2],
    "min_df": 2,
    "max_features": 100_000,
    "sublinear_tf": True,
    "C": 4.0,
}


@dataclass
class EmotionClassifier(TextEmotionClassifier):
    classes: list[str]
    vocabulary: list[str]  # feature index -> term
    idf: np.ndarray  # [V]
    coef: np.ndarray  # [C, V]
    intercept: np.ndarray  # [C]
    params: dict
    meta: dict = field(default_factory=dict)  # training data checksum, held-out accuracy, ...
    DEFAULT_PARAMS: ClassVar[dict] = DEFAULT_PARAMS

    @classmethod
    def train(
        cls, texts: list[str], labels: list[str], params: dict | None = None, seed: int = 0
    ) -> "EmotionClassifier":
        return train_classifier(texts, labels, params, seed)

    def features(self, texts: list[str]):
        """TF-IDF rows [N, V] (sparse), l2-normalised, exactly as TfidfVectorizer computes them."""
        vec = CountVectorizer(
            vocabulary={t: i for i, t in enumerate(self.vocabulary)},
            lowercase=self.params["lowercase"],
            token_pattern=self.params["token_pattern"],
            ngram_range=tuple(self.params["ngram_range"]),
            dtype=np.float64,
        )
        x = vec.transform(list(texts)).tocsr()
        if self.params["sublinear_tf"]:
            np.log(x.data, out=x.data)
            x.data += 1.0
        x = x.multiply(self.idf[None, :]).tocsr()
        return normalize(x, norm="l2")

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        logits = self.features(texts) @ self.coef.T + self.intercept  # [N, C]
        logits = np.asarray(logits)
        if len(self.classes) == 2:  # sklearn's binary case: one logit for classes[1]
            logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def describe(self) -> dict:
        return {
            "kind": "tfidf",
            "format": FORMAT,
            "classes": self.classes,
            "n_features": len(self.vocabulary),
            "params": self.params,
            **self.meta,
        }

    # -- storage (no pickle) ----------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, idf=self.idf, coef=self.coef, intercept=self.intercept)

        save_spec(
            directory,
            "weights.npz",
            write,
            {
                "format": FORMAT,
                "classes": self.classes,
                "params": self.params,
                "meta": self.meta,
                "vocabulary": self.vocabulary,
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> "EmotionClassifier":
        spec, weights, where = load_spec(directory, FORMAT, "weights.npz")
        with np.load(weights, allow_pickle=False) as z:
            idf, coef, intercept = z["idf"], z["coef"], z["intercept"]
        vocab, classes = spec["vocabulary"], spec["classes"]
        n_out = 1 if len(classes) == 2 else len(classes)
        if idf.shape != (len(vocab),) or coef.shape != (n_out, len(vocab)) or intercept.shape != (n_out,):
            raise DataError(f"{weights}: array shapes do not match the vocabulary/classes in {where}")
        params = {**DEFAULT_PARAMS, **spec["params"]}
        return cls(classes, vocab, idf, coef, intercept, params, spec.get("meta", {}))


def train_classifier(
    texts: list[str], labels: list[str], params: dict | None = None, seed: int = 0
) -> EmotionClassifier:
    """Fit TF-IDF + multinomial logistic regression on human explanations and their emotions."""
    params = {**DEFAULT_PARAMS, **(params or {})}
    if len(set(labels)) < 2:
        raise DataError("emotion classifier: training data holds fewer than 2 emotions")
    vec = TfidfVectorizer(
        lowercase=params["lowercase"],
        token_pattern=params["token_pattern"],
        ngram_range=tuple(params["ngram_range"]),
        min_df=min(params["min_df"], len(texts)),
        max_features=params["max_features"],
        sublinear_tf=params["sublinear_tf"],
    )
    x = vec.fit_transform(texts)
    clf = LogisticRegression(C=params["C"], max_iter=1000, random_state=seed).fit(x, labels)
    vocab = [None] * len(vec.vocabulary_)
    for term, i in vec.vocabulary_.items():
        vocab[i] = term
    return EmotionClassifier(
        classes=[str(c) for c in clf.classes_],
        vocabulary=vocab,
        idf=vec.idf_.astype(np.float64),
        coef=clf.coef_.astype(np.float64),
        intercept=clf.intercept_.astype(np.float64),
        params=params,
    )


def _annotations(dataset_dir: Path, split: str) -> tuple[list[str], list[str]]:
    path = dataset_dir / f"{split}.json"
    data = read_json(path)
    texts, labels = [], []
    for image_id, entry in data.items():
        try:
            texts.extend(entry["explanations"])
            labels.extend(entry["emotions"])
        except (KeyError, TypeError):
            raise DataError(f"{path}: image {image_id!r} lacks 'explanations'/'emotions'") from None
    return texts, labels


def training_texts(dataset_dir: str | Path) -> list[str]:
    """The training split's human explanations."""
    return _annotations(Path(dataset_dir), "train")[0]


def accuracy(clf, texts: list[str], labels: list[str]) -> float | None:
    if not texts:
        return None
    return float(np.mean([p == y for p, y in zip(clf.predict(texts), labels)]))


def _kind(kind: str):
    """The classifier class of a kind."""
    if kind == "tfidf":
        return EmotionClassifier
    if kind == "lstm":
        return LSTMEmotionClassifier
    raise ConfigError(f"emotion classifier {kind!r}: expected one of {', '.join(CLASSIFIER_KINDS)}")


def load_or_train(
    dataset_dir: str | Path, params: dict | None = None, retrain: bool = False, kind: str = "tfidf", seed: int = 0
):
    """The dataset's classifier of `kind` from `DATASET_DIR/emo_classifier/<kind>/`, trained and
    saved on first use. A saved classifier is reused only while train.json is unchanged (its
    sha256 is recorded) and its parameters are the ones asked for."""
    cls = _kind(kind)
    dataset_dir = Path(dataset_dir)
    train_json = dataset_dir / "train.json"
    if not train_json.exists():
        raise DataError(f"{train_json}: not found (the emotion classifier trains on the train split)")
    directory = dataset_dir / CLASSIFIER_DIRNAME / kind
    train_sha = sha256_file(train_json)
    wanted = {**cls.DEFAULT_PARAMS, **(params or {})}
    if not retrain and (directory / SPEC_NAME).exists():
        clf = cls.load(directory)
        if clf.meta.get("train_sha256") == train_sha and clf.params == wanted and clf.meta.get("seed", 0) == seed:
            return clf
    texts, labels = _annotations(dataset_dir, "train")
    print(
        f"training the Emo-Align {kind} classifier on {len(texts)} human explanations (once; cached in {directory})",
        file=sys.stderr,
    )
    clf = cls.train(texts, labels, wanted, seed=seed)
    clf.meta = {"train_sha256": train_sha, "n_train": len(texts), "seed": seed, "held_out_accuracy": {}}
    for split in ("val", "test"):
        if (dataset_dir / f"{split}.json").exists():
            t, y = _annotations(dataset_dir, split)
            clf.meta["held_out_accuracy"][split] = accuracy(clf, t, y)
            clf.meta["held_out_accuracy"][f"{split}_n"] = len(t)
    clf.save(directory)
    return clf
