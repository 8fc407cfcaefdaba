"""FAISS retrieval against numpy brute force, and the retrieval scores on known embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from sevlm.emotions import EMOTIONS
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
    image_emb = (
        _unit(rng, n_img, dim) + 2.0 * emotion_emb[np.maximum(image_dominant, 0)] * (image_dominant >= 0)[:, None]
    )
    text_image = np.repeat(np.arange(n_img), per)
    text_emb = image_emb[text_image] + 0.05 * rng.standard_normal((n_img * per, dim))
    out = R.retrieval_report(
        image_emb, text_emb, text_image, emotion_emb, image_dominant, text_emotion=np.zeros(n_img * per)
    )
    model, chance = out["model"], out["chance"]
    assert model["image_to_explanation"]["R@1"] == 1.0 and model["image_to_explanation"]["median_rank"] == 1
    assert model["explanation_to_image"]["R@1"] == 1.0
    i2e = model["image_to_emotion"]
    assert (i2e["accuracy"], i2e["n"]) == (1.0, 48) and np.trace(i2e["confusion"]["counts"]) == 48
    assert model["explanation_to_emotion"] == {"accuracy": 1.0, "n": 144}
    assert model["explanation_to_own_emotion"]["n"] == 180
    # 3 of 180 texts are right for each image; 1 of 60 images for each text
    assert chance["image_to_explanation"]["R@1"] == pytest.approx(3 / 180)
    assert chance["explanation_to_image"]["R@1"] == pytest.approx(1 / 60)
    assert chance["explanation_to_image"]["median_rank"] == 30.5 and chance["explanation_to_image"]["mean_rank"] == 30.5
    assert chance["image_to_explanation"]["mean_rank"] == pytest.approx(181 / 4)
    assert chance["image_to_emotion"]["accuracy"] == pytest.approx(1 / 9) and chance["image_to_emotion"]["n"] == 48
    assert chance["explanation_to_own_emotion"]["majority_class"] == 1.0  # every annotator said "amusement"
    assert "random_embeddings" not in out
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


def _chance_by_enumeration(n, m, k):
    """Exact P(one of m relevant among the first k) by counting every k-subset of the gallery."""
    from itertools import combinations

    subsets = list(combinations(range(n), k))
    return sum(any(i < m for i in c) for c in subsets) / len(subsets)


@pytest.mark.parametrize("n,m,k", [(6, 1, 1), (6, 2, 2), (7, 3, 2), (8, 2, 5), (5, 4, 2), (5, 2, 5)])
def test_chance_recall_equals_enumeration(n, m, k):
    assert R.chance_recall(n, [m], k)[0] == pytest.approx(_chance_by_enumeration(n, m, k), abs=1e-12)


def test_chance_levels_match_random_permutations():
    rng = np.random.default_rng(7)
    n, relevant, trials = 12, np.array([1, 2, 3, 3, 5]), 40_000
    ranks = np.empty((trials, len(relevant)), dtype=np.int64)
    for q, m in enumerate(relevant):
        # a random permutation places the m relevant items at m distinct random positions; rank = the first
        ranks[:, q] = 1 + rng.random((trials, n)).argsort(axis=1)[:, :m].min(axis=1)
    chance = R.chance_direction(n, relevant, ks=(1, 2, 5, 10))
    for k in (1, 2, 5, 10):
        assert chance[f"R@{k}"] == pytest.approx((ranks <= k).mean(), abs=0.01)
    assert chance["mean_rank"] == pytest.approx(ranks.mean(), abs=0.05)
    assert chance["median_rank"] == np.median(ranks)  # pooled over queries
    assert chance["median_rank"] == 3.0 and chance["mean_rank"] == pytest.approx(np.mean((n + 1) / (relevant + 1)))


def test_chance_median_rank_of_one_relevant_item_is_the_middle():
    assert R.chance_median_rank(6, [1, 1]) == 3.5 and R.chance_median_rank(7, [1]) == 4.0
    # ArtEmis-size test split: stable for big N, and close to N/(2m) for many items
    assert R.chance_recall(45_000, [5], 1)[0] == pytest.approx(5 / 45_000)
    assert R.chance_median_rank(45_000, [1]) == 22_500.5


def test_chance_accuracy_shows_the_class_prior():
    c = R.chance_accuracy([0, 0, 0, 1, -1])
    assert c["accuracy"] == pytest.approx(1 / 9) and c["majority_class"] == 0.75 and c["n"] == 4
    assert c["prior"]["amusement"] == 0.75 and c["prior"][EMOTIONS[1]] == 0.25
    assert R.chance_accuracy([-1, -1]) == {"accuracy": None, "majority_class": None, "prior": None, "n": 0}


def test_random_embeddings_average_to_the_chance_level():
    rng = np.random.default_rng(8)
    n_img, per, dim = 30, 4, 8
    text_image = np.repeat(np.arange(n_img), per)
    args = (_unit(rng, n_img, dim), _unit(rng, n_img * per, dim), text_image, _unit(rng, 9, dim), np.arange(n_img) % 9)
    out = R.retrieval_report(*args, random_runs=20, seed=3)
    rand, chance = out["random_embeddings"], out["chance"]
    assert rand["runs"] == 20 and rand["seeds"] == [3, 22]
    for d in ("image_to_explanation", "explanation_to_image"):
        for key in ("R@1", "R@5", "R@10", "mean_rank"):
            mean, std = rand[d][key]["mean"], rand[d][key]["std"]
            assert std > 0 and abs(mean - chance[d][key]) < 4 * std / np.sqrt(20) + 1e-9, (d, key)
    assert abs(rand["image_to_emotion"]["accuracy"]["mean"] - 1 / 9) < 0.1
    with pytest.raises(ConfigError, match="at least 20"):
        R.retrieval_report(*args, random_runs=5)


def test_scores_equal_faiss_top_k_and_old_ranks():
    """Ranks computed once equal a FAISS flat search's Recall@K and the two-pass ranks."""
    rng = np.random.default_rng(9)
    n_img, per, dim = 80, 3, 16
    image_emb, text_image = _unit(rng, n_img, dim), np.repeat(np.arange(n_img), per)
    text_emb = R.normalize(image_emb[text_image] + 0.8 * rng.standard_normal((n_img * per, dim)))
    m = R.retrieval_metrics(image_emb, text_emb, text_image, _unit(rng, 9, dim), np.zeros(n_img))
    for q, ql, g, gl, d in (
        (image_emb, np.arange(n_img), text_emb, text_image, "image_to_explanation"),
        (text_emb, text_image, image_emb, np.arange(n_img), "explanation_to_image"),
    ):
        _, ids = R.Index(g).search(q, 10)
        assert {k: m[d][k] for k in ("R@1", "R@5", "R@10")} == R.hits_at_k(ids, ql, gl, (1, 5, 10))
        full = q @ g.T
        best = np.where(gl[None, :] == ql[:, None], full, -np.inf).max(axis=1)
        old = 1 + (full > best[:, None]).sum(axis=1)
        assert m[d]["median_rank"] == np.median(old) and m[d]["mean_rank"] == pytest.approx(old.mean())
        assert 0 < m[d]["R@1"] < 1  # the test can tell hits from misses


def test_exact_ranks_with_tied_and_duplicate_items():
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    ranks = R.exact_ranks(
        np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), np.array([7, 8]), gallery, np.array([8, 7, 8, 9]), block=1
    )
    # query 0: its positive (row 1) ties with a wrong item (row 0), which counts against it; query 1:
    # its best positive (row 2) is alone on top, its other positive (row 0) does not matter
    assert ranks.tolist() == [2, 1]
    none = R.exact_ranks(np.eye(2, dtype=np.float32), np.array([5, 6]), gallery, np.array([8, 7, 8, 9]))
    assert none.tolist() == [5, 5]  # no positive: N + 1


@pytest.mark.parametrize("preset,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_sevlm_sets_passive_openmp_wait_unless_the_user_did(preset, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, sevlm.evaluation.retrieval; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_embedding_stats_tell_a_collapsed_side_from_a_spread_one():
    from sevlm.evaluation.scoring import embedding_stats

    rng = np.random.default_rng(0)
    spread = embedding_stats(rng.standard_normal((400, 16)))
    assert spread["n"] == 400 and spread["effective_rank"] > 14 and abs(spread["mean_cosine"]) < 0.02
    assert spread["variance"] == pytest.approx(1.0, abs=0.01)  # unit vectors around a mean near 0
    # every point near one direction: mean cosine near 1, almost no variance
    collapsed = embedding_stats(np.ones((50, 16)) + 0.01 * rng.standard_normal((50, 16)))
    assert collapsed["mean_cosine"] > 0.99 and collapsed["variance"] < 1e-3
    # two directions, half the points each: the centred spectrum has one axis
    x = np.zeros((10, 4))
    x[:5, 0], x[5:, 1] = 1.0, 1.0
    two = embedding_stats(x)
    assert two["effective_rank"] == pytest.approx(1.0) and two["mean_cosine"] == pytest.approx(
        20 / 45
    )  # 20 of the 45 pairs share a direction
    assert two["variance"] == pytest.approx(0.5)
    assert embedding_stats(np.zeros((0, 4)))["effective_rank"] is None


def test_image_emotion_hits_resum_to_the_reported_accuracy():
    from sevlm.evaluation.significance import STATISTIC_FNS

    rng = np.random.default_rng(5)
    images, emotions = rng.standard_normal((40, 8)), rng.standard_normal((len(EMOTIONS), 8))
    dominant = rng.integers(-1, len(EMOTIONS), 40)  # -1: no dominant emotion
    hits = R.image_emotion_hits(images, emotions, dominant)
    assert hits.shape == (40, 2) and hits[:, 1].sum() == (dominant >= 0).sum()
    assert hits[dominant < 0, 0].sum() == 0
    expected = R._accuracy(R.normalize(images), R.normalize(emotions), dominant)["accuracy"]
    assert STATISTIC_FNS["image_to_emotion"](hits.sum(0)) == pytest.approx(expected)


def _labelled_space(seed=0, n_img=40, dim=12):
    """Images near their dominant emotion's vector (some with none), two explanations per image."""
    rng = np.random.default_rng(seed)
    emo = rng.standard_normal((9, dim))
    dominant = rng.integers(-1, 9, n_img)
    img = emo[np.maximum(dominant, 0)] + 1.2 * rng.standard_normal((n_img, dim))
    txt = np.repeat(img, 2, axis=0) + 1.5 * rng.standard_normal((2 * n_img, dim))
    return img, txt, np.repeat(np.arange(n_img), 2), emo, dominant


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_emotion_figures_add_up_to_the_aggregate(seed):
    img, txt, text_image, emo, dominant = _labelled_space(seed)
    r = R.retrieval_report(img, txt, text_image, emo, dominant)["model"]
    i2e = r["image_to_emotion"]
    per = i2e["per_emotion"]
    assert list(per) == [*EMOTIONS, "none"]
    assert sum(g["n"] for g in per.values()) == len(img) and per["none"]["n"] == int((dominant < 0).sum())
    known = [g for e, g in per.items() if e != "none"]
    assert sum(g["n"] for g in known) == i2e["n"]
    assert sum(g["correct"] for g in known) / i2e["n"] == pytest.approx(i2e["accuracy"])
    for g in known:  # accuracy is the class's recall
        assert g["accuracy"] is None if g["n"] == 0 else g["accuracy"] == pytest.approx(g["correct"] / g["n"])
    counts = np.array(i2e["confusion"]["counts"])
    assert counts.sum() == i2e["n"] and np.trace(counts) == sum(g["correct"] for g in known)
    assert [g["n"] for g in known] == counts.sum(axis=1).tolist() and [g["predicted"] for g in known] == counts.sum(
        axis=0
    ).tolist()
    for k in (1, 5, 10):  # n-weighted per-emotion recall is the aggregate (flat index: exact ranks)
        weighted = sum(g["n"] * g[f"R@{k}"] for g in per.values() if g["n"]) / len(img)
        assert weighted == pytest.approx(r["image_to_explanation"][f"R@{k}"])


def test_confusion_counts_the_nearest_emotion():
    emo = np.eye(9, 12)
    img = np.stack([emo[0], emo[0], emo[3], emo[5]])  # true: 0, 1, 3, none -> predicted 0, 0, 3, 5
    b = R.per_emotion_breakdown(img, emo, np.array([0, 1, 3, -1]), np.array([1, 2, 3, 4]))
    counts = np.array(b["confusion"]["counts"])
    assert counts[0, 0] == 1 and counts[1, 0] == 1 and counts[3, 3] == 1 and counts.sum() == 3
    p = b["per_emotion"]
    assert (
        p["amusement"]["precision"] == 0.5
        and p["awe"]["accuracy"] == 0.0
        and p["none"] == {"n": 1, "R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 4.0}
    )
    nearest, rank = R.emotion_ranks(img, emo, np.array([0, 1, 3, -1]))
    assert nearest.tolist() == [0, 0, 3, 5] and rank[0] == 1 and rank[1] > 1 and rank[3] == 0


def test_a_collapsed_space_scores_no_better_than_its_ties():
    """Every embedding the same: every gallery item ties, and R@1 is 0, not 1."""
    same = np.ones((6, 4), dtype=np.float32)
    out = R.retrieval_metrics(same[:3], same, np.repeat(np.arange(3), 2), np.eye(9, 4), np.zeros(3, dtype=int))
    assert out["image_to_explanation"]["R@1"] == 0.0 and out["image_to_explanation"]["median_rank"] == 5
    assert out["explanation_to_image"]["median_rank"] == 3


def test_exhaustive_ivf_scores_as_flat_on_duplicated_explanations():
    """The demo's "IVF with nprobe = nlist below flat" gap: identical explanations of different
    paintings tie; flat and an IVF index visiting every cell now agree."""
    rng = np.random.default_rng(0)
    img = rng.standard_normal((40, 8)).astype(np.float32)
    txt = np.repeat(img, 3, axis=0) + 0.8 * rng.standard_normal((120, 8)).astype(np.float32)
    txt[1::3] = txt[
        [(3 * (i + 1)) % 120 for i in range(40)]
    ]  # each image's 2nd explanation copies the next image's 1st
    text_image = np.repeat(np.arange(40), 3)
    args = (img, txt, text_image, rng.standard_normal((9, 8)), np.zeros(40, dtype=int))
    flat = R.retrieval_metrics(*args)
    ivf = R.retrieval_metrics(*args, options=R.IndexOptions(kind="ivf", nlist=3, nprobe=3))
    assert ivf["index"]["nprobe"] == ivf["index"]["nlist"] == 3
    for d in ("image_to_explanation", "explanation_to_image"):
        assert {k: ivf[d][k] for k in ("R@1", "R@5", "R@10")} == {k: flat[d][k] for k in ("R@1", "R@5", "R@10")}


def test_recall_vs_exact_counts_returned_items_that_belong_in_the_exact_top_k():
    gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    q = np.array([[1.0, 0.0]], dtype=np.float32)  # exact order: 0, then 1 and 2 tied, 3, 4
    assert R.recall_vs_exact(q, gallery, np.array([[0, 1, 2]]), (1, 2, 3)) == {"R@1": 1.0, "R@2": 1.0, "R@3": 1.0}
    assert R.recall_vs_exact(q, gallery, np.array([[0, 2, 3]]), (1, 2, 3)) == {"R@1": 1.0, "R@2": 1.0, "R@3": 2 / 3}
    assert R.recall_vs_exact(q, gallery, np.array([[3, 0, -1]]), (1, 3)) == {"R@1": 0.0, "R@3": 1 / 3}


def _clustered(n=6000, dim=16, clusters=60, n_queries=200, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n + n_queries)] + 0.3 * rng.standard_normal((n + n_queries, dim))
    x = R.normalize(x)
    return x[:n], x[n:]


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_every_approximate_index_reports_its_recall_against_exact(kind):
    gallery, queries = _clustered()
    idx = R.Index(gallery, R.IndexOptions(kind=kind, nlist=64, nprobe=64, ef_search=256, pq_m=8))
    _, ids = idx.search(queries, 10)
    rec = R.recall_vs_exact(queries, gallery, ids)
    if kind == "ivfpq":  # compressed codes: approximate even when every cell is visited
        assert 0.3 < rec["R@10"] < 1.0 and idx.describe()["pq_m"] == 8 and idx.describe()["pq_bits"] == 8
    else:
        assert rec["R@10"] >= 0.99


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_tune_picks_the_fastest_setting_reaching_the_target(kind):
    gallery, queries = _clustered()
    idx = R.Index(gallery, R.IndexOptions(kind=kind, nlist=64, nprobe=1, ef_search=16))
    t = R.tune_index(idx, queries, gallery, 0.9)
    name = "nprobe" if kind == "ivf" else "efSearch"
    assert t["reached"] and t["chosen"].startswith(f"{name}=") and t["recall_vs_exact"] >= 0.85
    assert {p["key"].split("=")[0] for p in t["points"]} == {name}
    chosen = next(p for p in t["points"] if p["key"] == t["chosen"])
    assert all(p["recall"] < 0.9 for p in t["points"] if p["ms_per_query"] < chosen["ms_per_query"])
    value = int(t["chosen"].split("=")[1])
    assert idx.describe()["nprobe" if kind == "ivf" else "efSearch"] == value  # the index now searches so


def test_index_options_name_the_bad_flag():
    for opts, flag in (
        (dict(nprobe=0), "--nprobe"),
        (dict(kind="flat", tune_recall=0.9), "--tune"),
        (dict(kind="ivf", tune_recall=1.5), "--tune"),
        (dict(pq_bits=20), "--pq-bits"),
    ):
        with pytest.raises(ConfigError, match=flag):
            R.IndexOptions(**opts).check()
    with pytest.raises(ConfigError, match="--pq-m: 5 does not divide the embedding dimension 16"):
        R.Index(np.eye(16, dtype=np.float32).repeat(10, axis=0), R.IndexOptions(kind="ivfpq", pq_m=5))


def test_an_index_faiss_cannot_place_on_the_gpu_falls_back_to_the_cpu(monkeypatch):
    import faiss

    def refuse(*_a):
        raise RuntimeError("Error in GpuIndexIVFPQ: bits per code 5 not supported")

    monkeypatch.setattr(R, "gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse, raising=False)
    gallery, _ = _clustered(n=2000)
    idx = R.Index(gallery, R.IndexOptions(kind="ivfpq", pq_m=4, pq_bits=5))  # auto: the GPU if it can
    assert idx.device == "cpu" and "not supported" in idx.describe()["gpu_fallback"]
    assert idx.search(gallery[:3], 1)[1][:, 0].tolist() != [-1, -1, -1]
    with pytest.raises(ConfigError, match="--gpu: faiss cannot put this ivfpq index on the GPU"):
        R.Index(gallery, R.IndexOptions(kind="ivfpq", pq_m=4, pq_bits=5, use_gpu=True))
