"""REPORT.json / Markdown / PNG plots, and the `sevlm evaluate` command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sevlm.data.vad import VADLexicon
from sevlm.evaluation import report as RP
from sevlm.errors import ConfigError, DataError
from sevlm.evaluation.metrics import LANGUAGE_METRICS


def evaluate_cli(argv: list[str]) -> int:
    """`sevlm evaluate ARGV` through the command module (what sevlm.cli.main dispatches to)."""
    import argparse

    from sevlm.commands import evaluate

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return evaluate.run(parser.parse_args(argv))

PNG = b"\x89PNG\r\n\x1a\n"


def _lexicon():
    return VADLexicon({"calm": np.array([0.8, -0.6, 0.2]), "scary": np.array([-0.7, 0.8, -0.5])})


def test_vad_summary_hand_checkable():
    out = RP.vad_summary(["so calm", "scary and calm", "nothing known"], ["scary"], _lexicon())
    gen = out["generated"]
    assert gen["coverage"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(gen["mean"], [(0.8 + 0.05) / 2, (-0.6 + 0.1) / 2, (0.2 - 0.15) / 2])
    assert out["human"]["mean"] == pytest.approx([-0.7, 0.8, -0.5]) and out["human"]["coverage"] == 1.0


def test_evaluate_command_writes_report_markdown_and_plots(tmp_path, dataset_dir, good_predictions, nrc_vad_path):
    out = tmp_path / "rep" / "REPORT.json"
    rc = evaluate_cli(["--predictions", str(good_predictions), "--references", str(dataset_dir / "test.json"),
               "--dataset", str(dataset_dir), "--vad-lexicon", str(nrc_vad_path), "--out", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    for key in LANGUAGE_METRICS + ("emotion_accuracy", "emotion_accuracy_n", "emo_align", "emo_align_n",
                                   "distinct_explanations_share", "mean_length_words", "emotion_not_one_of_9_share"):
        assert key in rep, key
    assert 0 <= rep["emo_align"] <= 1 and rep["emo_align_n"] == 12
    assert "held_out_accuracy" in rep["emo_classifier"]
    assert rep["vad"]["human"]["coverage"] > 0.5 and "valence" not in rep["vad"]["human"]
    assert set(rep["figures"]) == {"confusion", "per_emotion", "vad"}
    for rel in rep["figures"].values():
        assert (out.parent / rel).read_bytes()[:8] == PNG
    md = out.with_suffix(".md").read_text()
    assert "| BLEU-1 |" in md and "Emo-Align" in md and "confusion_matrix.png" in md
    assert not list(out.parent.glob(".*.tmp"))  # atomic writes leave no temp files


def test_evaluate_command_bad_input_names_the_line(tmp_path, dataset_dir, jsonl):
    bad = jsonl(tmp_path / "p.jsonl", ['{"image_id": "x", "emotion": "awe", "explanation": "ok"}', "{oops"])
    with pytest.raises(DataError, match=f"{bad}:2: not valid JSON"):
        evaluate_cli(["--predictions", str(bad), "--references", str(dataset_dir / "test.json"), "--out", str(tmp_path / "R.json")])
    assert not (tmp_path / "R.json").exists()
    with pytest.raises(ConfigError, match="--predictions and --references"):
        evaluate_cli(["--out", str(tmp_path / "R.json")])


def test_retrieval_report_files(tmp_path):
    from sevlm.evaluation.retrieval import retrieval_report

    rng = np.random.default_rng(0)
    img = rng.standard_normal((20, 8))
    result = retrieval_report(img, np.repeat(img, 2, axis=0), np.repeat(np.arange(20), 2), rng.standard_normal((9, 8)),
                              np.arange(20) % 9)
    written = RP.write_retrieval_report(result, tmp_path / "R.json")
    assert written["recall_curves"].read_bytes()[:8] == PNG
    saved = json.loads((tmp_path / "R.json").read_text())
    assert saved["model"]["image_to_explanation"]["R@1"] == 1.0
    md = (tmp_path / "R.md").read_text()
    assert "| image to explanation | model | 1.0000 |" in md and "flat on cpu" in md.replace("gpu", "cpu")


def test_cli_prints_one_line_error_and_exits_1(tmp_path, dataset_dir, capsys, jsonl):
    from sevlm.cli import main

    bad = jsonl(tmp_path / "p.jsonl", ['{"image_id": "x", "emotion": "awe"}'])
    assert main(["evaluate", "--predictions", str(bad), "--references", str(dataset_dir / "test.json"), "--out", str(tmp_path / "R.json")]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1: missing key 'explanation'" in err and err.count("\n") == 1


def test_evaluate_command_records_the_emo_classifier(tmp_path, dataset_dir, good_predictions, monkeypatch):
    import shutil

    from sevlm.evaluation import emo_lstm
    from sevlm.evaluation.emo_classifier import CLASSIFIER_DIRNAME

    # a smaller network than the default keeps the test fast
    small = {**emo_lstm.DEFAULT_PARAMS, "embed_dim": 16, "hidden": 16, "min_steps": 30, "batch_size": 64, "lr": 1e-2}
    monkeypatch.setattr(emo_lstm.LSTMEmotionClassifier, "DEFAULT_PARAMS", small)
    ds = tmp_path / "ds"
    shutil.copytree(dataset_dir, ds, ignore=shutil.ignore_patterns(CLASSIFIER_DIRNAME))
    out = tmp_path / "rep" / "REPORT.json"
    assert evaluate_cli(["--predictions", str(good_predictions), "--references", str(ds / "test.json"),
                         "--dataset", str(ds), "--emo-classifier", "lstm", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["emo_classifier"]["kind"] == "lstm" and rep["emo_align_n"] == 12
    assert rep["emo_classifier"]["params"]["hidden"] == 16 and "test" in rep["emo_classifier"]["held_out_accuracy"]
    assert "(classifier: lstm;" in out.with_suffix(".md").read_text()
    assert (ds / CLASSIFIER_DIRNAME / "lstm" / "weights.safetensors").exists()
    with pytest.raises(ConfigError, match="--emo-classifier lstm needs --dataset"):
        evaluate_cli(["--predictions", str(good_predictions), "--references", str(ds / "test.json"),
                      "--emo-classifier", "lstm", "--out", str(out)])
