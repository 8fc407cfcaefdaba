"""The two data sources the recipe trains from (`H5Source`, `ShardSource`), and who collates
their micro-batches: DataLoader workers, or the main process while it would otherwise wait
(`Assist`). How a batch then crosses to the main process is `sevlm.train.handoff`'s; which
samples make each batch, and where a resumed epoch starts, is `sevlm.train.order`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing as mp
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from sevlm.data.folder import load_split_records
from sevlm.data.vad import VADLexicon
from sevlm.errors import ConfigError, DataError, SevlmError
from sevlm.features.hdf5 import H5FeatureDataset
from sevlm.features.shards import deal_shards, open_shards, shard_pipeline
from sevlm.text import SequenceBuilder
from sevlm.train import order
from sevlm.train.checks import FeatureInfo, check_split_features, train_texts
from sevlm.train.config import ASSIST_MODES
from sevlm.train.handoff import collate_packed, pack, pack_samples, page_locked, unpack
from sevlm.train.order import EpochBatches, batches_per_epoch, epoch_order
from sevlm.vocab import VocabMap
from sevlm.workers import end_with_parent


def loader_generator(seed: int, epoch: int) -> torch.Generator:
    """A DataLoader draws a base seed when iterated; from the global RNG that draw would shift
    dropout after a resume (the loader is created at a different point), so give it its own."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


@dataclass(frozen=True)
class TrainingData:
    """What a run trains and validates on (`open_training_data`)."""

    builder: SequenceBuilder
    source: H5Source | ShardSource
    info: FeatureInfo  # with the token count filled in where the artifact does not record it
    lexicon_info: dict  # how much of the training text the lexicon knows (run.json)
    steps_per_epoch: int
    total_steps: int


def open_training_data(resolved, info: FeatureInfo, tokenizer, vocab) -> TrainingData:
    """The sequence builder, the data source and the step counts of a run (`resolved`: a
    `sevlm.train.resolve.Resolved`) whose features `info` describes."""
    cfg = resolved.config
    data, model, schedule = cfg.data, cfg.model, cfg.schedule
    lexicon = VADLexicon.load(data.lexicon)
    known, total = lexicon.coverage(train_texts(data.dataset_dir, data.train_split))
    lexicon_info = {
        "lexicon": data.lexicon,
        "entries": len(lexicon),
        "train_words": total,
        "train_words_known": known,
        "coverage": round(known / max(total, 1), 4),
    }
    builder = SequenceBuilder(
        tokenizer,
        lexicon,
        max_len=model.max_len,
        vocab=vocab,
        bos_prompt=model.bos_prompt,
        anchor=data.anchor,
        vad_input=model.vad_input,
    )
    source = open_source(info, data, builder.collate, resolved.micro, resolved.rank, resolved.world, cfg.seed)
    if info.num_tokens is None:  # an artifact that does not record its token shape
        info = dataclasses.replace(info, num_tokens=int(torch.as_tensor(source.val_samples()[0]["tokens"]).shape[0]))
    steps_per_epoch = source.batches_per_epoch // resolved.accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{data.train_split} split has {source.num_images} images, fewer than one optimizer step "
            f"(global batch {resolved.global_batch}); lower schedule.micro_batch / grad_accum"
        )
    total_steps = steps_per_epoch * schedule.epochs
    if schedule.max_steps is not None:
        total_steps = min(total_steps, schedule.max_steps)
    return TrainingData(builder, source, info, lexicon_info, steps_per_epoch, total_steps)


def corpus_vocab(tokenizer, data) -> VocabMap:
    """The corpus vocabulary of `data`'s training split (a DataConfig): its (emotion, explanation) pairs."""
    records = load_split_records(data.dataset_dir, data.train_split)
    pairs = [(e, x) for r in records.values() for e, x in zip(r.get("emotions", []), r.get("explanations", []))]
    return VocabMap.from_annotations(tokenizer, pairs, min_count=data.vocab_min_count)


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


# ---- who collates: the main process when it would otherwise wait ---------------------------------
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
        pin_memory=page_locked() and not num_workers,
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
    """The data source of `data` (a resolved DataConfig) that `info` (checks.feature_info) names."""
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
            data.features,
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
            f"(data.features); {data.shards} is a shard set, which trains on every image it holds"
        )
    return ShardSource(data.shards, data.train_split, data.val_split, read_timeout=data.read_timeout, **common)
