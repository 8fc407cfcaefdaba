"""Exports that teammates can read and that refuse damaged weights, naming the file."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from sevlm.cli import main
from sevlm.errors import DataError
from sevlm.export import RunDataPaths, load_run, save_export
from sevlm.io import write_json


def test_export_follows_umask(tmp_path, make_model, tok):
    old = os.umask(0o002)
    try:
        out = save_export(tmp_path / "runs" / "r1" / "export", make_model().eval(), tok, {"data": {"lexicon": "demo"}})
    finally:
        os.umask(old)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes.pop(".") == modes.pop("tokenizer") == modes.pop("decoder") == 0o775
    assert set(modes.values()) == {0o664}, modes
    assert stat.S_IMODE((tmp_path / "runs").stat().st_mode) == 0o775  # parents created too


def _features(tmp_path, name: str, **encoder_kwargs):
    """3 images in a one-split dataset, encoded by tiny-random with `encoder_kwargs`."""
    from sevlm.features.hdf5_writer import extract_features

    images = tmp_path / "images"
    if not images.exists():
        (images / "Style").mkdir(parents=True)
        records = {}
        for i in range(3):
            Image.fromarray(np.full((40, 48, 3), 60 * i + 20, dtype=np.uint8)).save(images / "Style" / f"p{i}.png")
            records[f"Style/p{i}"] = {"image_name": f"Style/p{i}.png", "emotions": ["awe"], "explanations": ["a sky"]}
        write_json(tmp_path / "dataset" / "test.json", records)
    out = tmp_path / name
    extract_features(images, tmp_path / "dataset", "tiny-random", out, encoder_kwargs=encoder_kwargs, progress=False)
    return out


@pytest.mark.slow
def test_export_records_the_features_encoder_settings(tmp_path, make_model, tok):
    # features of a non-default encoder (what `extract --weights X` gives): predict must rebuild it
    feats = _features(tmp_path, "f24.h5", seed=3, dim=24)
    cfg = {
        "data": {
            "lexicon": "demo",
            "encoder": "tiny-random",
            "features": str(feats),
            "dataset_dir": str(tmp_path / "dataset"),
        }
    }
    out = save_export(tmp_path / "export", make_model(visual_dim=24).eval(), tok, cfg)
    run = load_run(out)
    assert run.config["encoder"] == {
        "name": "tiny-random",
        "settings": {"seed": 3, "image_size": 32, "patch_size": 8, "dim": 24},
    }
    enc = run.image_encoder()
    assert (enc.seed, enc.dim) == (3, 24)
    assert run.data_paths == RunDataPaths(str(tmp_path / "dataset"), str(feats), None, "demo")
    assert RunDataPaths.of(tmp_path / "export") == run.data_paths
    img = tmp_path / "images" / "Style" / "p1.png"
    assert main(["predict", "--run", str(out), str(img), "--json"]) == 0


@pytest.mark.slow
def test_features_of_another_width_are_one_line(tmp_path, make_model, tok, capsys):
    feats32 = _features(tmp_path, "f32.h5")  # 32-d tokens
    cfg = {
        "data": {
            "lexicon": "demo",
            "encoder": {"name": "tiny-random", "settings": {"dim": 24}},
            "dataset_dir": str(tmp_path / "dataset"),
        }
    }
    out = save_export(tmp_path / "export", make_model(visual_dim=24).eval(), tok, cfg)
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                "--run",
                str(out),
                "--split",
                "test",
                "--features",
                str(feats32),
                "--out",
                str(tmp_path / "p.jsonl"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{feats32}: 32-d visual tokens" in err and "expects 24-d" in err, err
    assert (
        main(
            [
                "retrieve",
                "--run",
                str(out),
                "--split",
                "test",
                "--features",
                str(feats32),
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "32-d visual tokens" in err and "expects 24-d" in err, err
    # a recorded encoder of the wrong width: refused before any image is encoded
    cfg["data"]["encoder"] = {"name": "tiny-random", "settings": {"dim": 32}}
    out = save_export(tmp_path / "export", make_model(visual_dim=24).eval(), tok, cfg)
    img = tmp_path / "images" / "Style" / "p1.png"
    assert main(["predict", "--run", str(out), str(img)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "32-d visual tokens" in err and "expects 24-d" in err, err


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize("name", ["model.safetensors", "decoder/model.safetensors"])
def test_damaged_weights_name_the_file(tmp_path, make_model, tok, damage, name):
    out = save_export(tmp_path / "export", make_model().eval(), tok, {"data": {"lexicon": "demo"}})
    assert sorted(json.loads((out / "config.json").read_text())["weights_sha256"]) == [
        "decoder/model.safetensors",
        "model.safetensors",
    ]
    weights = out / name
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data[-10] ^= 0x01  # one bit inside a tensor: safetensors itself would load it
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{weights}: damaged weights"):
        load_run(out)


def test_missing_decoder_weights_name_the_file(tmp_path, make_model, tok):
    out = save_export(tmp_path / "export", make_model().eval(), tok, {"data": {"lexicon": "demo"}})
    (out / "decoder" / "model.safetensors").unlink()
    with pytest.raises(DataError, match=f"{out / 'decoder' / 'model.safetensors'}: missing weights"):
        load_run(out)


@pytest.mark.parametrize("name", ["model.safetensors", "decoder/model.safetensors"])
def test_unreadable_weights_without_a_recorded_checksum(tmp_path, make_model, tok, name):
    out = save_export(tmp_path / "export", make_model().eval(), tok, {"data": {"lexicon": "demo"}})
    cfg = json.loads((out / "config.json").read_text())
    del cfg["weights_sha256"]  # an export from before checksums
    write_json(out / "config.json", cfg)
    (out / name).write_bytes((out / name).read_bytes()[:50])
    with pytest.raises(DataError, match=f"{out / name}: unreadable weights"):
        load_run(out)


def _as_format_1(out, model) -> None:
    """Rewrite export `out` as sevlm-export-1 wrote it, before decoder/: every weight in
    model.safetensors (lm_head stored once, as wte), its sha256 a string."""
    import shutil

    from safetensors.torch import save_file

    from sevlm.io import sha256_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "decoder.lm_head.weight"}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "sevlm-export-1"})
    shutil.rmtree(out / "decoder")
    cfg = json.loads((out / "config.json").read_text())
    for key in ("weights", "hf_decoder"):
        del cfg[key]
    cfg.update(format="sevlm-export-1", weights_sha256=sha256_file(out / "model.safetensors"))
    write_json(out / "config.json", cfg)


def test_format_1_export_still_loads(tmp_path, make_model, tok, builder, make_samples):
    import torch

    from sevlm.text import model_inputs

    m = make_model(seed=3).eval()
    out = save_export(tmp_path / "export", m, tok, {"data": {"lexicon": "demo"}})
    _as_format_1(out, m)
    run = load_run(out)
    assert run.config["format"] == "sevlm-export-1"
    assert run.model.decoder.lm_head.weight.data_ptr() == run.model.decoder.transformer.wte.weight.data_ptr()
    batch = builder.collate_eval(make_samples(2))
    with torch.no_grad():
        torch.testing.assert_close(
            run.model(**model_inputs(batch)).logits, m(**model_inputs(batch)).logits, atol=0, rtol=0
        )
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-10] ^= 0x01  # its one string checksum still guards the one file
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{out / 'model.safetensors'}: damaged weights"):
        load_run(out)


@pytest.mark.slow
def test_image_faults_are_one_line(tmp_path, make_model, tok, capsys):
    feats = _features(tmp_path, "f32.h5")
    out = save_export(
        tmp_path / "export",
        make_model(visual_dim=32).eval(),
        tok,
        {"data": {"lexicon": "demo", "features": str(feats), "dataset_dir": str(tmp_path / "dataset")}},
    )
    bomb = tmp_path / "bomb.png"
    Image.new("1", (14000, 14000)).save(bomb)  # 196 Mpx in 24 kB: PIL refuses to decode it
    truncated = tmp_path / "cut.png"
    truncated.write_bytes((tmp_path / "images" / "Style" / "p0.png").read_bytes()[:60])
    capsys.readouterr()
    for image, why in (
        (bomb, "too large to decode safely"),
        (truncated, "corrupt or truncated"),
        (tmp_path / "no.png", "file not found"),
    ):
        assert main(["predict", "--run", str(out), str(image)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{image}: {why}" in err, err
        assert (
            main(
                [
                    "retrieve",
                    "--run",
                    str(out),
                    "--split",
                    "test",
                    "--query-image",
                    str(image),
                    "--out",
                    str(tmp_path / "q.json"),
                ]
            )
            == 1
        )
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{image}: {why}" in err, err


def test_damaged_config_is_one_line(tmp_path, make_model, tok):
    out = save_export(tmp_path / "export", make_model().eval(), tok, {"data": {"lexicon": "demo"}})
    cfg = json.loads((out / "config.json").read_text())
    del cfg["model"]
    write_json(out / "config.json", cfg)
    with pytest.raises(DataError, match=r"config\.json: no \"model\" section"):
        load_run(out)


@pytest.mark.parametrize("name", ["../elsewhere/model.safetensors", "/tmp/model.safetensors", "link/model.safetensors"])
def test_weights_files_outside_the_export_are_refused(tmp_path, make_model, tok, name):
    import shutil

    out = save_export(tmp_path / "export", make_model().eval(), tok, {"data": {"lexicon": "demo"}})
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(out / "decoder" / "model.safetensors", tmp_path / "elsewhere" / "model.safetensors")
    os.symlink(tmp_path / "elsewhere", out / "link")  # a symlink out of the folder counts as outside
    cfg = json.loads((out / "config.json").read_text())
    cfg["weights"] = {"model.safetensors": "", name: "decoder."}
    cfg["weights_sha256"].pop("decoder/model.safetensors")
    write_json(out / "config.json", cfg)
    with pytest.raises(
        DataError,
        match=rf"config\.json: weights file '{name}' (lies outside the export folder|is not a file name inside)",
    ):
        load_run(out)
    assert main(["generate", "--run", str(out), "--out", str(tmp_path / "p.jsonl")]) == 1
