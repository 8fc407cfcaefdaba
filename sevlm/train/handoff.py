"""How a micro-batch crosses from a DataLoader worker to the main process: its tensors in one
shared-memory buffer from a per-worker pool (`pack` / `unpack`), or its samples uncollated for
the main process to collate (`pack_samples` / `collate_packed`). One buffer per batch, reused,
because a shared-memory file per tensor, or a fresh buffer per batch, costs more than the copy.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np
import torch


def page_locked() -> bool:
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
    local = torch.empty(end, dtype=torch.uint8, pin_memory=page_locked())
    np.copyto(local[_HEADER:].numpy(), buffer[_HEADER:end].numpy())
    buffer[0] = 1
    return {**{k: _view(local, dtype, shape, at) for k, dtype, shape, at in layout}, **packed}


def _view(buffer: torch.Tensor, dtype: torch.dtype, shape: tuple, at: int) -> torch.Tensor:
    n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return buffer[at : at + n].view(dtype).view(shape)


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
    if page_locked():
        batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch
