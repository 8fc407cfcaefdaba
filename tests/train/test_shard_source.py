"""ShardSource: micro-batches built in the DataLoader workers, exact resume mid-epoch, fp16 to the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sevlm.features.shards import shard_pipeline
from sevlm.train.data import ShardSource


def _collate(samples, rng):
    """Everything a batch is made of: which images, in what order, and its pair-sampling draw."""
    return {
        "ids": [s["image_id"] for s in samples],
        "draw": int(rng.integers(1 << 30)),
        "visual": torch.from_numpy(np.stack([np.asarray(s["tokens"]) for s in samples])),
    }


def _batches(shard_dir, workers, start=0, epoch=1, rank=0, world=1, micro=3):
    source = ShardSource(
        shard_dir, "train", "val", _collate, micro=micro, rank=rank, world_size=world, seed=7, num_workers=workers
    )
    got = [(b["ids"], b["draw"]) for b in source.epoch(epoch, start)]
    return got, source.batches_per_epoch


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_mid_epoch_gives_the_same_batches(shard_dir, workers):
    full, n = _batches(shard_dir, workers)
    assert len(full) == n >= 8
    ids = [i for batch, _ in full for i in batch]
    assert len(set(ids)) == len(ids)  # no image twice in an epoch (one rank: nothing to pad)
    for start in (1, 2, 5, n - 1, n):
        assert _batches(shard_dir, workers, start)[0] == full[start:], start
    assert _batches(shard_dir, workers, epoch=2)[0] != full  # reshuffled per epoch


def test_ranks_run_equal_batch_counts_over_disjoint_images(shard_dir):
    (r0, n0), (r1, n1) = (_batches(shard_dir, 2, rank=r, world=2) for r in (0, 1))
    assert len(r0) == len(r1) == n0 == n1
    ids0 = {i for b, _ in r0 for i in b}
    ids1 = {i for b, _ in r1 for i in b}
    assert ids0.isdisjoint(ids1)


def test_batches_keep_float16_until_the_device(shard_dir, tiny_data):
    from sevlm.data.vad import VADLexicon
    from sevlm.text import SequenceBuilder
    from sevlm.train.data import split_inputs
    from sevlm.vocab import load_tokenizer

    builder = SequenceBuilder(load_tokenizer(), VADLexicon.demo(), max_len=24)
    source = ShardSource(
        shard_dir, "train", "val", builder.collate, micro=4, rank=0, world_size=1, seed=0, num_workers=1
    )
    batch = next(source.epoch(0))
    assert batch["visual"].dtype == torch.float16 and batch["visual"].shape[0] == 4
    inputs, meta = split_inputs(batch, "cpu", torch.float32)
    assert inputs["visual"].dtype == torch.float32 and len(meta["image_ids"]) == 4
    assert torch.equal(inputs["visual"], batch["visual"].float())


def test_workers_reuse_their_buffers_without_touching_batches_already_taken(shard_dir):
    from sevlm.features.shards import shard_pipeline

    visual_of = {
        s["image_id"]: torch.as_tensor(np.asarray(s["tokens"])).half()  # fp16 as stored: exact
        for s in shard_pipeline(shard_dir, "train", shuffle=False)
    }
    kept = list(
        ShardSource(shard_dir, "train", "val", _collate, micro=3, rank=0, world_size=1, seed=7, num_workers=2).epoch(1)
    )  # every batch held while the workers go on
    assert len(kept) >= 8
    for b in kept:
        assert b["visual"].dtype == torch.float16
        assert torch.equal(b["visual"], torch.stack([visual_of[i] for i in b["ids"]])), b["ids"]


def test_a_packed_buffer_is_reused_only_once_unpacked(fresh_pool):
    from sevlm.train.handoff import pack, unpack

    def batch(k):
        return {"visual": torch.full((2, 3), k, dtype=torch.float16), "n": torch.arange(3) * k, "ids": [k]}

    first, second = pack(batch(1)), pack(batch(2))
    held, held_slot = first["_buffer"], first["_slot"]
    assert second["_buffer"].data_ptr() != held.data_ptr()  # the first is not given back yet
    kept: dict = {}  # the buffers this process has received
    got = unpack(first, kept)
    assert torch.equal(got["visual"], batch(1)["visual"]) and got["n"].tolist() == [0, 1, 2] and got["ids"] == [1]
    third = pack(batch(3))
    # reused, no fresh shared memory; named by its slot, not sent again
    assert "_buffer" not in third and third["_slot"] == held_slot
    assert unpack(third, kept)["n"].tolist() == [0, 3, 6] and got["visual"][0, 0] == 1  # the copy out stays intact
    assert unpack(second, kept)["visual"][0, 0] == 2


@pytest.fixture()
def served(shard_dir):
    """The shard folder on a local web server (a thread): -> (base URL, the paths asked for)."""
    import functools
    import http.server
    import threading

    from sevlm.train.distributed import free_port

    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            asked.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()), functools.partial(Handler, directory=str(shard_dir))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_training_streams_shards_from_a_web_server(served, shard_dir, tiny_config, tmp_path):
    import json

    from sevlm.train import train

    url, asked = served
    steps = ("schedule.max_steps=3", "schedule.val_every=0", "schedule.val_gen_images=0", "data.features=null")
    remote = train(tiny_config(*steps, f"data.shards={url}/"), out_dir=tmp_path / "remote")
    local = train(tiny_config(*steps, f"data.shards={shard_dir}"), out_dir=tmp_path / "local")

    def losses(run):
        return [
            (r["step"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r
        ]

    assert len(losses(remote)) == 3 and losses(remote) == losses(local)  # the same batches, byte for byte
    assert json.loads((remote / "config.json").read_text())["data"]["shards"] == f"{url}/"  # not made a path
    assert json.loads((remote / "run.json").read_text())["data_source"] == f"shards: {url}/"
    assert "/manifest.json" in asked and any(p.startswith("/train-") for p in asked)
    exported = [json.loads((run / "export" / "config.json").read_text())["encoder"] for run in (remote, local)]
    assert exported[0] == exported[1] and exported[0]["name"] == "tiny-random"  # the manifest's record, by URL too


def test_a_served_shard_with_other_content_is_refused_naming_its_url(served, shard_dir, tmp_path):
    import shutil

    from sevlm.errors import DataError
    from sevlm.features.shards import shard_pipeline

    url, _ = served
    # a pattern naming two shards, through webdataset's pipe: opener
    with pytest.warns(UserWarning, match=r"/manifest.json: split 'train' is partial: reading 2 of its 9 shards"):
        pipe = shard_pipeline(f"pipe:curl -s -f {url}/train-{{000000..000001}}.tar", "train", shuffle=False)
    assert len(list(pipe)) == 10
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    shard = copy / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 1  # same size, one bit
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"pipe:cat .*/copy/train-000001\.tar: shard content differs from the manifest"):
        with pytest.warns(UserWarning, match="reading 4 of its 9 shards"):
            list(shard_pipeline(f"pipe:cat {copy}/train-{{000000..000003}}.tar", "train", shuffle=False))


def test_a_folder_named_like_a_brace_pattern_is_read_literally(shard_dir, tmp_path):
    import shutil

    from sevlm.features.shards import open_shards

    literal = tmp_path / "sh_{a,b}"
    shutil.copytree(shard_dir, literal)
    whole = open_shards(shard_dir, "train")
    assert open_shards(literal, "train").num_samples == whole.num_samples
    assert len(list(shard_pipeline(str(literal) + "/", "train", shuffle=False))) == whole.num_samples
    # a pattern in the file name still selects shards, under a folder with braces too
    with pytest.warns(UserWarning, match="reading 2 of its 9 shards"):
        assert open_shards(f"{literal}/train-{{000000..000001}}.tar", "train").num_samples == 10


def test_an_empty_split_is_named_as_empty(tmp_path):
    from sevlm.errors import DataError
    from sevlm.train.checks import check_splits

    for split, body in (("train", '{"a": {}}'), ("val", "{}")):
        (tmp_path / f"{split}.json").write_text(body)
    with pytest.raises(DataError, match=r"val\.json: split 'val' has no images; .* another data\.val_split"):
        check_splits(str(tmp_path), ["train", "val"])
