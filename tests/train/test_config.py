"""Training config: batch-size resolution, resolved DeepSpeed configs, every shipped config loads."""

from __future__ import annotations

import json
import re

import pytest

from sevlm.config import named_configs
from sevlm.errors import ConfigError
from sevlm.train.checks import check_memory, estimate_memory_bytes
from sevlm.train.config import (
    DS_CONFIG_DIR,
    ScheduleConfig,
    TrainConfig,
    config_to_dict,
    load_train_config,
    resolve_batch,
    resolve_ds_config,
)

TRAIN_CONFIGS = ("tiny", "demo", "paper")


def test_global_batch_is_micro_times_world_times_accum():
    assert resolve_batch(ScheduleConfig(micro_batch=8), world_size=2) == (8, 1, 16)
    assert resolve_batch(ScheduleConfig(micro_batch=8, grad_accum=3), world_size=2) == (8, 3, 48)
    # accumulation derived from the global batch
    assert resolve_batch(ScheduleConfig(micro_batch=4, global_batch=32), world_size=2) == (4, 4, 32)
    assert resolve_batch(ScheduleConfig(micro_batch=4, grad_accum=4, global_batch=32), world_size=2) == (4, 4, 32)


@pytest.mark.parametrize(
    "schedule, world, message",
    [
        (ScheduleConfig(micro_batch=4, global_batch=30), 2, "not a multiple of micro_batch x world_size = 4 x 2 = 8"),
        (ScheduleConfig(micro_batch=4, grad_accum=2, global_batch=32), 2, "!= micro_batch x world_size x grad_accum"),
        (ScheduleConfig(micro_batch=4, grad_accum=0), 1, "grad_accum: must be >= 1"),
    ],
)
def test_bad_batch_settings_are_refused(schedule, world, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_batch(schedule, world)


@pytest.mark.parametrize("name", sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json")))
def test_shipped_ds_configs_resolve(name):
    precision = "fp16" if "fp16" in name else "bf16" if "bf16" in name else "fp32"
    cfg = resolve_ds_config(name, precision, micro=4, accum=2, world_size=3)
    assert cfg["train_batch_size"] == 24
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["fp16"]["enabled"] is (precision == "fp16") and cfg["bf16"]["enabled"] is (precision == "bf16")
    assert cfg["gradient_clipping"] == 1.0  # the trainer's optim.clip_grad default
    stage = cfg["zero_optimization"]["stage"]
    assert stage == (0 if name.startswith("zero0") else 2)


def test_paper_fp16_config_uses_dynamic_loss_scaling():
    cfg = resolve_ds_config("auto", "fp16", micro=32, accum=1, world_size=1)
    assert cfg["fp16"]["loss_scale"] == 0  # 0 = dynamic in DeepSpeed
    assert cfg["zero_optimization"]["stage"] == 2


def test_ds_config_with_batch_sizes_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": 64}))
    with pytest.raises(ConfigError, match="sets train_batch_size; ds_configs hold engine settings only"):
        resolve_ds_config(str(bad), "fp32", 4, 1, 1)
    with pytest.raises(ConfigError, match="ds_config 'nope' not found"):
        resolve_ds_config("nope", "fp32", 4, 1, 1)


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_shipped_training_configs_load(name):
    assert name in named_configs()
    cfg = load_train_config(name)
    assert isinstance(cfg, TrainConfig)
    from sevlm.model import SEVLMConfig

    assert isinstance(cfg.model, SEVLMConfig)  # every model key is a real SEVLMConfig field
    micro, accum, global_batch = resolve_batch(cfg.schedule, world_size=1)
    assert global_batch == micro * accum
    precision = "fp16" if name == "paper" else "fp32"
    resolve_ds_config(cfg.ds_config, precision, micro, accum, 1)


def test_paper_config_is_the_paper_setting():
    cfg = load_train_config("paper")
    assert cfg.model.decoder == "distilgpt2" and cfg.data.encoder == "clip-vit-b16"
    assert (cfg.optim.decoder_lr, cfg.optim.emotion_lr, cfg.optim.weight_decay) == (2e-5, 4e-5, 0.0)
    assert resolve_batch(cfg.schedule, 1)[2] == 32 and cfg.schedule.epochs == 35
    assert (cfg.schedule.val_every, cfg.schedule.patience) == (2000, 10)


def test_overrides_and_bad_values():
    cfg = load_train_config("tiny", ["schedule.micro_batch=2", "optim.decoder_lr=0.5"])
    assert cfg.schedule.micro_batch == 2 and cfg.optim.decoder_lr == 0.5
    with pytest.raises(ConfigError, match="unknown key"):
        load_train_config("tiny", ["schedule.batch=2"])
    with pytest.raises(ConfigError, match="precision"):
        load_train_config("tiny", ["precision=fp8"])


@pytest.mark.parametrize(
    "override, meant",
    [
        ("micro_batch=8", "micro_batch (did you mean schedule.micro_batch?)"),  # unqualified
        ("lexicon=x", "lexicon (did you mean data.lexicon?)"),
        ("data.featurs=x", "featurs (did you mean data.features?)"),  # misspelt
        ("schedule.epoch=3", "epoch (did you mean schedule.epochs?)"),
    ],
)
def test_unknown_keys_name_the_key_they_may_mean(override, meant):
    with pytest.raises(ConfigError, match=re.escape(meant)):
        load_train_config("tiny", [override])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) zzz; known"):  # no guess when nothing is close
        load_train_config("tiny", ["zzz=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_layers=2", r"tiny.model: unknown key\(s\) n_layers"),
        ("model.n_layer=two", r"tiny.model.n_layer: expected int, got 'two'"),
        ("model.mode=crosss", r"tiny.model: mode must be 'cross', 'prefix' or 'none'"),
        ("model.n_head=5", r"tiny.model: n_embd=32 is not divisible by n_head=5"),
    ],
)
def test_bad_model_keys_are_refused_with_the_config(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config("tiny", [override])


def test_memory_estimate_grows_with_batch_and_refuses_what_cannot_fit():
    args = dict(
        n_params=82_000_000,
        seq_len=30,
        n_layer=6,
        n_embd=768,
        n_head=12,
        vocab_size=50260,
        n_visual=196,
        visual_dim=768,
        precision="fp16",
    )
    small, big = estimate_memory_bytes(micro_batch=8, **args), estimate_memory_bytes(micro_batch=64, **args)
    assert small < big
    # ZeRO-2 over 4 ranks shards Adam state and gradients
    assert estimate_memory_bytes(micro_batch=8, world_size=4, **args) < small
    # the paper setting (batch 32, fp16) fits an 11 GB card; batch 1024 does not
    check_memory(estimate_memory_bytes(micro_batch=32, **args), "cpu", 11, 32)
    with pytest.raises(
        ConfigError, match="schedule.micro_batch=1024 needs about .* GiB per process but max_memory_gb is 11.0 GiB"
    ):
        check_memory(estimate_memory_bytes(micro_batch=1024, **args), "cpu", 11, 1024)


def test_a_run_from_before_the_alignment_head_resumes_without_one(tmp_path):
    """--resume reads the run's saved config.json; one written before `w_align` existed trained
    no alignment head, so it resumes with none (not with today's default of 1)."""
    from sevlm.train import load_train_config
    from sevlm.train.run_folder import prepare_run

    saved = config_to_dict(load_train_config("tiny", ["data.dataset_dir=/d", "data.features=/f.h5"]))
    del saved["model"]["w_align"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg, run_dir, resuming = prepare_run(None, tmp_path, None)
    assert resuming and run_dir == tmp_path and cfg.model.w_align == 0.0
    saved["model"]["w_align"] = 0.5  # a saved value is kept
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert prepare_run(None, tmp_path, None)[0].model.w_align == 0.5
