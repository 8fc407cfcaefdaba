"""FAISS retrieval against numpy brute force, and the retrieval scores on known embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from sevlm.constants import EMOTIONS
from sevlm.errors import ConfigError, DataError
from sevlm.evaluation import retrieval as R


def _unit(rng, n, d):
    return R.normalize(rng.standard_normal((n, d)))


def test_flat_search_equals_numpy_brute_force():
    rng = np.random.default_rng(0)
    gallery, queries = _unit(rng, 2000, 32), _unit(rng, 50, 32)
    index = R.Index(gallery)
    scores, ids = index.search(queries, 10)
    full = queries @ gallery.T  # [50, 2000]
    expected = np.argsort(-full, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-5)
    assert index.describe()["device"] == ("gpu" if R.gpu_available() else "cpu")


def test_exact_ranks_and_hits_equal_brute_force():
    rng = np.random.default_rng(1)
    gallery, queries = _unit(rng, 300, 16), _unit(rng, 40, 16)
    gallery_label = rng.integers(0, 40, 300)
    query_label = np.arange(40)
    ranks = R.exact_ranks(queries, query_label, gallery, gallery_label, block=7)
    full = queries @ gallery.T
    for q in range(40):
        order = np.argsort(-full[q])
        hit = np.flatnonzero(gallery_label[order] == q)
        assert ranks[q] == (hit[0] + 1 if len(hit) else len(gallery) + 1)
    _, ids = R.Index(gallery).search(queries, 10)
    hits = R.hits_at_k(ids, query_label, gallery_label, (1, 5, 10))
    for k in (1, 5, 10):
        assert hits[f"R@{k}"] == pytest.approx(np.mean(ranks <= k))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indices_have_high_recall(kind):
    rng = np.random.default_rng(2)
    centers = _unit(rng, 50, 32)
    gallery = R.normalize(centers[rng.integers(0, 50, 3000)] + 0.3 * rng.standard_normal((3000, 32)))
    queries = R.normalize(centers[rng.integers(0, 50, 200)] + 0.3 * rng.standard_normal((200, 32)))
    _, exact = R.Index(gallery).search(queries, 10)
    index = R.Index(gallery, R.IndexOptions(kind=kind))
    _, approx = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9, recall
    assert index.describe()["kind"] == kind


def test_retrieval_report_on_known_embeddings():
    rng = np.random.default_rng(3)
    n_img, per, dim = 60, 3, 64
    emotion_emb = _unit(rng, 9, dim)
    image_dominant = np.array([k % 9 if k % 5 else -1 for k in range(n_img)])
    image_emb = _unit(rng, n_img, dim) + 2.0 * emotion_emb[np.maximum(image_dominant, 0)] * (image_dominant >= 0)[:, None]
    text_image = np.repeat(np.arange(n_img), per)
    text_emb = image_emb[text_image] + 0.05 * rng.standard_normal((n_img * per, dim))
    out = R.retrieval_report(image_emb, text_emb, text_image, emotion_emb, image_dominant, text_emotion=np.zeros(n_img * per))
    model, base = out["model"], out["random_baseline"]
    assert model["image_to_explanation"]["R@1"] == 1.0 and model["image_to_explanation"]["median_rank"] == 1
    assert model["explanation_to_image"]["R@1"] == 1.0
    assert model["image_to_emotion"] == {"accuracy": 1.0, "n": 48}
    assert model["explanation_to_emotion"] == {"accuracy": 1.0, "n": 144}
    assert model["explanation_to_own_emotion"]["n"] == 180
    assert base["image_to_explanation"]["R@1"] < 0.2 and base["explanation_to_image"]["median_rank"] > 5
    assert model["index"]["kind"] == "flat" and model["index"]["size"] == n_img * per
    curve = model["image_to_explanation"]["recall_curve"]
    assert list(curve) == ["1", "2", "5", "10", "20", "50", "100"] and curve["1"] == 1.0


def test_bad_inputs():
    rng = np.random.default_rng(4)
    img, txt, emo = _unit(rng, 4, 8), _unit(rng, 8, 8), _unit(rng, 9, 8)
    dom = np.zeros(4)
    with pytest.raises(DataError, match="shapes disagree"):
        R.retrieval_metrics(img, txt[:, :4], np.repeat(np.arange(4), 2), emo, dom)
    with pytest.raises(DataError, match="at least one explanation"):
        R.retrieval_metrics(img, txt, np.zeros(8), emo, dom)
    with pytest.raises(DataError, match="index of an image"):
        R.retrieval_metrics(img, txt, np.full(8, 7), emo, dom)
    with pytest.raises(DataError, match="NaN"):
        R.normalize(np.full((2, 3), np.nan))
    with pytest.raises(ConfigError, match="index kind"):
        R.Index(img, R.IndexOptions(kind="lsh"))
    assert len(EMOTIONS) == emo.shape[0]


@pytest.mark.gpu
def test_gpu_index_matches_cpu():
    if not R.gpu_available():
        pytest.skip("faiss has no GPU support here (install faiss-gpu-cu12)")
    rng = np.random.default_rng(5)
    gallery, queries = _unit(rng, 5000, 64), _unit(rng, 100, 64)
    cpu, gpu = R.Index(gallery, R.IndexOptions(use_gpu=False)), R.Index(gallery, R.IndexOptions(use_gpu=True))
    assert cpu.device == "cpu" and gpu.device == "gpu"
    (sc, ic), (sg, ig) = cpu.search(queries, 10), gpu.search(queries, 10)
    assert (ic == ig).mean() > 0.99
    np.testing.assert_allclose(sc, sg, atol=1e-4)


def test_gpu_request_without_gpu_support_is_refused():
    if R.gpu_available():
        pytest.skip("a GPU is available")
    with pytest.raises(ConfigError, match="GPU index was asked for"):
        R.Index(np.eye(4, dtype=np.float32), R.IndexOptions(use_gpu=True))
