"""The Emo-Align text classifier: same numbers as sklearn, safe storage, cached training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sevlm.emotions import EMOTIONS
from sevlm.errors import ConfigError, DataError
from sevlm.evaluation import emo_classifier as E
from sevlm.evaluation.metrics import emo_align


def test_matches_sklearn_pipeline_after_save_and_load(tmp_path, dataset_dir):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts, labels = E._annotations(dataset_dir, "train")
    clf = E.train_classifier(texts, labels)
    clf.save(tmp_path / "clf")
    loaded = E.EmotionClassifier.load(tmp_path / "clf")
    p = E.DEFAULT_PARAMS
    vec = TfidfVectorizer(
        lowercase=True,
        token_pattern=p["token_pattern"],
        ngram_range=tuple(p["ngram_range"]),
        min_df=p["min_df"],
        max_features=p["max_features"],
        sublinear_tf=True,
    )
    lr = LogisticRegression(C=p["C"], max_iter=1000, random_state=0).fit(vec.fit_transform(texts), labels)
    probe = ["a vast and majestic sky", "so lonely and grey", "words never seen before", ""]
    np.testing.assert_allclose(loaded.predict_proba(probe), lr.predict_proba(vec.transform(probe)), atol=1e-10)
    assert loaded.predict(probe) == list(lr.predict(vec.transform(probe)))
    assert loaded.classes == clf.classes and loaded.params == clf.params


def test_binary_classifier_roundtrip(tmp_path):
    clf = E.train_classifier(["calm quiet"] * 3 + ["dark scary"] * 3, ["contentment"] * 3 + ["fear"] * 3)
    clf.save(tmp_path)
    assert E.EmotionClassifier.load(tmp_path).predict(["so dark", "very quiet"]) == ["fear", "contentment"]


def test_load_or_train_caches_and_reports_held_out(tmp_path, dataset_dir):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset_dir, ds, ignore=shutil.ignore_patterns(E.CLASSIFIER_DIRNAME))
    clf = E.load_or_train(ds)
    acc = clf.meta["held_out_accuracy"]
    assert acc["val_n"] == 90 and acc["test_n"] == 60
    assert acc["val"] > 0.5 and acc["test"] > 0.5  # cue words make the emotions learnable
    weights = ds / E.CLASSIFIER_DIRNAME / "tfidf" / "weights.npz"
    mtime = weights.stat().st_mtime_ns
    again = E.load_or_train(ds)
    assert weights.stat().st_mtime_ns == mtime  # loaded, not retrained
    np.testing.assert_array_equal(again.coef, clf.coef)
    # a changed training split invalidates the cache
    train = json.loads((ds / "train.json").read_text())
    train.pop(next(iter(train)))
    (ds / "train.json").write_text(json.dumps(train))
    assert E.load_or_train(ds).meta["n_train"] == clf.meta["n_train"] - 5


def test_tampered_or_foreign_files_are_refused(tmp_path, dataset_dir):
    clf = E.train_classifier(*E._annotations(dataset_dir, "val"))
    clf.save(tmp_path)
    with np.load(tmp_path / "weights.npz") as z:
        arrays = dict(z)
    arrays["coef"] = arrays["coef"] * 2
    np.savez(tmp_path / "weights.npz", **arrays)
    with pytest.raises(DataError, match="does not match"):
        E.EmotionClassifier.load(tmp_path)
    (tmp_path / "classifier.json").write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(DataError, match="not a sevlm-emo-classifier"):
        E.EmotionClassifier.load(tmp_path)
    with pytest.raises(DataError, match="train.json: not found"):
        E.load_or_train(tmp_path / "empty")


def test_emo_align():
    out = emo_align(["awe", "fear", "awe", "sadness"], ["awe", "awe", None, "sadness"])
    assert out == {"emo_align": pytest.approx(2 / 3), "emo_align_n": 3}
    assert emo_align(["awe"], [None]) == {"emo_align": None, "emo_align_n": 0}


# ----------------------------------------------------------------------------- LSTM (ArtEmis's kind)
SMALL = {"embed_dim": 24, "hidden": 24, "min_steps": 150, "batch_size": 32, "lr": 1e-2}


def _separable(n_per_class: int, seed: int) -> tuple[list[str], list[str]]:
    """Sentences whose emotion is told by one of its cue words, among shared filler words."""
    import random

    from tests.evaluation.conftest import CUES

    rng = random.Random(seed)
    filler = "the painting looks very much like a scene with some colours and people in it".split()
    texts, labels = [], []
    for emotion in EMOTIONS:
        for _ in range(n_per_class):
            words = rng.sample(filler, 6) + [rng.choice(CUES[emotion].split())]
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(emotion)
    return texts, labels


@pytest.fixture(scope="module")
def lstm_clf():
    from sevlm.evaluation.emo_lstm import LSTMEmotionClassifier

    return LSTMEmotionClassifier.train(*_separable(30, seed=0), params=SMALL, seed=0)


def test_lstm_learns_separable_emotions(lstm_clf):
    texts, labels = _separable(10, seed=1)  # new sentences from the same cues
    assert E.accuracy(lstm_clf, texts, labels) >= 0.95
    assert lstm_clf.classes == list(EMOTIONS)
    p = lstm_clf.predict_proba(["", "a word never seen"])
    assert p.shape == (2, 9) and np.allclose(p.sum(axis=1), 1)


def test_lstm_is_deterministic_for_a_seed(lstm_clf):
    import torch

    from sevlm.evaluation.emo_lstm import LSTMEmotionClassifier

    again = LSTMEmotionClassifier.train(*_separable(30, seed=0), params=SMALL, seed=0)
    assert all(torch.equal(again.state[k], v) for k, v in lstm_clf.state.items())
    other = LSTMEmotionClassifier.train(*_separable(30, seed=0), params=SMALL, seed=1)
    assert not torch.equal(other.state["lstm.weight_ih_l0"], lstm_clf.state["lstm.weight_ih_l0"])


def test_lstm_storage_roundtrip_without_pickle(tmp_path, lstm_clf):
    from sevlm.evaluation.emo_lstm import LSTMEmotionClassifier

    lstm_clf.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.json", "weights.safetensors"]
    loaded = LSTMEmotionClassifier.load(tmp_path)
    probe = ["so dark and scary", "a calm quiet lake", "", "funny clown"]
    np.testing.assert_array_equal(loaded.predict_proba(probe), lstm_clf.predict_proba(probe))
    assert loaded.vocabulary == lstm_clf.vocabulary and loaded.params == lstm_clf.params
    assert loaded.describe()["kind"] == "lstm"
    # weights that do not match the recorded checksum, or the recorded shapes, are refused
    (tmp_path / "weights.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(DataError, match="does not match"):
        LSTMEmotionClassifier.load(tmp_path)
    lstm_clf.save(tmp_path)
    spec = json.loads((tmp_path / "classifier.json").read_text())
    spec["params"]["hidden"] = 7
    (tmp_path / "classifier.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="weights do not match"):
        LSTMEmotionClassifier.load(tmp_path)


def test_load_or_train_keys_the_cache_by_kind(tmp_path, dataset_dir):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset_dir, ds, ignore=shutil.ignore_patterns(E.CLASSIFIER_DIRNAME))
    lstm = E.load_or_train(ds, params=SMALL, kind="lstm")
    tfidf = E.load_or_train(ds, kind="tfidf")
    assert (ds / E.CLASSIFIER_DIRNAME / "lstm" / "weights.safetensors").exists()
    assert (ds / E.CLASSIFIER_DIRNAME / "tfidf" / "weights.npz").exists()
    assert lstm.describe()["kind"] == "lstm" and tfidf.describe()["kind"] == "tfidf"
    assert lstm.meta["held_out_accuracy"]["test"] > 0.5  # cue words make the emotions learnable
    mtime = (ds / E.CLASSIFIER_DIRNAME / "lstm" / "weights.safetensors").stat().st_mtime_ns
    assert E.load_or_train(ds, params=SMALL, kind="lstm").vocabulary == lstm.vocabulary
    assert (ds / E.CLASSIFIER_DIRNAME / "lstm" / "weights.safetensors").stat().st_mtime_ns == mtime  # cached
    with pytest.raises(ConfigError, match="'bert'"):
        E.load_or_train(ds, kind="bert")
