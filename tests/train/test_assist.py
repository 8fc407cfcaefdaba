"""The main process collates when it would wait (sevlm.train.data.Assist): the same batches
whoever collates them, buffers that travel once, and the policy that decides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sevlm.errors import ConfigError
from sevlm.train import data as D


def _collate(samples, rng):
    """Which images, in what order, their features, and the batch's pair-sampling draw; records
    which process collated it."""
    import os

    return {
        "ids": [s["image_id"] for s in samples],
        "draw": int(rng.integers(1 << 30)),
        "visual": torch.from_numpy(np.stack([np.asarray(s["tokens"]) for s in samples])),
        "pid": os.getpid(),
    }


def _source(kind, tiny_data, shard_dir, workers, assist):
    common = dict(collate=_collate, micro=3, rank=0, world_size=1, seed=7, num_workers=workers, assist=assist)
    if kind == "hdf5":
        return D.H5Source(tiny_data["features"], tiny_data["dataset"], "train", "val", **common)
    return D.ShardSource(shard_dir, "train", "val", **common)


def _epoch(source, epoch=1, start=0):
    return [(b["ids"], b["draw"], b["visual"], b["pid"]) for b in source.epoch(epoch, start)]


def _same(a, b):
    assert len(a) == len(b) >= 5
    for (ids_a, draw_a, vis_a, _), (ids_b, draw_b, vis_b, _) in zip(a, b):
        assert ids_a == ids_b and draw_a == draw_b
        assert vis_a.dtype == vis_b.dtype == torch.float16 and torch.equal(vis_a, vis_b)


@pytest.mark.parametrize("kind", ["hdf5", "shards"])
@pytest.mark.parametrize("workers", [1, 2])
def test_batches_collated_in_the_main_process_equal_those_collated_in_workers(kind, workers, tiny_data, shard_dir):
    import os

    never = _epoch(_source(kind, tiny_data, shard_dir, workers, "never"))
    always = _epoch(_source(kind, tiny_data, shard_dir, workers, "always"))
    _same(never, always)
    assert {pid for *_, pid in never}.isdisjoint({os.getpid()})  # collated in the workers
    assert {pid for *_, pid in always} == {os.getpid()}  # every one collated here
    if kind == "hdf5":  # map-style: the batches do not depend on the worker count at all
        _same(_epoch(_source(kind, tiny_data, shard_dir, 0, "never")), always)


@pytest.mark.parametrize("kind", ["hdf5", "shards"])
def test_resume_mid_epoch_is_exact_with_main_process_collation(kind, tiny_data, shard_dir):
    full = _epoch(_source(kind, tiny_data, shard_dir, 1, "never"))
    for start in (1, 4):
        _same(_epoch(_source(kind, tiny_data, shard_dir, 1, "always"), start=start), full[start:])
        _same(_epoch(_source(kind, tiny_data, shard_dir, 1, "auto"), start=start), full[start:])


def test_auto_ships_samples_only_while_the_main_process_is_short(monkeypatch):
    monkeypatch.setattr(D, "_cores", lambda: 2)
    a = D.Assist("auto", num_workers=1)  # prefetch depth 2
    assert not a.ship_samples()  # nobody has asked yet
    a.taking(0)  # nothing made: the main process would wait
    assert a.ship_samples()
    a.made_one()
    a.taking(1)  # one made, one taken before: none ready, still short
    assert a.ship_samples()
    a.made_one()
    a.taking(1)  # one ready: in between, unchanged
    assert a.ship_samples()
    a.made_one()
    a.taking(1)  # two ready, the prefetch is full: the workers are ahead, they collate again
    assert not a.ship_samples()
    a.taking(2)  # in between again: unchanged
    assert not a.ship_samples()
    # as many workers as cores: the main process has no core to collate on
    b = D.Assist("auto", num_workers=2)
    b.taking(0)
    assert not b.ship_samples()
    assert D.Assist("always", 2).ship_samples() and not D.Assist("never", 1).ship_samples()
    with pytest.raises(ValueError, match="expected one of auto, never, always, got 'sometimes'"):
        D.Assist("sometimes", 1)


def test_a_pooled_buffer_travels_once_then_by_its_slot(fresh_pool):
    kept: dict = {}
    batch = {"visual": torch.arange(6, dtype=torch.float16).view(2, 3), "ids": ["a", "b"]}
    first = D.pack(batch)
    assert "_buffer" in first and "_slot" in first
    slot = first["_slot"]
    got = D.unpack(first, kept)
    assert torch.equal(got["visual"], batch["visual"]) and got["ids"] == ["a", "b"]
    again = D.pack({**batch, "visual": batch["visual"] + 1})
    assert "_buffer" not in again and again["_slot"] == slot and slot in kept
    assert torch.equal(D.unpack(again, kept)["visual"], batch["visual"] + 1)
    assert torch.equal(got["visual"], batch["visual"])  # the earlier copy out is untouched
    with pytest.raises(KeyError):
        D.unpack(D.pack(batch), {})  # a slot never received


def test_main_assist_is_a_checked_config_key(tiny_config):
    assert tiny_config().data.main_assist == "auto"
    assert tiny_config("data.main_assist=never").data.main_assist == "never"
    with pytest.raises(ConfigError, match=r"data.main_assist: expected one of auto, never, always, got 'yes'"):
        tiny_config("data.main_assist=yes")
    with pytest.raises(ConfigError, match=r"data.num_workers: must be >= 0, got -1"):
        tiny_config("data.num_workers=-1")


@pytest.mark.slow
def test_training_losses_do_not_depend_on_who_collates(tiny_config, tmp_path):
    import json

    from sevlm.train import train

    steps = ("schedule.max_steps=3", "schedule.val_every=0", "schedule.val_gen_images=0")

    def losses(name, *extra):
        run = train(tiny_config(*steps, *extra), out_dir=tmp_path / name)
        return [
            (r["step"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r
        ]

    in_process = losses("w0", "data.num_workers=0")
    assert len(in_process) == 3
    # HDF5 batches are a pure function of (seed, epoch, batch): the same with or without workers
    assert losses("always", "data.num_workers=1", "data.main_assist=always") == in_process
    assert losses("never", "data.num_workers=1", "data.main_assist=never") == in_process


def test_a_free_buffer_too_small_is_replaced_in_its_slot_and_travels_again(fresh_pool):
    kept: dict = {}
    small = {"visual": torch.ones(2, 3, dtype=torch.float16)}
    first = D.pack(small)
    slot = first["_slot"]
    D.unpack(first, kept)
    big = {"visual": torch.full((64, 64), 2, dtype=torch.float16)}
    second = D.pack(big)  # the free buffer in `slot` is too small: replaced there, sent again
    assert second["_slot"] == slot and "_buffer" in second
    assert torch.equal(D.unpack(second, kept)["visual"], big["visual"])
    third = D.pack(small)  # the bigger buffer now serves small batches too, by its slot alone
    assert third["_slot"] == slot and "_buffer" not in third
    assert torch.equal(D.unpack(third, kept)["visual"], small["visual"])


def test_the_cores_of_a_node_are_shared_by_its_ranks(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    for var in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert D._cores() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun
    assert D._cores() == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("LOCAL_SIZE", "8")  # the deepspeed launcher
    assert D._cores() == 2
    assert D.Assist("auto", num_workers=2).mode == "never"  # 2 workers on its 2 cores: no core left to collate
    monkeypatch.setenv("LOCAL_SIZE", "32")
    assert D._cores() == 1
