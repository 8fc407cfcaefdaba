"""Export + load_run round trip, and the `generate` / `predict` commands on a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sevlm.cli import main
from sevlm.errors import DataError
from sevlm.export import load_run, save_export
from sevlm.io import sha256_file, write_json
from sevlm.text import model_inputs


@pytest.fixture
def tiny_run(tmp_path, make_model, tok, lexicon):
    """A run folder with export/ inside: tiny model on the tiny-random encoder's 32-d tokens."""
    m = make_model(visual_dim=32, seed=5).eval()
    run_dir = tmp_path / "run"
    cfg = {"data": {"lexicon": str(lexicon.source), "encoder": "tiny-random", "dataset_dir": None, "features": None}}
    save_export(run_dir / "export", m, tok, cfg)
    return run_dir, m


@pytest.mark.slow
def test_round_trip(tiny_run, builder, make_samples):
    run_dir, m = tiny_run
    export = run_dir / "export"
    assert sorted(p.name for p in export.iterdir()) == [
        "config.json",
        "decoder",
        "decoder_config.json",
        "model.safetensors",
        "tokenizer",
    ]
    assert sorted(p.name for p in (export / "decoder").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    cfg = json.loads((export / "config.json").read_text())
    # the decoder's weights are stored once, in decoder/; model.safetensors holds the rest
    assert cfg["format"] == "sevlm-export-2"
    assert cfg["weights"] == {"model.safetensors": "", "decoder/model.safetensors": "decoder."}
    assert cfg["weights_sha256"] == {f: sha256_file(export / f) for f in cfg["weights"]}
    own, dec = (load_file(str(export / f)) for f in cfg["weights"])
    assert own and not any(k.startswith("decoder.") for k in own)
    state = m.state_dict()
    assert sorted([*own, *("decoder." + k for k in dec)]) == sorted(state.keys() - {"decoder.lm_head.weight"})
    assert cfg["model"]["visual_dim"] == 32 and cfg["encoder"] == {"name": "tiny-random", "settings": {}}
    assert cfg["lexicon"].endswith("vad.tsv")
    run = load_run(run_dir)  # a run folder or its export/ both work
    assert load_run(export).path == export
    assert run.builder.ids == builder.ids and run.lexicon.describe() == builder.lexicon.describe()
    batch = builder.collate_eval(make_samples(2, dim=32))
    with torch.no_grad():
        torch.testing.assert_close(
            run.model(**model_inputs(batch)).logits, m(**model_inputs(batch)).logits, atol=0, rtol=0
        )
    # save again over the existing export: replaced atomically, still loadable
    save_export(export, run.model, run.tokenizer, cfg["train"])
    assert load_run(run_dir).config["encoder"]["name"] == "tiny-random"


def test_an_export_from_before_the_alignment_head_loads_without_one(
    tmp_path, make_model, tok, lexicon, builder, make_samples
):
    """config.json of an older sevlm has no `w_align`: such a model had no alignment head, and
    loads as it was trained (today's default would build one, and find no weights for it)."""
    m = make_model(visual_dim=32, seed=5, w_align=0.0).eval()
    export = save_export(tmp_path / "export", m, tok, {"data": {"lexicon": str(lexicon.source)}})
    cfg = json.loads((export / "config.json").read_text())
    del cfg["model"]["w_align"]
    write_json(export / "config.json", cfg)
    run = load_run(export)
    assert run.model.config.w_align == 0.0 and run.model.contrastive.align is None
    batch = builder.collate_eval(make_samples(2, dim=32))
    torch.testing.assert_close(run.model.embed_images(batch["visual"]), m.embed_images(batch["visual"]))


def test_sharded_decoder_round_trip(tmp_path, make_model, tok, builder, make_samples, monkeypatch):
    """A decoder that transformers writes in shards (a large one) is recorded file by file."""
    from transformers import GPT2LMHeadModel

    import sevlm.export

    monkeypatch.setattr(
        sevlm.export, "_save_hf_decoder", lambda dec, out: dec.save_pretrained(str(out), max_shard_size="100KB")
    )
    m = make_model(seed=2).eval()
    export = save_export(tmp_path / "export", m, tok, {"data": {"lexicon": "demo"}})
    weights = json.loads((export / "config.json").read_text())["weights"]
    shards = [f for f in weights if f.startswith("decoder/")]
    assert len(shards) > 1 and all(weights[f] == "decoder." for f in shards)
    batch = builder.collate_eval(make_samples(2))
    with torch.no_grad():
        torch.testing.assert_close(
            load_run(export).model(**model_inputs(batch)).logits, m(**model_inputs(batch)).logits, atol=0, rtol=0
        )
    stock = GPT2LMHeadModel.from_pretrained(str(export / "decoder"))
    assert all(torch.equal(v, m.decoder.state_dict()[k]) for k, v in stock.state_dict().items())


def test_load_errors(tmp_path, tiny_run):
    with pytest.raises(DataError, match="no exported model"):
        load_run(tmp_path / "nothing")
    run_dir, _ = tiny_run
    cfg = json.loads((run_dir / "export" / "config.json").read_text())
    cfg["lexicon"] = str(tmp_path / "gone.tsv")
    write_json(run_dir / "export" / "config.json", cfg)
    with pytest.raises(DataError, match="lexicon"):
        load_run(run_dir)
    assert load_run(run_dir, lexicon="demo").lexicon.source == "demo"


def _images(tmp_path, n=2):
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((40, 48, 3), 60 * i + 20, dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.mark.slow
def test_predict_command(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    imgs = _images(tmp_path)
    assert main(["predict", "--run", str(run_dir), *map(str, imgs), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["image"] for x in lines] == [str(p) for p in imgs]
    assert all(set(x) >= {"emotion", "explanation", "emotion_prob", "raw"} for x in lines)
    assert main(["predict", "--run", str(run_dir), str(tmp_path / "missing.png")]) == 1
    assert "missing.png" in capsys.readouterr().err


def test_generate_command(tiny_run, tmp_path):
    from sevlm.features.hdf5_writer import extract_features

    run_dir, _ = tiny_run
    images = tmp_path / "images" / "Style"
    images.mkdir(parents=True)
    records = {}
    for i, p in enumerate(_images(images, 3)):
        records[f"Style/{p.stem}"] = {"image_name": f"Style/{p.name}", "emotions": ["awe"], "explanations": ["a sky"]}
    dataset = tmp_path / "dataset"
    write_json(dataset / "test.json", records)
    feats = tmp_path / "f.h5"
    extract_features(tmp_path / "images", dataset, "tiny-random", feats, progress=False)
    out = tmp_path / "preds.jsonl"
    rc = main(["generate", "--run", str(run_dir), "--split", "test", "--out", str(out),
               "--features", str(feats), "--dataset", str(dataset), "--beams", "2"])  # fmt: skip
    assert rc == 0
    preds = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(p["image_id"] for p in preds) == sorted(records)
    assert all(set(p) == {"image_id", "emotion", "explanation", "emotion_prob", "raw"} for p in preds)
    # without --features and nothing recorded in the run: a one-line error
    assert (
        main(["generate", "--run", str(run_dir), "--split", "test", "--out", str(out), "--dataset", str(dataset)]) == 1
    )
