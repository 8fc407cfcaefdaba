"""Helpers for the tests that run `sevlm train` in child processes and compare run folders.

A plain module beside conftest.py (import it as `tests.train.runkit`): the soak and the
launcher tests share how a child is started (environment, its own process group, a bounded
wait, everything stopped afterwards) and how two run folders are compared.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# log.jsonl fields that a resumed run cannot repeat, left out when two runs are compared (and
# only these: every loss, rate and the gradient norm must still match): the row's wall-clock
# `time`, the step timings and rates (the machine's speed), the peak memory (this process's,
# not the run's), and `tokens`, counted over the window since the last row (a resume starts a
# new window).
WALL_CLOCK = (
    "time",
    "step_time_s",
    "data_wait_s",
    "fwd_bwd_s",
    "optim_s",
    "data_wait_frac",
    "samples_per_s",
    "tokens_per_s",
    "tokens",
    "mfu",
    "mem_peak_rss_gib",
    "mem_peak_alloc_gib",
    "mem_peak_reserved_gib",
)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child that trains: this checkout first on the path, CPU DeepSpeed,
    one OpenMP thread (the machine's cores are shared by the children and the test)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(
        os.environ, PYTHONPATH=path, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra
    )


def sevlm_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "sevlm.cli", *args]


def start(argv: list[str], log: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """`argv` in its own session (so that the test can stop the whole group), stdout and stderr
    into `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env or child_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL `proc`'s whole process group (its DataLoader workers too) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


@contextlib.contextmanager
def stopped_afterwards(procs: list[subprocess.Popen]):
    """Whatever happens in the block, no process of `procs` (or of their groups) outlives it."""
    try:
        yield procs
    finally:
        for p in procs:
            stop_group(p)


def wait_for(cond, timeout: float, interval: float = 0.01, procs=(), what: str = "", logs=()) -> None:
    """Poll `cond()` until true; fail after `timeout` s, or as soon as one of `procs` has exited
    (the failure quotes the end of each of `logs`, the children's output)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if any(p.poll() is not None for p in procs):
            tails = "".join(f"\n--- {log}:\n" + Path(log).read_text(errors="replace")[-3000:] for log in logs)
            raise AssertionError(f"{what}: a child exited first (rc {[p.poll() for p in procs]}){tails}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def log_rows(run_dir: Path) -> list[dict]:
    """log.jsonl as rows (a line a kill cut short is skipped), wall-clock fields removed."""
    path = Path(run_dir) / "log.jsonl"
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append({k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK})
    return rows


def first_difference(rows: list[dict], expected: list[dict]) -> str:
    """Where two logs part (for an assertion's message)."""
    for i, (a, b) in enumerate(zip(rows, expected)):
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            mine, theirs = [a.get(k) for k in keys], [b.get(k) for k in keys]
            return f"row {i} (step {a.get('step')}) differs in {keys}: {mine} != {theirs}"
    longer = rows if len(rows) > len(expected) else expected
    extra = longer[min(len(rows), len(expected)) :][:1]
    return f"{len(rows)} rows != {len(expected)} rows; the first extra one: {extra}"


def step_rows(run_dir: Path) -> list[dict]:
    """The training-step rows of log.jsonl (losses and learning rates), wall-clock fields removed."""
    return [r for r in log_rows(run_dir) if "loss" in r and "event" not in r]


def losses_by_step(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in step_rows(run_dir)]


def export_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "export" / "model.safetensors"))


def differing_tensors(a: dict, b: dict) -> list[str]:
    """Names of the tensors that are not bit-for-bit equal (or present in only one of a, b)."""
    import torch

    def same(x, y):
        return (
            x.dtype == y.dtype
            and x.shape == y.shape
            and torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
        )

    return [n for n in sorted(set(a) | set(b)) if n not in a or n not in b or not same(a[n], b[n])]


def tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (wall-clock tags aside): the event files
    in the order they were written, each restart's purge marker (SessionLog START at step s)
    dropping what the previous files had logged from step s on."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    files = sorted(
        (Path(run_dir) / "tb").glob("events.out.tfevents.*"), key=lambda p: (int(p.name.split(".")[3]), p.name)
    )  # by the writer's start time
    out: dict[str, list[tuple[int, float]]] = {}
    for f in files:
        for event in EventFileLoader(str(f)).Load():
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                out = {tag: [(s, v) for s, v in rows if s < event.step] for tag, rows in out.items()}
            for value in event.summary.value:
                if value.tag.rsplit("/", 1)[-1] in WALL_CLOCK:
                    continue
                v = value.simple_value if value.HasField("simple_value") else float(value.tensor.float_val[0])
                out.setdefault(value.tag, []).append((event.step, v))
    return out


def descendants(pid: int) -> list:
    """The live descendants of `pid` (psutil processes), e.g. DataLoader workers."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(procs) -> list[int]:
    import psutil

    out = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
    return out


def shm_of(pids) -> list[str]:
    """Names in /dev/shm that carry one of `pids` (torch's and multiprocessing's shared memory files
    name their creator's pid)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    marks = {str(p) for p in pids}
    return sorted(n.name for n in shm.iterdir() if any(m in n.name.replace("-", "_").split("_") for m in marks))
