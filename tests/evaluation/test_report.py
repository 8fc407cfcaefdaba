"""REPORT.json / Markdown / PNG plots, and the `sevlm evaluate` command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sevlm.data.vad import VADLexicon
from sevlm.errors import ConfigError, DataError
from sevlm.evaluation import report as RP
from sevlm.evaluation.coco_caption import LANGUAGE_METRICS


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


@pytest.mark.slow
def test_evaluate_command_writes_report_markdown_and_plots(tmp_path, dataset_dir, good_predictions, nrc_vad_path):
    out = tmp_path / "rep" / "REPORT.json"
    rc = evaluate_cli(
        [
            "--predictions",
            str(good_predictions),
            "--references",
            str(dataset_dir / "test.json"),
            "--dataset",
            str(dataset_dir),
            "--vad-lexicon",
            str(nrc_vad_path),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rep = json.loads(out.read_text())
    for key in LANGUAGE_METRICS + (
        "emotion_accuracy",
        "emotion_accuracy_n",
        "emo_align",
        "emo_align_n",
        "distinct_explanations_share",
        "mean_length_words",
        "emotion_not_one_of_9_share",
    ):
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
        evaluate_cli(
            [
                "--predictions",
                str(bad),
                "--references",
                str(dataset_dir / "test.json"),
                "--out",
                str(tmp_path / "R.json"),
            ]
        )
    assert not (tmp_path / "R.json").exists()
    with pytest.raises(ConfigError, match="--predictions and --references"):
        evaluate_cli(["--out", str(tmp_path / "R.json")])


def test_retrieval_report_files(tmp_path):
    from sevlm.evaluation.retrieval import retrieval_report

    rng = np.random.default_rng(0)
    img = rng.standard_normal((20, 8))
    result = retrieval_report(
        img, np.repeat(img, 2, axis=0), np.repeat(np.arange(20), 2), rng.standard_normal((9, 8)), np.arange(20) % 9
    )
    written = RP.write_retrieval_report(result, tmp_path / "R.json")
    assert written["recall_curves"].read_bytes()[:8] == PNG
    saved = json.loads((tmp_path / "R.json").read_text())
    assert saved["model"]["image_to_explanation"]["R@1"] == 1.0
    md = (tmp_path / "R.md").read_text()
    assert "| image to explanation | model | 1.0000 |" in md and "flat on cpu" in md.replace("gpu", "cpu")
    assert set(saved["embedding_stats"]) == {"image", "explanation", "emotion"}
    assert "| image | 20 |" in md and "| emotion | 9 |" in md


def test_cli_prints_one_line_error_and_exits_1(tmp_path, dataset_dir, capsys, jsonl):
    from sevlm.cli import main

    bad = jsonl(tmp_path / "p.jsonl", ['{"image_id": "x", "emotion": "awe"}'])
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(bad),
                "--references",
                str(dataset_dir / "test.json"),
                "--out",
                str(tmp_path / "R.json"),
            ]
        )
        == 1
    )
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
    assert (
        evaluate_cli(
            [
                "--predictions",
                str(good_predictions),
                "--references",
                str(ds / "test.json"),
                "--dataset",
                str(ds),
                "--emo-classifier",
                "lstm",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rep = json.loads(out.read_text())
    assert rep["emo_classifier"]["kind"] == "lstm" and rep["emo_align_n"] == 12
    assert rep["emo_classifier"]["params"]["hidden"] == 16 and "test" in rep["emo_classifier"]["held_out_accuracy"]
    assert "(classifier: lstm;" in out.with_suffix(".md").read_text()
    # with --dataset, the training split is read for copies, and the (absent) images are noted
    assert rep["examples_note"].endswith("manifest.json: no images folder recorded")
    train = {t for e in json.loads((ds / "train.json").read_text()).values() for t in e["explanations"]}
    preds = [json.loads(line) for line in good_predictions.read_text().splitlines()]
    copies = sum(p["explanation"] in train for p in preds)
    assert copies > 0 and rep["copied_training_share"] == pytest.approx(copies / len(preds))
    for key in ("distinct_1", "distinct_2", "repeated_bigram_share", "metaphor_rate_generated", "metaphor_rate_human"):
        assert 0 <= rep[key] <= 1, key
    assert (ds / CLASSIFIER_DIRNAME / "lstm" / "weights.safetensors").exists()
    with pytest.raises(ConfigError, match="--emo-classifier lstm needs --dataset"):
        evaluate_cli(
            [
                "--predictions",
                str(good_predictions),
                "--references",
                str(ds / "test.json"),
                "--emo-classifier",
                "lstm",
                "--out",
                str(out),
            ]
        )


COLOURS = [
    (220, 20, 20),
    (20, 200, 20),
    (20, 20, 220),
    (230, 230, 30),
    (220, 20, 220),
    (20, 220, 220),
    (120, 60, 0),
    (0, 100, 60),
    (90, 0, 140),
    (250, 150, 100),
    (60, 60, 60),
    (150, 150, 250),
]


def _images(root, refs: dict, skip: set[str]) -> dict[str, tuple]:
    """A solid-colour JPEG per image (one colour each), except those in `skip`."""
    from PIL import Image

    colours = {}
    for (image_id, entry), colour in zip(sorted(refs.items()), COLOURS):
        if image_id in skip:
            continue
        path = root / entry["image_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), colour).save(path, quality=95)
        colours[image_id] = colour
    return colours


@pytest.mark.slow
def test_example_paintings_picture(tmp_path, dataset_dir, good_predictions, test_refs):
    from PIL import Image

    from sevlm.evaluation import metrics as M

    ev = M.evaluate(good_predictions, dataset_dir / "test.json")
    ids = sorted(test_refs)
    colours = _images(tmp_path / "images", test_refs, skip={ids[0], ids[5]})  # 10 of 12 images present
    examples, note = RP.pick_examples(ev, tmp_path / "images")
    assert note is None and len(examples) == RP.EXAMPLE_PAINTINGS == 8
    assert all(ex["image_id"] in colours for ex in examples) and len({ex["image_id"] for ex in examples}) == 8
    preds = {p.image_id: p for p in ev.predictions}
    for ex in examples:
        assert ex["generated"] == preds[ex["image_id"]].explanation
        assert ex["human"] == test_refs[ex["image_id"]]["explanations"][0]

    png = RP.plot_examples(examples, tmp_path / "ex.png")
    with Image.open(png) as im:
        assert im.format == "PNG"
        w, h = RP.EXAMPLE_PANEL_INCHES
        assert im.size == (4 * w * RP.EXAMPLE_DPI, 2 * h * RP.EXAMPLE_DPI)  # 4 columns x 2 rows of panels
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    for ex in examples:  # every painting is drawn
        assert (np.abs(pixels - colours[ex["image_id"]]).max(axis=1) <= 12).sum() > 500, ex["image_id"]
    with Image.open(RP.plot_examples(examples[:3], tmp_path / "ex3.png")) as im:
        assert im.size == (3 * w * RP.EXAMPLE_DPI, h * RP.EXAMPLE_DPI)
    # an unreadable image leaves its panel with a note, not a failed report
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with Image.open(RP.plot_examples([*examples[:1], {**examples[1], "image": broken}], tmp_path / "ex2.png")) as im:
        assert im.size == (2 * w * RP.EXAMPLE_DPI, h * RP.EXAMPLE_DPI)

    # in the report: the picture and what it shows; without images, a note instead
    out = tmp_path / "rep" / "REPORT.json"
    RP.write_evaluation_report(ev.report, out, examples=examples)
    rep = json.loads(out.read_text())
    assert rep["figures"]["examples"] == "REPORT_figures/examples.png" and len(rep["examples"]) == 8
    assert "## Examples" in out.with_suffix(".md").read_text()
    (tmp_path / "empty").mkdir()
    none, note = RP.pick_examples(ev, tmp_path / "empty")
    assert none == [] and str(tmp_path / "empty") in note
    RP.write_evaluation_report(ev.report, out, examples=none, examples_note=note)
    rep = json.loads(out.read_text())
    assert "examples" not in rep["figures"] and rep["examples_note"] == note
    assert f"no picture of examples: {note}" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("kill_at", ["markdown", "json"])
def test_a_kill_while_writing_a_report_never_leaves_the_pair_out_of_step(tmp_path, monkeypatch, kill_at):
    """N27a/N28a: a kill between REPORT.json and REPORT.md left a new JSON beside an old Markdown,
    and a 0-byte temporary that no later run removed."""
    import os

    from sevlm import io as sio
    from sevlm.evaluation.retrieval import retrieval_report

    rng = np.random.default_rng(0)
    img = rng.standard_normal((20, 8))
    result = retrieval_report(
        img, np.repeat(img, 2, axis=0), np.repeat(np.arange(20), 2), rng.standard_normal((9, 8)), np.arange(20) % 9
    )
    out = tmp_path / "R.json"
    RP.write_retrieval_report({**result, "run": "old"}, out)
    result = retrieval_report(
        img,
        np.repeat(img, 2, axis=0)[::-1].copy(),
        np.repeat(np.arange(20), 2),
        rng.standard_normal((9, 8)),
        np.arange(20) % 9,
    )  # other figures: another .md
    old_md = out.with_suffix(".md").read_bytes()

    class Killed(BaseException):
        pass

    real_replace = os.replace

    def die(src, dst):  # the process dies with the temporary written, before its rename
        if str(dst).endswith(".md" if kill_at == "markdown" else ".json"):
            raise Killed
        return real_replace(src, dst)

    monkeypatch.setattr(sio.os, "replace", die)
    with pytest.raises(Killed):
        RP.write_retrieval_report({**result, "run": "new"}, out)
    monkeypatch.undo()
    # a JSON, when present, is the one its Markdown was written with; the old pair is not mixed
    assert not out.exists()  # the old JSON went first: no JSON beside a Markdown of another write
    assert (out.with_suffix(".md").read_bytes() == old_md) == (kill_at == "markdown")
    # the killed writer's temporary: a dead pid, swept by the next write of the report
    stale = tmp_path / ".R.json.p999999999.abc.tmp"  # as a writer whose process is gone leaves it
    stale.touch()
    mine = tmp_path / f".R.json.p{os.getpid()}.live.tmp"  # a live writer's: kept
    mine.touch()
    RP.write_retrieval_report({**result, "run": "new"}, out)
    assert json.loads(out.read_text())["run"] == "new" and out.with_suffix(".md").exists()
    assert not stale.exists() and mine.exists()
