"""The whole pipeline through the command line on a tiny demo set: every artifact checked."""

from __future__ import annotations

import json

import h5py
import pytest

from sevlm.cli import main
from sevlm.constants import EMOTIONS


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = [
        "demo", "--out", str(out), "--n-images", "40", "--encoder", "tiny-random", "--config", "tiny",
        "schedule.epochs=1", "schedule.val_every=0",
    ]
    assert main(argv) == 0
    return out, argv


@pytest.mark.slow
def test_every_stage_leaves_its_artifact(demo_run):
    out, _ = demo_run
    raw, dataset = out / "demo_data", out / "dataset"
    assert (raw / "artemis_dataset_release_v0.csv").read_text(encoding="utf-8").splitlines()[0].split(",") == [
        "art_style", "painting", "emotion", "utterance", "repetition"]
    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    splits = {s: json.loads((dataset / f"{s}.json").read_text(encoding="utf-8")) for s in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 40
    assert {s: len(v) for s, v in splits.items()} == {s: manifest["counts"][s]["images"] for s in splits}

    with h5py.File(out / "features.h5", "r") as f:
        assert f["tokens"].shape[0] == 40 and f["tokens"].dtype.name == "float16"
        assert f.attrs["encoder"] == "tiny-random"

    shard_manifest = json.loads((out / "shards" / "train" / "manifest.json").read_text(encoding="utf-8"))
    assert "train" in json.dumps(shard_manifest)

    for run in ("run", "run_no_image"):
        run_dir = out / run
        assert (run_dir / "export" / "model.safetensors").stat().st_size > 0
        assert json.loads((run_dir / "done.json").read_text(encoding="utf-8"))["event"] == "done"
        config = json.loads((run_dir / "export" / "config.json").read_text(encoding="utf-8"))
        assert config["model"]["mode"] == ("none" if run == "run_no_image" else "cross")
        preds = [json.loads(line) for line in (run_dir / "predictions_test.jsonl").read_text().splitlines()]
        assert sorted(p["image_id"] for p in preds) == sorted(splits["test"])
        report = json.loads((run_dir / "report" / "REPORT.json").read_text(encoding="utf-8"))
        for key in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "emotion_accuracy", "emo_align"):
            assert isinstance(report[key], float) and 0.0 <= report[key] <= 10.0, key
        assert (run_dir / "report" / "REPORT.md").exists()
        retrieval = json.loads((run_dir / "retrieval_test.json").read_text(encoding="utf-8"))
        for which in ("model", "random_baseline"):
            assert 0.0 <= retrieval[which]["image_to_explanation"]["R@10"] <= 1.0

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert isinstance(results["emotion_accuracy"], float)
    assert results["no_image_control"]["emotion_accuracy_n"] == results["emotion_accuracy_n"]


@pytest.mark.slow
def test_second_run_reuses_cached_steps(demo_run, capsys):
    out, argv = demo_run
    before = (out / "run" / "export" / "model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for stage in ("demo-data", "prepare", "extract", "shard", "train[model]"):
        assert f"[demo] {stage}: cached" in printed
    assert (out / "run" / "export" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_predict_from_exported_weights(demo_run, capsys):
    out, _ = demo_run
    image = next((out / "demo_data" / "images").rglob("*.jpg"))
    assert main(["predict", "--run", str(out / "run"), str(image), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 1
    pred = lines[0]
    assert pred["emotion"] is None or pred["emotion"] in EMOTIONS
    # An undertrained tiny model may emit a label outside the 9: then there is no probability.
    if pred["emotion"] is not None:
        assert 0.0 <= pred["emotion_prob"] <= 1.0
    assert isinstance(pred["explanation"], str)


def test_failure_is_one_line_and_nonzero(tmp_path, capsys):
    rc = main(["prepare", "--artemis-csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "ds")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "missing.csv" in err[0]
