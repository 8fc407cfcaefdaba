"""The order of training batches, for both feature readers: which samples make micro-batch b of
epoch e on a rank, the RNG batch b samples its pairs with, and where a resumed epoch starts.

Every choice is keyed on (seed, epoch, batch index) or on the data's counts, never on RNG state
carried along, so a run resumed at batch k sees exactly the batches the interrupted one would
have seen, whichever reader feeds it.
- HDF5 cache: the epoch is a permutation keyed on (seed, epoch), cut into global batches, each
  split across the ranks (`EpochBatches`).
- Shards: the epoch is the order in which the DataLoader's workers hand over the micro-batches
  they build from their own shards (`worker_plan`); the shards and the samples within a worker are
  shuffled by the reader (`sevlm.features.shards`), seeded alike. A worker's share is cut to whole
  batches, so up to a batch's worth of its samples may sit out an epoch, a different few each epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import webdataset as wds
from torch.utils.data import Dataset

from sevlm.features import shards as shard_reader

# Streams kept apart so the training order never shifts when validation sampling changes.
TRAIN_STREAM, VAL_STREAM = 0, 1

Collate = Callable[[list[dict], np.random.Generator], dict]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, TRAIN_STREAM, epoch]).permutation(n)


def batch_rng(seed: int, stream: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, epoch, index])


def batches_per_epoch(n: int, micro: int, world_size: int) -> int:
    """Micro-batches each rank runs per epoch (drop_last, so every rank runs the same number)."""
    return n // (micro * world_size)


class EpochBatches(Dataset):
    """Map-style dataset of whole collated micro-batches for one rank and one epoch.

    `order` is the epoch's permutation of `dataset` (`epoch_order`). Item i is micro-batch
    `start + i` of the epoch, so a DataLoader with workers can prefetch while the order stays fixed.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        collate: Collate,
        order: np.ndarray,
        micro: int,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        start: int = 0,
    ):
        self.dataset, self.collate, self.micro = dataset, collate, micro
        self.seed, self.epoch, self.start = seed, epoch, start
        n_batches = batches_per_epoch(len(dataset), micro, world_size)
        order = order[: n_batches * micro * world_size]
        # (n_batches, world, micro): consecutive global batches, each split across the ranks
        self.index = order.reshape(n_batches, world_size, micro)[:, rank]
        self.n_batches = n_batches

    def __len__(self) -> int:
        return max(0, self.n_batches - self.start)

    def __getitem__(self, i: int) -> dict[str, Any]:
        b = self.start + i
        samples = [self.dataset[int(j)] for j in self.index[b]]
        return self.collate(samples, batch_rng(self.seed, TRAIN_STREAM, self.epoch, b))


def val_batches(dataset, collate: Collate, micro: int, rank: int, world_size: int, seed: int, limit: int | None):
    """Validation loss batches: the split in file order, ranks interleaved, fixed pair sampling."""
    n = len(dataset)
    n_batches = math.ceil(n / micro)
    if limit is not None:
        n_batches = min(n_batches, limit)
    for b in range(rank, n_batches, world_size):
        samples = [dataset[j] for j in range(b * micro, min(n, (b + 1) * micro))]
        yield collate(samples, batch_rng(seed, VAL_STREAM, 0, b))


@dataclass
class WorkerPlan(shard_reader.SampleShare):
    """What one DataLoader worker of a rank reads and yields in an epoch (`worker_plan`)."""

    skip: int = 0  # leading micro-batches already consumed (resume), read but not decoded
    batches: list[int] | None = None  # the epoch index of each micro-batch it yields, in order


def worker_plan(counts: dict[str, int], rank_urls: list[str], units: int, micro: int, start: int = 0) -> WorkerPlan:
    """This process's share of the rank's `units` micro-batches of an epoch.

    Logical worker w reads the rank's shards w, w + W, ... and yields a number of micro-batches
    in proportion to their samples (remainders go to the workers with the largest leftovers), so
    each worker builds whole micro-batches from its own stream. A DataLoader yields its workers'
    items round-robin, skipping exhausted ones, so the epoch's batch order is that cyclic scan:
    a pure function of the counts. Resuming at batch `start`, DataLoader worker k plays logical
    worker (j + k) mod W, where j owns batch `start`: the resumed scan is the rest of the old one.
    """
    num_workers, wid, own = shard_reader.worker_samples(counts, rank_urls)
    per = [o // micro for o in own]
    with_data = sorted((w for w in range(num_workers) if own[w]), key=lambda w: (-(own[w] % micro), w))
    for k in range(units - sum(per)):
        per[with_data[k % len(with_data)]] += 1
    order, left = [], list(per)
    while len(order) < units:
        for w in range(num_workers):
            if left[w]:
                order.append(w)
                left[w] -= 1
    logical = ((order[start] if start < units else 0) + wid) % num_workers
    batches = [g for g, w in enumerate(order) if w == logical]
    skip = sum(g < start for g in batches)
    return WorkerPlan(logical, rank_urls[logical::num_workers], per[logical] * micro, skip, batches[skip:])


def _batch(collate: Collate, micro: int, seed: int, epoch: int, plan: Callable[[], WorkerPlan], handle_errors: str):
    """Stage: raw samples -> this worker's collated micro-batches, batch b built by `collate(samples,
    batch_rng(seed, TRAIN_STREAM, epoch, b))`. The plan's skipped batches are read (the shuffle
    buffer must advance alike) but not decoded."""

    def stage(src):
        p = plan()
        src = iter(src)
        for _ in range(p.skip * micro):
            next(src)
        samples = shard_reader.decode(handle_errors, np.float16, pooled=False)(src)  # fp16 as stored, until the device
        for index in p.batches:
            yield collate([next(samples) for _ in range(micro)], batch_rng(seed, TRAIN_STREAM, epoch, index))

    return stage


def shard_pipeline(
    shards: shard_reader.ShardSet,
    collate: Collate,
    micro: int,
    seed: int,
    epoch: int,
    world_size: int,
    rank: int,
    start: int = 0,
    shuffle: bool = True,
    shuffle_buffer: int = 1000,
    handle_errors: str = "raise",
) -> wds.DataPipeline:
    """An IterableDataset of this rank's micro-batches `start`, `start + 1`, ... of `epoch`, of
    `micro` samples each (float16 features, no pooled vectors), each DataLoader worker building
    whole batches from its own shards; the same order whatever `start` (see `worker_plan`).
    `pipeline.batches_per_rank` is the epoch's length."""
    rank_urls, samples_per_rank = shard_reader.deal_shards(shards, world_size, shuffle, seed, epoch)
    counts, units = shards.counts, samples_per_rank // micro

    def plan() -> WorkerPlan:  # evaluated in each worker process, which knows its id
        return worker_plan(counts, rank_urls[rank], units, micro, start)

    stages: list = [shard_reader.read_tar_samples(shards, plan, handle_errors, pooled=False)]
    if shuffle:
        stages.append(shard_reader.sample_shuffle(shuffle_buffer, f"{seed}-{epoch}-{rank}", plan))
    stages.append(_batch(collate, micro, seed, epoch, plan, handle_errors))
    pipeline = wds.DataPipeline(*stages)
    pipeline.samples_per_rank = samples_per_rank
    pipeline.batches_per_rank = units
    return pipeline
