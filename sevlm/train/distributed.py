"""Process-group set-up that works the same under one process, `deepspeed` and torchrun.

The launchers export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a plain
`sevlm train` gets single-process defaults. CPUs use gloo (DeepSpeed's CPU accelerator would
otherwise pick oneCCL), GPUs NCCL.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_OWN_PORT = "SEVLM_OWN_MASTER_PORT"  # set when the single-process default picked MASTER_PORT


def set_env_defaults(device: str) -> None:
    """Single-process defaults for what the launchers would set. Call before importing deepspeed."""
    if "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("RANK", "0")
        os.environ["WORLD_SIZE"] = "1"
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = os.environ[_OWN_PORT] = str(free_port())
    else:
        os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _init_process_group(deepspeed, backend: str, attempts: int = 5) -> None:
    """deepspeed.init_distributed; a single process whose port sevlm picked itself takes another
    when that one was taken in the meantime (a free port is only free until someone binds it:
    two runs started together can draw the same one, and the second failed with EADDRINUSE)."""
    for attempt in range(attempts):
        try:
            deepspeed.init_distributed(dist_backend=backend)
            return
        except Exception as e:  # torch's DistNetworkError, by message: its class moved between versions
            own = os.environ.get(_OWN_PORT) == os.environ.get("MASTER_PORT")
            if not (own and "EADDRINUSE" in str(e)) or attempt == attempts - 1:
                raise
            os.environ["MASTER_PORT"] = os.environ[_OWN_PORT] = str(free_port())


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed from building and loading its shared-memory communication op in this process.

    DeepSpeed's process-group wrapper (`deepspeed.comm.torch.TorchBackend`) JIT-builds that op on
    every CPU start whatever the world size (about 35 s on a fresh machine, and concurrent runs
    wait on each other's build lock). Only multi-rank inference all-reduces use it: one process
    has nobody to share memory with. DeepSpeed has no config key or variable for this; before
    building it asks `deepspeed.ops.__compatible_ops__`, its per-launch table of the ops that can be
    built (kept in the module so that edits to it persist), so the op is marked not buildable
    here. Multi-rank CPU runs keep it."""
    import deepspeed.ops  # deepspeed here and below: only after set_env_defaults has set the accelerator env

    try:
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
    except ImportError:  # a DeepSpeed without the op: nothing to skip
        return
    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def init_distributed(device: str) -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed (once); returns (rank, world_size)."""
    set_env_defaults(device)
    import deepspeed

    if not dist.is_initialized():
        if device == "cpu" and os.environ.get("WORLD_SIZE") == "1":
            skip_shm_comm_op()
        _init_process_group(deepspeed, "nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def join_process_group(requested_device: str) -> tuple[str, int, int]:
    """(device, rank, world_size): the device `requested_device` names ("auto": a GPU if there is
    one), with this process in the process group."""
    device = pick_device(requested_device)
    rank, world = init_distributed(device)
    return device, rank, world


def _comm_device():
    # NCCL only moves GPU tensors
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def mean_across(values: list[float]) -> list[float]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def all_gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
