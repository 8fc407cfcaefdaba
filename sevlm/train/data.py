"""The two data sources the recipe trains from (`H5Source`, `ShardSource`), and how their
micro-batches reach the main process: built in DataLoader workers and handed over in
shared-memory buffers (`pack` / `unpack`), or collated by the main process while it would
otherwise wait (`Assist`). Which samples make each batch, and where a resumed epoch starts, is
`sevlm.train.order`'s.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from sevlm.errors import ConfigError, DataError, SevlmError
from sevlm.features.hdf5 import H5FeatureDataset
from sevlm.features.shards import deal_shards, open_shards, shard_pipeline
from sevlm.train import order
from sevlm.train.checks import check_split_features
from sevlm.train.config import ASSIST_MODES
from sevlm.train.order import EpochBatches, batches_per_epoch, epoch_order
from sevlm.workers import end_with_parent


def loader_generator(seed: int, epoch: int) -> torch.Generator:
    """A DataLoader draws a base seed when iterated; from the global RNG that draw would shift
    dropout after a resume (the loader is created at a different point), so give it its own."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


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
    """A batch's tensors in one shared-memory buffer, in a DataLoader worker, rather than one
    shared-memory file per tensor; buffers are reused once `unpack` has released them, because
    creating and faulting in a fresh one costs more than the copy (docs/RESULTS.md, Benchmarks).
    A pooled buffer travels once; after that the batch names it by (worker pid, slot) and the
    main process finds the mapping it kept. Byte 0 of a buffer says whether it is free."""
    layout, size = [], _HEADER
    for k, v in batch.items():
        if torch.is_tensor(v):
            layout.append((k, v.dtype, tuple(v.shape), size))
            size += -(-v.numel() * v.element_size() // 8) * 8  # 8-byte aligned: any dtype can view it
    buffer, slot = _free_buffer(size)
    buffer[0] = 0  # in use until the main process has copied it out
    for k, dtype, shape, at in layout:  # numpy's single-threaded copy (torch's threaded one spins on a busy machine)
        np.copyto(_view(buffer, dtype, shape, at).numpy(), batch[k].numpy())
    packed = {"_layout": layout, **{k: v for k, v in batch.items() if not torch.is_tensor(v)}}
    if slot is None or not _pool[2][slot]:  # unpooled, or this slot's first trip
        packed["_buffer"] = buffer
    if slot is not None:
        packed["_slot"] = (os.getpid(), slot)
        _pool[2][slot] = True
    return packed


_HEADER = 8  # byte 0: 1 when the buffer is free; 8 bytes keep the tensors aligned
_POOL_SIZE = 6  # buffers a worker keeps: its prefetched batches (2) and those the main process is copying
# (pid, buffers, whether each has been handed over once): a forked process starts its own
_pool: tuple[int, list[torch.Tensor], list[bool]] = (-1, [], [])


def _free_buffer(size: int) -> tuple[torch.Tensor, int | None]:
    """(a free buffer of at least `size` bytes, its pool slot or None when unpooled). A free
    pooled buffer too small for `size` (a batch shipped uncollated first, a collated one now) is
    replaced in its slot, which then travels again."""
    global _pool
    if _pool[0] != os.getpid():
        _pool = (os.getpid(), [], [])
    buffers, sent = _pool[1], _pool[2]
    free = [slot for slot, buffer in enumerate(buffers) if buffer[0] == 1]
    for slot in free:
        if buffers[slot].numel() >= size:
            return buffers[slot], slot
    buffer = _shared(size + size // 8)  # headroom: batches of one run differ a little in size
    if free:  # replaces a free buffer too small
        slot = free[0]
        buffers[slot], sent[slot] = buffer, False
    elif len(buffers) < _POOL_SIZE:
        slot = len(buffers)
        buffers.append(buffer)
        sent.append(False)
    else:
        return buffer, None
    return buffer, slot


def _shared(size: int) -> torch.Tensor:
    """`size` bytes of shared memory (share_memory_() would copy)."""
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(size))


def unpack(packed: dict, kept: dict) -> dict:
    """The batch of a `pack`ed one, copied out of the worker's buffer (into page-locked memory
    when a GPU takes it), which is then marked free for the worker to reuse. `kept` maps the
    pooled buffers already received to their mapping (one per epoch's loader: its workers'
    buffers go with it)."""
    layout, slot = packed.pop("_layout"), packed.pop("_slot", None)
    slot = None if slot is None else tuple(slot)  # the DataLoader hands tuples over as lists
    buffer = packed.pop("_buffer", None)
    if buffer is None:
        buffer = kept[slot]
    elif slot is not None:
        kept[slot] = buffer
    end = max(
        (at + math.prod(shape) * torch.empty((), dtype=dtype).element_size() for _, dtype, shape, at in layout),
        default=_HEADER,
    )
    local = torch.empty(end, dtype=torch.uint8, pin_memory=_pin())
    np.copyto(local[_HEADER:].numpy(), buffer[_HEADER:end].numpy())
    buffer[0] = 1
    return {**{k: _view(local, dtype, shape, at) for k, dtype, shape, at in layout}, **packed}


def _view(buffer: torch.Tensor, dtype: torch.dtype, shape: tuple, at: int) -> torch.Tensor:
    n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return buffer[at : at + n].view(dtype).view(shape)


# ---- the main process collates when it would otherwise wait -------------------------------------
class Assist:
    """One epoch's hand-off between the main process and its DataLoader workers.

    A worker reads a batch's samples, then either collates it (`pack`) or ships the samples
    uncollated (`pack_samples`) for the main process to collate. In mode "auto" it ships them
    while the main process is short of batches: when the main process comes to take a batch and
    none is ready, shipping starts; when the workers have filled the DataLoader's prefetch
    (`depth` batches ready), it stops. Bare, with one worker on a 2-core machine, reading and
    collating then run side by side; beside a GPU step that the workers keep up with, the
    prefetch stays full and every batch is collated in a worker. "never" turns it off, "always"
    ships every batch uncollated (tests). "auto" with as many workers as cores also never ships:
    the main process has no core of its own to collate on (a node's cores are shared by its
    ranks, `_cores`). A batch is a pure function of its samples and its RNG, so who collates it
    changes nothing in it.
    """

    def __init__(self, mode: str, num_workers: int, depth: int = 2):
        if mode not in ASSIST_MODES:
            raise ValueError(f"main-process assist: expected one of {', '.join(ASSIST_MODES)}, got {mode!r}")
        import multiprocessing as mp

        if mode == "auto" and num_workers >= _cores():
            mode = "never"
        self.mode, self.depth = mode, depth * max(1, num_workers)  # depth: the DataLoader's prefetch_factor
        self._short = mp.RawValue("b", mode == "always")  # inherited by the workers (shared memory)
        self._made = mp.RawArray("q", max(1, num_workers))  # batches each worker has finished

    def ship_samples(self) -> bool:
        """In a worker, before collating: whether to hand this batch's samples over instead."""
        return self.mode != "never" and bool(self._short.value)

    def made_one(self) -> None:
        info = torch.utils.data.get_worker_info()
        self._made[info.id if info is not None else 0] += 1

    def taking(self, taken: int) -> None:
        """In the main process, before taking batch number `taken` (0-based) of the epoch."""
        if self.mode == "auto":
            ready = sum(self._made) - taken
            if ready <= 0 or ready >= self.depth:  # in between: as it was
                self._short.value = ready <= 0


def _cores() -> int:
    """Cores this process may count as its own: those it may run on, shared with the other ranks
    of its node (torchrun's LOCAL_WORLD_SIZE, the deepspeed launcher's LOCAL_SIZE)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
    except ValueError:
        local = 1
    return max(1, cores // max(1, local))


def worker_build(collate: Callable[[list[dict], np.random.Generator], dict], assist: Assist):
    """(samples, rng) -> the batch as a worker hands it over: collated and packed, or its samples
    packed uncollated when `assist` says so (the main process then collates them)."""

    def build(samples: list[dict], rng: np.random.Generator) -> dict:
        out = pack_samples(samples, rng) if assist.ship_samples() else pack(collate(samples, rng))
        assist.made_one()
        return out

    return build


def pack_samples(samples: list[dict], rng: np.random.Generator) -> dict:
    """A batch's samples, uncollated: their tensors in one shared-memory buffer (`pack`), the rest
    and the batch's RNG as they are."""
    tensors = {f"{i}.{k}": v for i, s in enumerate(samples) for k, v in s.items() if torch.is_tensor(v)}
    rest = [{k: v for k, v in s.items() if not torch.is_tensor(v)} for s in samples]
    return {**pack(tensors), "_samples": (rest, rng)}


def collate_packed(packed: dict, collate: Callable[[list[dict], np.random.Generator], dict], kept: dict) -> dict:
    """The batch of a `pack_samples` hand-over, collated here (pinned when a GPU takes it)."""
    rest, rng = packed.pop("_samples")
    samples = [dict(r) for r in rest]
    for key, v in unpack(packed, kept).items():  # copied out: the worker's buffer is free again
        i, k = key.split(".", 1)
        samples[int(i)][k] = v
    batch = collate(samples, rng)
    if _pin():
        batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch


def _batches(dataset, num_workers: int, seed: int, epoch: int, collate, assist: Assist | None) -> Iterator[dict]:
    """Iterate `dataset` (whole batches, `pack`ed when built in workers, or their samples when
    `assist` had them shipped, collated here with `collate`) through a DataLoader; `assist` is
    None without workers."""
    # `unpack` pins the batches built in workers, as it copies them out of shared memory
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=_pin() and not num_workers,
        generator=loader_generator(seed, epoch),
        worker_init_fn=functools.partial(end_with_parent, os.getpid()) if num_workers else None,
    )
    if not num_workers:
        return iter(loader)
    return _take(loader, collate, assist)


def worker_error(e: Exception) -> Exception:
    """A sevlm error raised in a DataLoader worker, as it was raised there: torch re-raises it in
    the main process with "Caught X in DataLoader worker process N" and the worker's traceback
    as its message, which the CLI would print whole."""
    text = str(e)
    if "\nOriginal Traceback" not in text:
        return e
    last = text.rstrip().splitlines()[-1]  # "package.module.Class: the original message"
    name = f"{type(e).__module__}.{type(e).__qualname__}: "
    return type(e)(last[len(name) :] if last.startswith(name) else last.split(": ", 1)[-1])


def _take(loader: DataLoader, collate, assist: Assist) -> Iterator[dict]:
    batches = iter(loader)
    taken, kept = 0, {}  # kept: the workers' buffers, mapped once each
    while True:
        assist.taking(taken)
        try:
            packed = next(batches)
        except StopIteration:
            return
        except SevlmError as e:  # a worker's DataError (a stalled read, a damaged image): its own line
            raise worker_error(e) from None
        taken += 1
        yield collate_packed(packed, collate, kept) if "_samples" in packed else unpack(packed, kept)


class H5Source:
    """Training and validation samples from an HDF5 feature cache (`sevlm extract`).

    The order of an epoch is `epoch_order(seed, epoch)`, cut into global batches split across
    the ranks (`order.EpochBatches`); DataLoader workers build whole micro-batches (fp16 features, pinned when a GPU is
    present) while the order stays fixed.
    """

    def __init__(
        self,
        path,
        dataset_dir,
        train_split: str,
        val_split: str,
        collate,
        micro: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int = 0,
        assist: str = "auto",
        min_emotions: int = 1,
    ):
        self.train_set = H5FeatureDataset(
            str(path),
            dataset_dir,
            train_split,
            dtype=np.float16,  # fp16 to the device
            min_emotions=min_emotions,
        )
        if min_emotions > 1 and not len(self.train_set):
            raise DataError(
                f"{path}: no image of split {train_split!r} has {min_emotions} distinct emotions "
                f"(data.min_train_emotions); {self.train_set.n_few_emotions} left out"
            )
        self.val_set = H5FeatureDataset(str(path), dataset_dir, val_split)
        for split, ds in ((train_split, self.train_set), (val_split, self.val_set)):
            check_split_features(ds, split, str(path))
        self.collate, self.micro, self.rank, self.world = collate, micro, rank, world_size
        self.seed, self.num_workers, self.assist = seed, num_workers, assist
        self.num_images = len(self.train_set)
        self.batches_per_epoch = batches_per_epoch(self.num_images, micro, world_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """Micro-batches `start`, `start + 1`, ... of `epoch` on this rank."""
        assist = Assist(self.assist, self.num_workers) if self.num_workers else None
        collate = worker_build(self.collate, assist) if assist else self.collate
        permutation = epoch_order(len(self.train_set), self.seed, epoch)
        ds = EpochBatches(
            self.train_set, collate, permutation, self.micro, self.rank, self.world, self.seed, epoch, start
        )
        return _batches(ds, self.num_workers, self.seed, epoch, self.collate, assist)

    def val_samples(self) -> Sequence[dict]:
        return self.val_set


class ShardSource:
    """Training and validation samples from WebDataset shards (`sevlm shard`).

    DataLoader workers build whole micro-batches (fp16 features, pinned when a GPU is present);
    the batches of an epoch are a pure function of (seed, epoch, rank, num_workers), batch b's
    pair sampling seeded by (seed, epoch, b), so `epoch(e, start)` resumes exactly (see
    `order.worker_plan`). Validation reads its split once, in file order.
    """

    def __init__(
        self,
        path,
        train_split: str,
        val_split: str,
        collate,
        micro: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int = 0,
        assist: str = "auto",
        read_timeout: float = 60.0,
    ):
        self.path, self.train_split, self.val_split = str(path), train_split, val_split
        self.collate, self.micro, self.rank, self.world = collate, micro, rank, world_size
        self.seed, self.num_workers, self.assist = seed, num_workers, assist
        # opened once: the manifest read, the files checked, each shard's sha256 verified on first read
        self.read_timeout = read_timeout
        self.train_shards = open_shards(self.path, train_split, read_timeout=read_timeout)
        _, samples_per_rank = deal_shards(self.train_shards, world_size, shuffle=True, seed=0, epoch=0)
        self.num_images = self.train_shards.num_samples
        # every rank yields samples_per_rank samples per epoch (the reader pads short ranks)
        self.batches_per_epoch = samples_per_rank // micro
        self._val: list[dict] | None = None

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """Micro-batches `start`, `start + 1`, ... of `epoch` on this rank, built in the workers."""
        assist = Assist(self.assist, self.num_workers) if self.num_workers else None
        build = worker_build(self.collate, assist) if assist else self.collate
        pipe = order.shard_pipeline(
            self.train_shards, build, self.micro, self.seed, epoch, self.world, self.rank, start=start, shuffle=True
        )
        return _batches(pipe, self.num_workers, self.seed, epoch, self.collate, assist)

    def val_samples(self) -> Sequence[dict]:
        if self._val is None:  # small: read once, in file order, on every rank
            val = open_shards(self.path, self.val_split, read_timeout=self.read_timeout)
            self._val = list(shard_pipeline(val, shuffle=False, world_size=1, rank=0))
        return self._val


def open_source(info, data, collate, micro: int, rank: int, world_size: int, seed: int) -> H5Source | ShardSource:
    """The data source that `info` (checks.feature_info) names, for `data` (a DataConfig)."""
    common = dict(
        collate=collate,
        micro=micro,
        rank=rank,
        world_size=world_size,
        seed=seed,
        num_workers=data.num_workers,
        assist=data.main_assist,
    )
    if info.source == "features":
        return H5Source(
            info.path,
            data.dataset_dir,
            data.train_split,
            data.val_split,
            **common,
            min_emotions=data.min_train_emotions,
        )
    if data.min_train_emotions > 1:
        # a shard set's per-rank sample counts (equal batches, exact resume) come from its manifest
        raise ConfigError(
            f"data.min_train_emotions={data.min_train_emotions} needs an HDF5 feature cache "
            f"(data.features); {info.path} is a shard set, which trains on every image it holds"
        )
    return ShardSource(info.path, data.train_split, data.val_split, read_timeout=data.read_timeout, **common)
