"""The whole pipeline through the command line on a tiny demo set: every artifact checked
against what the stages before it wrote (slow: the demo takes about a minute here)."""

from __future__ import annotations

import json

import h5py
import pytest

from sevlm.cli import main
from sevlm.emotions import EMOTIONS
from sevlm.export import RunDataPaths
from sevlm.io import sha256_file


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = [
        "demo",
        "--out",
        str(out),
        "--n-images",
        "40",
        "--encoder",
        "tiny-random",
        "--config",
        "tiny",
        "schedule.epochs=1",
        "schedule.val_every=0",
    ]
    assert main(argv) == 0
    return out, argv


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_data_stages(demo_run):
    out, _ = demo_run
    raw, dataset = out / "demo_data", out / "dataset"
    assert (raw / "artemis_dataset_release_v0.csv").read_text(encoding="utf-8").splitlines()[0].split(",") == [
        "art_style",
        "painting",
        "emotion",
        "utterance",
        "repetition",
    ]
    manifest = _json(dataset / "manifest.json")
    splits = {s: _json(dataset / f"{s}.json") for s in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 40
    for s, records in splits.items():
        counts = manifest["counts"][s]
        assert counts["images"] == len(records)
        assert counts["annotations"] == sum(len(r["explanations"]) for r in records.values())
        assert counts["images_with_dominant_emotion"] == sum(
            r["dominant_emotion"] is not None for r in records.values()
        )
        assert all(e in EMOTIONS for r in records.values() for e in r["emotions"])
    names = sorted(r["image_name"] for records in splits.values() for r in records.values())

    with h5py.File(out / "features.h5", "r") as f:
        assert f["tokens"].shape == (40, 16, 32) and f["tokens"].dtype.name == "float16"  # tiny-random: 16 x 32
        assert sorted(n.decode() if isinstance(n, bytes) else n for n in f["names"][()]) == names
        assert f.attrs["encoder"] == "tiny-random" and bool(f.attrs["complete"])

    shards = out / "shards"
    sm = _json(shards / "manifest.json")
    assert (sm["features"]["encoder"], sm["features"]["token_shape"], sm["features"]["dtype"]) == (
        "tiny-random",
        [16, 32],
        "float16",
    )
    assert list(sm["splits"]) == ["train", "val"]  # training reads both: validation comes from the shards too
    for split, entry in sm["splits"].items():
        assert entry["missing"] == {}
        assert entry["num_samples"] == sum(sh["num_samples"] for sh in entry["shards"]) == len(splits[split])
        for sh in entry["shards"]:
            assert (sh["sha256"], sh["bytes"]) == (
                sha256_file(shards / sh["name"]),
                (shards / sh["name"]).stat().st_size,
            )
        assert entry["dataset"]["dir"] == str(dataset)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["run", "run_no_image"])
def test_run_artifacts(demo_run, run):
    out, _ = demo_run
    run_dir, dataset = out / run, out / "dataset"
    test = _json(dataset / "test.json")
    assert _json(run_dir / "done.json")["event"] == "done"
    export = run_dir / "export"
    config = _json(export / "config.json")
    assert config["model"]["mode"] == ("none" if run == "run_no_image" else "cross")
    assert config["encoder"] == {
        "name": "tiny-random",
        "settings": {"seed": 0, "image_size": 32, "patch_size": 8, "dim": 32},
    }
    assert config["weights"] == {"model.safetensors": "", "decoder/model.safetensors": "decoder."}
    assert config["weights_sha256"] == {f: sha256_file(export / f) for f in config["weights"]}
    # trained from the shards alone (train and val); generate and retrieve read the cache the shards name
    assert _json(export / "config.json")["train"]["data"]["features"] is None
    run_json = _json(run_dir / "run.json")
    assert run_json["data_source"] == f"shards: {out / 'shards'}"
    assert run_json["val_images"] == len(_json(dataset / "val.json"))
    assert RunDataPaths.of(run_dir) == RunDataPaths(str(dataset), str(out / "features.h5"), str(out / "shards"), "demo")

    preds = [json.loads(line) for line in (run_dir / "predictions_test.jsonl").read_text().splitlines()]
    assert sorted(p["image_id"] for p in preds) == sorted(test)
    for p in preds:
        assert set(p) == {"image_id", "emotion", "explanation", "emotion_prob", "raw"}
        assert (p["emotion"] is None) == (p["emotion_prob"] is None) and (
            p["emotion"] is None or p["emotion"] in EMOTIONS
        )

    # The report's figures, recomputed from the predictions and the references.
    report = _json(run_dir / "report" / "REPORT.json")
    n = len(test)
    assert (report["n_predictions"], report["n_reference_images"], report["coverage"]) == (n, n, 1.0)
    for key in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "emo_align"):
        assert isinstance(report[key], float) and 0.0 <= report[key] <= 1.0, key
    assert isinstance(report["CIDEr"], float) and report["CIDEr"] >= 0.0
    by_id = {p["image_id"]: p for p in preds}
    dominant = {i: r["dominant_emotion"] for i, r in test.items() if r["dominant_emotion"] is not None}
    assert report["dominance"] == "artemis" and report["emotion_accuracy_n"] == len(dominant)
    assert report["emotion_accuracy"] == pytest.approx(
        sum(by_id[i]["emotion"] == e for i, e in dominant.items()) / len(dominant)
    )
    assert report["emotion_not_one_of_9_share"] == pytest.approx(sum(p["emotion"] is None for p in preds) / n)
    assert report["distinct_explanations_share"] == pytest.approx(len({p["explanation"] for p in preds}) / n)
    assert report["mean_length_words"] == pytest.approx(sum(len(p["explanation"].split()) for p in preds) / n)
    human = [e for r in test.values() for e in r["explanations"]]
    assert report["human_mean_length_words"] == pytest.approx(sum(len(e.split()) for e in human) / len(human))
    assert report["emo_align_n"] == n and (run_dir / "report" / "REPORT.md").is_file()

    retrieval = _json(run_dir / "retrieval_test.json")
    assert (retrieval["split"], retrieval["ks"]) == ("test", [1, 5, 10])
    i2e, e2i = retrieval["model"]["image_to_explanation"], retrieval["model"]["explanation_to_image"]
    assert (i2e["n_queries"], i2e["gallery_size"]) == (e2i["gallery_size"], e2i["n_queries"]) == (n, len(human))
    for d in (i2e, e2i):
        assert d["R@1"] * d["n_queries"] == pytest.approx(round(d["R@1"] * d["n_queries"]))  # a share of the queries
        assert 1.0 <= d["median_rank"] <= d["gallery_size"]
    for which in ("model", "chance"):
        for d in ("image_to_explanation", "explanation_to_image"):
            r = retrieval[which][d]
            assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1.0, (which, d)

    results = _json(out / "results.json")
    key = "no_image_control" if run == "run_no_image" else None
    summary = results[key] if key else results
    for k in ("emotion_accuracy", "emotion_accuracy_n", "BLEU-4", "CIDEr", "emo_align"):
        assert summary[k] == report[k], k
    assert summary["retrieval"] == retrieval


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
    """`predict` on a test painting's file decodes what `generate` decoded from its cached features."""
    out, _ = demo_run
    test = _json(out / "dataset" / "test.json")
    image_id = sorted(test)[0]
    image = out / "demo_data" / "images" / test[image_id]["image_name"]
    assert main(["predict", "--run", str(out / "run"), str(image), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    expected = next(
        p
        for p in map(json.loads, (out / "run" / "predictions_test.jsonl").read_text().splitlines())
        if p["image_id"] == image_id
    )
    assert len(lines) == 1
    pred = lines[0]
    assert pred["image"] == str(image)
    assert {k: pred[k] for k in ("emotion", "explanation", "raw")} == {
        k: expected[k] for k in ("emotion", "explanation", "raw")
    }
    if expected["emotion_prob"] is None:
        assert pred["emotion_prob"] is None
    else:
        assert pred["emotion_prob"] == pytest.approx(expected["emotion_prob"], abs=1e-3)


def test_failure_is_one_line_and_nonzero(tmp_path, capsys):
    rc = main(["prepare", "--artemis-csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "ds")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "missing.csv" in err[0]
