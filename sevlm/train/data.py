"""Deterministic, resumable batches for training and validation.

The order of an epoch is a permutation keyed on (seed, epoch), split across ranks, and each
micro-batch's pair sampling uses an RNG keyed on (seed, epoch, batch index). A resumed run
therefore sees exactly the batches the interrupted one would have, starting at the batch
after the last checkpoint, with no RNG state to carry for the data.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

# Streams kept apart so the training order never shifts when validation sampling changes.
_TRAIN, _VAL = 0, 1


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, _TRAIN, epoch]).permutation(n)


def batch_rng(seed: int, stream: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, epoch, index])


def batches_per_epoch(n: int, micro: int, world_size: int) -> int:
    """Micro-batches each rank runs per epoch (drop_last, so every rank runs the same number)."""
    return n // (micro * world_size)


class EpochBatches(Dataset):
    """Map-style dataset of whole collated micro-batches for one rank and one epoch.

    Item i is micro-batch `start + i` of the epoch, so a DataLoader with workers can prefetch
    while the order stays fixed.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        collate: Callable[[list[dict], np.random.Generator], dict],
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
        order = epoch_order(len(dataset), seed, epoch)[: n_batches * micro * world_size]
        # (n_batches, world, micro): consecutive global batches, each split across the ranks
        self.index = order.reshape(n_batches, world_size, micro)[:, rank]
        self.n_batches = n_batches

    def __len__(self) -> int:
        return max(0, self.n_batches - self.start)

    def __getitem__(self, i: int) -> dict[str, Any]:
        b = self.start + i
        samples = [self.dataset[int(j)] for j in self.index[b]]
        return self.collate(samples, batch_rng(self.seed, _TRAIN, self.epoch, b))


def loader_generator(seed: int, epoch: int) -> torch.Generator:
    """A DataLoader draws a base seed when iterated; from the global RNG that draw would shift
    dropout after a resume (the loader is created at a different point), so give it its own."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


def val_batches(dataset, collate, micro: int, rank: int, world_size: int, seed: int, limit: int | None):
    """Validation loss batches: the split in file order, ranks interleaved, fixed pair sampling."""
    n = len(dataset)
    n_batches = math.ceil(n / micro)
    if limit is not None:
        n_batches = min(n_batches, limit)
    for b in range(rank, n_batches, world_size):
        samples = [dataset[j] for j in range(b * micro, min(n, (b + 1) * micro))]
        yield collate(samples, batch_rng(seed, _VAL, 0, b))


def split_inputs(batch: dict, device, float_dtype: torch.dtype) -> tuple[dict, dict]:
    """(model inputs on `device`, everything else such as image ids). Float inputs take the
    engine's dtype, since a bf16/fp16 engine holds bf16/fp16 weights."""
    inputs, meta = {}, {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            inputs[k] = v.to(float_dtype) if v.is_floating_point() else v
        else:
            meta[k] = v
    return inputs, meta


# ---- data sources: the one interface the recipe trains from ------------------------------------
def _pin() -> bool:
    """Page-locked batches when a GPU takes them: the copy to the device is then asynchronous."""
    return torch.cuda.is_available()


def pack(batch: dict) -> dict:
    """A batch's tensors in one shared-memory buffer, in a DataLoader worker. A worker hands each
    tensor over as its own shared-memory file (about 0.3 ms of CPU each side, 12 tensors a
    batch); one buffer makes that one. Buffers are reused once `unpack` has released them: a
    fresh one costs ~3 ms to create and ~5 ms of page faults to fill at 196x768 (9.6 MB), a
    reused one 0.5 ms. Byte 0 of a buffer says whether it is free."""
    layout, size = [], _HEADER
    for k, v in batch.items():
        if torch.is_tensor(v):
            layout.append((k, v.dtype, tuple(v.shape), size))
            size += -(-v.numel() * v.element_size() // 8) * 8  # 8-byte aligned: any dtype can view it
    buffer = _free_buffer(size)
    buffer[0] = 0  # in use until the main process has copied it out
    for k, dtype, shape, at in layout:  # numpy's single-threaded copy (torch's threaded one spins on a busy machine)
        np.copyto(_view(buffer, dtype, shape, at).numpy(), batch[k].numpy())
    return {"_buffer": buffer, "_layout": layout, **{k: v for k, v in batch.items() if not torch.is_tensor(v)}}


_HEADER = 8  # byte 0: 1 when the buffer is free; 8 bytes keep the tensors aligned
_POOL_SIZE = 6  # buffers a worker keeps: its prefetched batches (2) and those the main process is copying
_pool: tuple[int, list[torch.Tensor]] = (-1, [])  # (pid, buffers): a forked process starts its own


def _free_buffer(size: int) -> torch.Tensor:
    global _pool
    if _pool[0] != os.getpid():
        _pool = (os.getpid(), [])
    buffers = _pool[1]
    for buffer in buffers:
        if buffer[0] == 1 and buffer.numel() >= size:
            return buffer
    # allocated in shared memory (share_memory_() would copy)
    buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(size))
    if len(buffers) < _POOL_SIZE:
        buffers.append(buffer)
    return buffer


def unpack(packed: dict) -> dict:
    """The batch of a `pack`ed one, copied out of the worker's buffer (into page-locked memory
    when a GPU takes it), which is then marked free for the worker to reuse."""
    buffer, layout = packed.pop("_buffer"), packed.pop("_layout")
    end = max((at + math.prod(shape) * torch.empty((), dtype=dtype).element_size() for _, dtype, shape, at in layout),
              default=_HEADER)
    local = torch.empty(end, dtype=torch.uint8, pin_memory=_pin())
    np.copyto(local[_HEADER:].numpy(), buffer[_HEADER:end].numpy())
    buffer[0] = 1
    return {**{k: _view(local, dtype, shape, at) for k, dtype, shape, at in layout}, **packed}


def _view(buffer: torch.Tensor, dtype: torch.dtype, shape: tuple, at: int) -> torch.Tensor:
    n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return buffer[at : at + n].view(dtype).view(shape)


def _batches(dataset, num_workers: int, seed: int, epoch: int) -> Iterator[dict]:
    """Iterate `dataset` (whole batches, `pack`ed when built in workers) through a DataLoader."""
    # `unpack` pins the batches built in workers, as it copies them out of shared memory
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                        pin_memory=_pin() and not num_workers,
                        generator=loader_generator(seed, epoch))
    return (unpack(b) for b in loader) if num_workers else iter(loader)


class H5Source:
    """Training and validation samples from an HDF5 feature cache (`sevlm extract`).

    The order of an epoch is `epoch_order(seed, epoch)`, cut into global batches split across
    the ranks; DataLoader workers build whole micro-batches (fp16 features, pinned when a GPU is
    present) while the order stays fixed.
    """

    def __init__(self, path, dataset_dir, train_split: str, val_split: str, collate, micro: int, rank: int,
                 world_size: int, seed: int, num_workers: int = 0):
        from sevlm.features.hdf5 import H5FeatureDataset
        from sevlm.train.checks import check_split_features

        self.train_set = H5FeatureDataset(str(path), dataset_dir, train_split, dtype=np.float16)  # fp16 to the device
        self.val_set = H5FeatureDataset(str(path), dataset_dir, val_split)
        for split, ds in ((train_split, self.train_set), (val_split, self.val_set)):
            check_split_features(ds, split, str(path))
        self.collate, self.micro, self.rank, self.world = collate, micro, rank, world_size
        self.seed, self.num_workers = seed, num_workers
        self.num_images = len(self.train_set)
        self.batches_per_epoch = batches_per_epoch(self.num_images, micro, world_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """Micro-batches `start`, `start + 1`, ... of `epoch` on this rank."""
        collate = (lambda samples, rng: pack(self.collate(samples, rng))) if self.num_workers else self.collate
        ds = EpochBatches(self.train_set, collate, self.micro, self.rank, self.world, self.seed, epoch, start)
        return _batches(ds, self.num_workers, self.seed, epoch)

    def val_samples(self) -> Sequence[dict]:
        return self.val_set


class ShardSource:
    """Training and validation samples from WebDataset shards (`sevlm shard`).

    DataLoader workers build whole micro-batches (fp16 features, pinned when a GPU is present);
    the batches of an epoch are a pure function of (seed, epoch, rank, num_workers), batch b's
    pair sampling seeded by (seed, epoch, b), so `epoch(e, start)` resumes exactly (see
    `sevlm.features.shards.worker_plan`). Validation reads its split once, in file order.
    """

    def __init__(self, path, train_split: str, val_split: str, collate, micro: int, rank: int, world_size: int,
                 seed: int, num_workers: int = 0):
        from sevlm.features.shards import open_shards, shard_pipeline

        self.path, self.train_split, self.val_split = str(path), train_split, val_split
        self.collate, self.micro, self.rank, self.world = collate, micro, rank, world_size
        self.seed, self.num_workers = seed, num_workers
        # opened once: the manifest read, the files checked, each shard's sha256 verified on first read
        self.train_shards = open_shards(self.path, train_split)
        probe = shard_pipeline(self.train_shards, world_size=world_size, rank=rank)
        self.num_images = self.train_shards.num_samples
        # every rank yields samples_per_rank samples per epoch (the reader pads short ranks)
        self.batches_per_epoch = probe.samples_per_rank // micro
        self._val: list[dict] | None = None

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """Micro-batches `start`, `start + 1`, ... of `epoch` on this rank, built in the workers."""
        from sevlm.features.shards import shard_pipeline

        def collate(samples, index):
            batch = self.collate(samples, batch_rng(self.seed, _TRAIN, epoch, index))
            return pack(batch) if self.num_workers else batch

        pipe = shard_pipeline(self.train_shards, shuffle=True, seed=self.seed, epoch=epoch, world_size=self.world,
                              rank=self.rank, collate=collate, micro=self.micro, start=start)
        return _batches(pipe, self.num_workers, self.seed, epoch)

    def val_samples(self) -> Sequence[dict]:
        if self._val is None:  # small: read once, in file order, on every rank
            from sevlm.features.shards import shard_pipeline

            self._val = list(shard_pipeline(self.path, self.val_split, shuffle=False, world_size=1, rank=0))
        return self._val


def open_source(info, data, collate, micro: int, rank: int, world_size: int, seed: int) -> H5Source | ShardSource:
    """The data source that `info` (checks.feature_info) names, for `data` (a DataConfig)."""
    common = dict(collate=collate, micro=micro, rank=rank, world_size=world_size, seed=seed,
                  num_workers=data.num_workers)
    if info.source == "features":
        return H5Source(info.path, data.dataset_dir, data.train_split, data.val_split, **common)
    return ShardSource(info.path, data.train_split, data.val_split, **common)
