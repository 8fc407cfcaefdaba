"""Paired bootstrap / permutation tests between two prediction files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sevlm.evaluation import significance as S


def _mean_stat(a, b):
    ones = np.ones((len(a), 1))
    return S.Statistic(
        "m",
        np.hstack([np.asarray(a, float)[:, None], ones]),
        np.hstack([np.asarray(b, float)[:, None], ones]),
        S._ratio,
    )


def test_identical_systems_are_not_different():
    x = np.random.default_rng(0).random(200)
    out = S.paired_tests(_mean_stat(x, x), n_resamples=300)
    assert out["delta"] == 0 and out["p_bootstrap"] == 1.0 and out["p_permutation"] == 1.0
    assert out["ci95"] == [0.0, 0.0]


def test_clearly_better_system_is_significant_and_noise_is_not():
    rng = np.random.default_rng(1)
    a = rng.random(300)
    better = S.paired_tests(_mean_stat(a, a + 0.1 + 0.01 * rng.standard_normal(300)), n_resamples=500)
    assert better["delta"] == pytest.approx(0.1, abs=0.01)
    assert better["p_bootstrap"] < 0.01 and better["p_permutation"] < 0.01
    assert better["ci95"][0] > 0.08 and better["ci95"][1] < 0.12
    noise = S.paired_tests(_mean_stat(a, a + 0.2 * rng.standard_normal(300)), n_resamples=500, seed=3)
    assert noise["p_bootstrap"] > 0.1 and noise["p_permutation"] > 0.1
    assert noise["ci95"][0] < 0 < noise["ci95"][1]


def test_bleu_statistic_resums_to_coco_corpus_bleu():
    # two images' sufficient statistics: testlen, reflen, guess1-4, correct1-4
    stats = np.array([[4, 4, 4, 3, 2, 1, 3, 2, 1, 0], [6, 6, 6, 5, 4, 3, 6, 5, 4, 3]], float)
    corpus = S._bleu4(stats.sum(0))
    expected = ((9 / 10) * (7 / 8) * (5 / 6) * (3 / 4)) ** 0.25
    assert corpus == pytest.approx(expected, rel=1e-9)
    out = S.paired_tests(S.Statistic("BLEU-4", stats, stats[::-1], S._bleu4), n_resamples=50)
    assert out["a"] == out["b"] == pytest.approx(expected)


def test_compare_two_prediction_files(tmp_path, dataset_dir, test_refs, good_predictions, jsonl):
    # B copies the human annotation for every image: better than A (good_predictions) on everything
    rows = [
        {"image_id": i, "emotion": e["dominant_emotion"], "explanation": e["explanations"][0]}
        for i, e in test_refs.items()
    ]
    b = jsonl(tmp_path / "b.jsonl", rows)
    out = S.compare(good_predictions, b, dataset_dir / "test.json", n_resamples=400)
    assert out["n_images"] == 12
    assert set(out["metrics"]) == {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "emotion_accuracy"}
    acc = out["metrics"]["emotion_accuracy"]
    assert acc["b"] == 1.0 and acc["delta"] > 0
    for m in out["metrics"].values():
        assert 0 <= m["p_bootstrap"] <= 1 and 0 < m["p_permutation"] <= 1
    assert out["metrics"]["METEOR"]["delta"] > 0
    json.dumps(out)  # JSON-ready


def test_eval_recipe_script(tmp_path, dataset_dir, test_refs, good_predictions, jsonl, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "eval" / "significance.py"
    spec = importlib.util.spec_from_file_location("eval_significance", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "sig.json"
    assert (
        mod.main(
            [
                "--a",
                str(good_predictions),
                "--b",
                str(good_predictions),
                "--references",
                str(dataset_dir / "test.json"),
                "--resamples",
                "100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert all(m["delta"] == 0 and m["p_permutation"] == 1.0 for m in res["metrics"].values())
    assert "BLEU-4" in capsys.readouterr().out
    bad = jsonl(tmp_path / "bad.jsonl", ["nope"])
    assert (
        mod.main(["--a", str(bad), "--b", str(good_predictions), "--references", str(dataset_dir / "test.json")]) == 1
    )
    assert f"{bad}:1: not valid JSON" in capsys.readouterr().err
