"""DecodingConfig checks and overrides, and the decoding flags of `generate` / `predict`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sevlm.cli import build_parser, main
from sevlm.config import from_dict
from sevlm.decoding import DecodingConfig
from sevlm.errors import ConfigError
from sevlm.export import load_run, save_export
from sevlm.io import write_json
from sevlm.predictions import predictions_meta_path, run_decoding


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"strategy": "topk"}, "strategy"),
        ({"strategy": "beam"}, "num_beams"),
        ({"num_beams": 3}, "num_beams"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"no_repeat_ngram": -1}, "no_repeat_ngram"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"strategy": "sample", "top_p": 0.0}, "top_p"),
        ({"strategy": "sample", "top_k": -2}, "top_k"),
        ({"strategy": "sample", "temperature": 0.0}, "temperature"),
        ({"top_p": 0.9}, "top_p"),  # a sampling filter on greedy decoding is a mistake, not a no-op
    ],
)
def test_config_refuses(kwargs, field):
    with pytest.raises(ConfigError, match=f"decoding.{field}"):
        DecodingConfig(**kwargs)


def test_config_from_dict_and_updates():
    d = from_dict(DecodingConfig, {"strategy": "beam", "num_beams": 4, "length_penalty": 2}, where="train.decoding")
    assert (d.strategy, d.num_beams, d.length_penalty, d.no_repeat_ngram) == ("beam", 4, 2.0, 2)
    with pytest.raises(ConfigError, match="train.decoding: unknown key"):
        from_dict(DecodingConfig, {"beams": 3}, where="train.decoding")
    assert DecodingConfig().updated(num_beams=3) == DecodingConfig(strategy="beam", num_beams=3)
    assert d.updated(strategy="greedy") == DecodingConfig(length_penalty=2.0)
    assert d.updated(num_beams=1).strategy == "greedy"
    assert DecodingConfig().updated(strategy="beam").num_beams == 3
    s = DecodingConfig(strategy="sample", top_p=0.9)
    assert s.updated(strategy="greedy") == DecodingConfig()
    assert s.updated(seed=5, top_p=None) == DecodingConfig(strategy="sample", top_p=0.9, seed=5)
    with pytest.raises(ConfigError, match="top_k"):
        DecodingConfig().updated(top_k=5)
    assert DecodingConfig(**DecodingConfig(strategy="beam", num_beams=2).to_dict()).num_beams == 2


def test_config_imports_without_torch():
    code = "import sys, sevlm.decoding; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_decoding_flags_with_examples():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    for name in ("generate", "predict"):
        text = sub[name].format_help()
        for flag in (
            "--strategy",
            "--beams",
            "--no-repeat-ngram",
            "--repetition-penalty",
            "--length-penalty",
            "--top-k",
            "--top-p",
            "--temperature",
            "--seed",
            "--max-new-tokens",
        ):
            assert flag in text, (name, flag)
    assert "--strategy sample --top-p 0.9" in sub["generate"].format_help()


@pytest.fixture
def run_with_split(tmp_path, make_model, tok, lexicon):
    """A run whose train config records a beam decoding, a 3-image test split and its features."""
    from sevlm.features.hdf5_writer import extract_features

    m = make_model(visual_dim=32, seed=5).eval()
    run_dir = tmp_path / "run"
    cfg = {
        "data": {"lexicon": str(lexicon.source), "encoder": "tiny-random", "dataset_dir": None, "features": None},
        "decoding": {"strategy": "beam", "num_beams": 2, "no_repeat_ngram": 3, "max_new_tokens": 6},
    }
    save_export(run_dir / "export", m, tok, cfg)
    images = tmp_path / "images" / "Style"
    images.mkdir(parents=True)
    records = {}
    for i in range(3):
        Image.fromarray(np.full((40, 48, 3), 60 * i + 20, dtype=np.uint8)).save(images / f"img{i}.png")
        records[f"Style/img{i}"] = {"image_name": f"Style/img{i}.png", "emotions": ["awe"], "explanations": ["a sky"]}
    dataset = tmp_path / "dataset"
    write_json(dataset / "test.json", records)
    feats = tmp_path / "f.h5"
    extract_features(tmp_path / "images", dataset, "tiny-random", feats, progress=False)
    return run_dir, dataset, feats, images


def test_run_decoding_is_recorded_then_changed(run_with_split):
    run = load_run(run_with_split[0])
    recorded = DecodingConfig(strategy="beam", num_beams=2, no_repeat_ngram=3, max_new_tokens=6)
    assert run_decoding(run) == recorded
    assert run_decoding(run, {"no_repeat_ngram": 0}) == DecodingConfig(
        strategy="beam", num_beams=2, max_new_tokens=6, no_repeat_ngram=0
    )
    assert run_decoding(run, DecodingConfig()) == DecodingConfig()


@pytest.mark.slow
def test_generate_writes_sidecar_and_evaluate_reads_predictions(run_with_split, tmp_path):
    run_dir, dataset, feats, _ = run_with_split
    out = tmp_path / "preds.jsonl"
    args = [
        "generate",
        "--run",
        str(run_dir),
        "--split",
        "test",
        "--out",
        str(out),
        "--features",
        str(feats),
        "--dataset",
        str(dataset),
    ]
    assert main(args + ["--strategy", "greedy", "--repetition-penalty", "1.3"]) == 0
    preds = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(preds) == 3
    meta = json.loads(predictions_meta_path(out).read_text())
    assert meta["format"] == "sevlm-predictions-meta-1" and meta["split"] == "test" and meta["count"] == 3
    # the run's recorded settings, with the two flags given
    assert meta["decoding"] == DecodingConfig(no_repeat_ngram=3, max_new_tokens=6, repetition_penalty=1.3).to_dict()
    assert main(args) == 0
    assert json.loads(predictions_meta_path(out).read_text())["decoding"]["strategy"] == "beam"
    # a bad combination is one line naming the setting
    assert main(args + ["--top-p", "0.5"]) == 1
    report = tmp_path / "report.json"
    assert (
        main(["evaluate", "--predictions", str(out), "--references", str(dataset / "test.json"), "--out", str(report)])
        == 0
    )
    assert json.loads(report.read_text())["n_predictions"] == 3


@pytest.mark.slow
def test_predict_takes_decoding_flags(run_with_split, capsys):
    run_dir, _, _, images = run_with_split
    img = str(images / "img0.png")
    assert main(["predict", "--run", str(run_dir), img, "--json", "--strategy", "sample", "--seed", "3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["predict", "--run", str(run_dir), img, "--json", "--strategy", "sample", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert main(["predict", "--run", str(run_dir), img, "--repetition-penalty", "0"]) == 1
    assert "decoding.repetition_penalty" in capsys.readouterr().err
