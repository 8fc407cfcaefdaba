"""The authors' training switches: each config key changes what it says, and `paper` takes the authors' value."""

from __future__ import annotations

import json

import pytest

from sevlm.errors import ConfigError
from sevlm.train.config import OptimConfig, load_train_config, resolve_ds_config


def test_paper_config_takes_the_authors_choices():
    cfg = load_train_config("paper")
    assert cfg.optim.clip_grad == 0  # no gradient clipping
    assert cfg.optim.heads_lr is None  # fusion and heads at the decoder's learning rate
    assert cfg.schedule.val_gen_images is None  # checkpoint selection on the full validation split
    assert cfg.schedule.val_dominance == "strict-majority"  # more than half the votes
    assert cfg.data.min_train_emotions == 2  # artEmisX_cl_train.json: images with >= 2 distinct emotions
    assert cfg.data.anchor == "last"  # their index_tracker, as it ran in DataLoader workers
    assert cfg.data.image_preprocess == "imagenet-squash"  # 224 x 224 squash, ImageNet mean/std
    m = cfg.model
    assert (m.vad_input, m.vad_bidirectional, m.visual_negative, m.visual_projection) == (
        "piece",
        True,
        "explanation",
        False,
    )


def test_configs_without_the_authors_data_keys_keep_ours():
    for name in ("demo", "tiny"):
        cfg = load_train_config(name)
        assert (cfg.data.min_train_emotions, cfg.data.anchor, cfg.data.image_preprocess) == (1, "uniform", None)
        m = cfg.model
        assert (m.vad_input, m.vad_bidirectional, m.visual_negative, m.visual_projection) == (
            "word",
            False,
            "image",
            True,
        )


def test_clip_grad_is_the_engine_clipping(tmp_path):
    assert resolve_ds_config("auto", "fp32", 4, 1, 1, clip_grad=0.0)["gradient_clipping"] == 0.0
    assert resolve_ds_config("auto", "fp32", 4, 1, 1, clip_grad=0.5)["gradient_clipping"] == 0.5
    own = tmp_path / "clip.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0}))
    with pytest.raises(ConfigError, match="sets gradient_clipping; ds_configs hold engine settings only"):
        resolve_ds_config(str(own), "fp32", 4, 1, 1)


def _tiny_model():
    import torch

    from sevlm.model import SEVLM, SEVLMConfig
    from sevlm.vocab import TokenIds, load_tokenizer

    torch.manual_seed(0)
    cfg = SEVLMConfig(
        n_layer=1, n_embd=16, n_head=2, n_positions=32, max_len=24, visual_dim=32, vad_ffn=8, contrastive_dim=8
    )
    return SEVLM(cfg.with_token_ids(TokenIds.from_tokenizer(load_tokenizer())))


@pytest.mark.parametrize("heads_lr, expected", [(None, 1e-3), (3e-3, 3e-3)])
def test_heads_lr_sets_fusion_and_heads_only(heads_lr, expected):
    from sevlm.train.engine import build_optimizer

    model = _tiny_model()
    optimizer, _ = build_optimizer(model, OptimConfig(decoder_lr=1e-3, emotion_lr=2e-3, heads_lr=heads_lr), 10)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        want = (
            2e-3
            if name.startswith("emotion_encoder.")
            else expected
            if name.startswith(("fusion.", "vad_head.", "contrastive."))
            else 1e-3
        )
        assert lr_of[id(p)] == want, name
    assert any(n.startswith("fusion.") for n, _ in model.named_parameters())


@pytest.fixture()
def val_setup(tiny_data):
    from sevlm.data.vad import VADLexicon
    from sevlm.features.hdf5 import H5FeatureDataset
    from sevlm.text import SequenceBuilder
    from sevlm.vocab import load_tokenizer

    builder = SequenceBuilder(load_tokenizer(), VADLexicon.load("demo"), max_len=24)
    samples = list(H5FeatureDataset(tiny_data["features"], tiny_data["dataset"], "val"))
    return _tiny_model(), builder, samples


def _validate(model, builder, samples, **kw):
    import torch

    from sevlm.train.validate import validate

    return validate(
        model,
        builder,
        samples,
        micro=2,
        rank=0,
        world=1,
        seed=0,
        max_batches=None,
        device="cpu",
        dtype=torch.float32,
        **kw,
    )


def test_val_gen_images_none_decodes_the_whole_split(val_setup):
    model, builder, samples = val_setup
    assert len(samples) >= 2
    assert _validate(model, builder, samples, gen_images=1)["n_generated"] == 1
    assert _validate(model, builder, samples, gen_images=None)["n_generated"] == len(samples)


def test_val_dominance_rule_decides_which_images_count(val_setup):
    model, builder, samples = val_setup
    # exactly half of all votes for fear (fear, fear, awe, sadness); dominance counts every vote, as in
    # `sevlm evaluate`, so it is read from emotion_distribution, not from the kept annotations
    shares = [0.0] * 9
    shares[6], shares[1], shares[7] = 0.5, 0.25, 0.25
    half = [
        dict(s, emotions=["awe"], explanations=list(s["explanations"])[:1], emotion_distribution=shares)
        for s in samples
    ]
    assert _validate(model, builder, half, gen_images=None, dominance="artemis")["accuracy"] is not None
    # more than half is required: no image has a dominant emotion, so there is no accuracy to report
    assert _validate(model, builder, half, gen_images=None, dominance="strict-majority")["accuracy"] is None
    with pytest.raises(ConfigError, match="schedule.val_dominance: expected one of artemis, strict-majority"):
        load_train_config("tiny", ["schedule.val_dominance=majority"])


def test_decoding_section_reaches_validation(val_setup, monkeypatch):
    import sevlm.generate

    model, builder, samples = val_setup
    cfg = load_train_config("tiny", ["decoding.max_new_tokens=3", "decoding.no_repeat_ngram=0"])
    assert (cfg.decoding.max_new_tokens, cfg.decoding.no_repeat_ngram) == (3, 0)
    with pytest.raises(ConfigError, match="decoding.strategy"):
        load_train_config("tiny", ["decoding.strategy=nucleus"])
    seen = []
    real = sevlm.generate.generate
    monkeypatch.setattr(sevlm.generate, "generate", lambda *a, **k: seen.append(k["decoding"]) or real(*a, **k))
    _validate(model, builder, samples, gen_images=1, decoding=cfg.decoding)
    assert seen == [cfg.decoding]


@pytest.mark.parametrize(
    "override, message",
    [
        ("schedule.checkpoint_every=0", "schedule.checkpoint_every: must be >= 1"),
        ("optim.decoder_lr=-1e-4", "optim.decoder_lr: must be >= 0"),
        ("optim.emotion_lr=-1", "optim.emotion_lr: must be >= 0"),
        ("optim.heads_lr=-1", "optim.heads_lr: must be >= 0"),
        ("optim.clip_grad=-1", "optim.clip_grad: must be >= 0"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config("tiny", [override])


# ---- the authors' training data: anchor annotation and images with >= 2 emotions -------------------
def _pair_builder(anchor):
    from sevlm.data.vad import VADLexicon
    from sevlm.text import SequenceBuilder
    from sevlm.vocab import load_tokenizer

    return SequenceBuilder(load_tokenizer(), VADLexicon.load("demo"), max_len=24, anchor=anchor)


def _anchors(builder, sample, n=40):
    """The anchor (first) sequence's input ids of each image's pair, over `n` batch seeds."""
    import numpy as np

    out = []
    for seed in range(n):
        batch = builder.collate([sample, sample], np.random.default_rng(seed))
        out.append(tuple(batch["input_ids"][0].tolist()))
    return out


def _sample(emotions, explanations):
    import torch

    return {"image_id": "img", "emotions": emotions, "explanations": explanations, "tokens": torch.zeros(2, 4)}


def test_anchor_last_is_always_the_last_annotation_and_uniform_varies():
    sample = _sample(["awe", "fear", "awe", "sadness"], ["the sky is vast", "a dark shape", "gold light", "she cries"])
    last = _pair_builder("last")
    want = tuple(last.encode("sadness", "she cries")["input_ids"].tolist())
    assert set(_anchors(last, sample)) == {want}
    assert len(set(_anchors(_pair_builder("uniform"), sample))) >= 3  # ours: every annotation gets its turn
    # the partner is still drawn among the other emotions' annotations, and the pair is valid
    import numpy as np

    partners = set()
    for seed in range(40):
        batch = last.collate([sample], np.random.default_rng(seed))
        assert bool(batch["pair_valid"][0])
        partners.add(tuple(batch["input_ids"][1].tolist()))
    assert partners == {
        tuple(last.encode(e, x)["input_ids"].tolist())
        for e, x in (("awe", "the sky is vast"), ("fear", "a dark shape"), ("awe", "gold light"))
    }


def test_anchor_is_checked():
    with pytest.raises(ValueError, match="anchor must be one of uniform, last"):
        _pair_builder("first")
    with pytest.raises(ConfigError, match="data.anchor: expected one of uniform, last"):
        load_train_config("tiny", ["data.anchor=first"])
    with pytest.raises(ConfigError, match="data.min_train_emotions: must be 1..9"):
        load_train_config("tiny", ["data.min_train_emotions=0"])


def test_min_train_emotions_keeps_images_with_two_emotions(tiny_data):
    from sevlm.data.folder import load_split_records
    from sevlm.train.checks import feature_info
    from sevlm.train.config import DataConfig
    from sevlm.train.data import open_source

    records = load_split_records(tiny_data["dataset"], "train")
    multi = {k for k, r in records.items() if len(set(r["emotions"])) >= 2}
    assert 0 < len(multi) < len(records)  # the fixture has both kinds, so the filter shows
    kw = dict(collate=None, micro=2, rank=0, world_size=1, seed=0)
    data = DataConfig(dataset_dir=str(tiny_data["dataset"]), features=str(tiny_data["features"]))
    everything = open_source(feature_info(data.features, None), data, **kw)
    assert {s["image_id"] for s in everything.train_set} == set(records)
    data.min_train_emotions = 2
    authors = open_source(feature_info(data.features, None), data, **kw)
    assert {s["image_id"] for s in authors.train_set} == multi
    assert authors.train_set.n_few_emotions == len(records) - len(multi)
    assert authors.num_images == len(multi)
    assert len(authors.val_samples()) == len(everything.val_samples())  # validation keeps every image


def test_min_train_emotions_refuses_shards(shard_dir):
    from sevlm.train.checks import feature_info
    from sevlm.train.config import DataConfig
    from sevlm.train.data import open_source

    data = DataConfig(shards=str(shard_dir), min_train_emotions=2)
    with pytest.raises(ConfigError, match="min_train_emotions=2 needs an HDF5 feature cache"):
        open_source(feature_info(None, data.shards), data, collate=None, micro=2, rank=0, world_size=1, seed=0)


# ---- the authors' image preprocessing (METHOD row 17) -------------------------------------------------
def test_imagenet_squash_squashes_the_whole_image_with_imagenet_statistics():
    import numpy as np
    import torch
    from PIL import Image

    from sevlm.encoders import build_encoder

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (20, 64, 3), dtype=np.uint8))  # wide: a crop would lose the sides
    ours = build_encoder("tiny-random")
    authors = build_encoder("tiny-random", image_preprocess="imagenet-squash")
    want = np.asarray(img.resize((32, 32), resample=Image.BILINEAR), dtype=np.float32) / 255.0
    want = (want - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array(
        [0.229, 0.224, 0.225], dtype=np.float32
    )
    got = authors.preprocess(img)
    assert got.shape == (3, 32, 32)
    torch.testing.assert_close(got, torch.from_numpy(want).permute(2, 0, 1))
    assert not torch.allclose(ours.preprocess(img), got)
    assert authors.describe()["settings"]["image_preprocess"] == "imagenet-squash"
    assert "image_preprocess" not in ours.describe()["settings"]  # caches from before the switch read as ours
    assert authors.describe()["preprocessing"]["mode"] == "imagenet-squash"
    with pytest.raises(ConfigError, match="image preprocessing: expected one of encoder, imagenet-squash"):
        build_encoder("tiny-random", image_preprocess="stretch")


def test_data_image_preprocess_is_checked_against_the_cache(tiny_data, tmp_path):
    from sevlm.errors import DataError
    from sevlm.train.checks import check_features
    from sevlm.train.config import DataConfig

    data = DataConfig(dataset_dir=str(tiny_data["dataset"]), features=str(tiny_data["features"]))
    assert check_features(data).image_preprocess == "encoder"
    data.image_preprocess = "imagenet-squash"
    with pytest.raises(
        DataError,
        match="extracted with image preprocessing 'encoder' but the config names "
        "'imagenet-squash'.*--image-preprocess imagenet-squash",
    ):
        check_features(data)
    squashed = tmp_path / "squashed.h5"
    from sevlm.cli import main

    assert (
        main(
            [
                "extract",
                "--images",
                str(tiny_data["root"] / "raw" / "images"),
                "--dataset",
                str(tiny_data["dataset"]),
                "--encoder",
                "tiny-random",
                "--out",
                str(squashed),
                "--workers",
                "0",
                "--image-preprocess",
                "imagenet-squash",
            ]
        )
        == 0
    )
    data.features = str(squashed)
    assert check_features(data).image_preprocess == "imagenet-squash"
    from sevlm.features.hdf5 import FeatureStore

    store = FeatureStore(squashed)
    assert store.encoder_spec["settings"]["image_preprocess"] == "imagenet-squash"  # predict rebuilds it so
    store.close()


def test_a_run_with_the_authors_switches_trains_exports_and_generates(tiny_data, tiny_config, tmp_path):
    from sevlm.data.folder import load_split_records
    from sevlm.export import load_run
    from sevlm.predictions import generate_split
    from sevlm.train import train

    switches = (
        "data.min_train_emotions=2",
        "data.anchor=last",
        "data.image_preprocess=encoder",
        "model.vad_input=piece",
        "model.vad_bidirectional=true",
        "model.visual_negative=explanation",
        "model.visual_projection=false",
    )
    run_dir = train(
        tiny_config("schedule.max_steps=2", "schedule.val_every=0", "schedule.val_gen_images=2", *switches),
        out_dir=tmp_path / "run",
    )
    records = load_split_records(tiny_data["dataset"], "train")
    multi = sum(len(set(r["emotions"])) >= 2 for r in records.values())
    info = json.loads((run_dir / "run.json").read_text())
    assert info["train_images"] == multi
    assert info["train_images_left_out_few_emotions"] == len(records) - multi
    run = load_run(run_dir)
    c = run.model.config
    assert (c.vad_input, c.vad_bidirectional, c.visual_negative, c.visual_projection) == (
        "piece",
        True,
        "explanation",
        False,
    )
    assert run.builder.vad_input == "piece"
    preds = generate_split(run_dir, "val", tmp_path / "pred.jsonl")
    assert len(preds) == len(load_split_records(tiny_data["dataset"], "val")) and all("explanation" in p for p in preds)


def test_no_visual_projection_needs_features_as_wide_as_the_decoder(tiny_data):
    from sevlm.train.checks import feature_info
    from sevlm.train.resolve import build_model_config as model_config

    cfg = load_train_config("tiny", ["model.visual_projection=false", "model.n_embd=64"])
    with pytest.raises(ConfigError, match="holds 32-d tokens and the decoder is 64 wide"):
        model_config(cfg.model, feature_info(str(tiny_data["features"]), None))
    cfg = load_train_config("tiny", ["model.visual_projection=false"])
    assert model_config(cfg.model, feature_info(str(tiny_data["features"]), None)).visual_dim == 32
