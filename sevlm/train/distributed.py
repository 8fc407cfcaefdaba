"""Process-group set-up that works the same under one process, `deepspeed` and torchrun.

The launchers export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a plain
`sevlm train` gets single-process defaults. CPUs use gloo (DeepSpeed's CPU accelerator would
otherwise pick oneCCL), GPUs NCCL.
"""

from __future__ import annotations

import os
import socket


def _free_port() -> int:
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
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
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


def init_distributed(device: str) -> tuple[int, int, int]:
    """Initialise torch.distributed through DeepSpeed (once); returns (rank, world_size, local_rank)."""
    set_env_defaults(device)
    import deepspeed
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    return dist.get_rank(), dist.get_world_size(), local_rank


def _comm_device():
    import torch
    import torch.distributed as dist

    # NCCL only moves GPU tensors
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_true(flag: bool) -> bool:
    """True on every rank only if `flag` is true on every rank (keeps ranks in lock-step)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t)  # counts the ranks that said no
    return int(t.item()) == 0


def mean_across(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()
