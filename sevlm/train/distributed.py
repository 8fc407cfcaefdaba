"""Process-group set-up that works the same under one process, `deepspeed` and torchrun.

The launchers export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a plain
`sevlm train` gets single-process defaults. CPUs use gloo (DeepSpeed's CPU accelerator would
otherwise pick oneCCL), GPUs NCCL.
"""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_env_defaults(device: str) -> None:
    """Single-process defaults for what the launchers would set. Call before importing deepspeed."""
    if "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("RANK", "0")
        os.environ["WORLD_SIZE"] = "1"
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    else:
        os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def init_distributed(device: str) -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed (once); returns (rank, world_size)."""
    set_env_defaults(device)
    import deepspeed
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def _comm_device():
    import torch
    import torch.distributed as dist

    # NCCL only moves GPU tensors
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def mean_across(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def all_gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
