"""Two simulated nodes on one machine: two torchrun invocations (`--nnodes 2 --node_rank 0|1`,
one CPU rank each, gloo over loopback) train the tiny config from shards served over HTTP on
127.0.0.1. Node 1 is stopped mid-training twice: its torchrun sent SIGTERM, then the node lost
(torchrun, its rank and the rank's workers killed). Node 0 must then exit by itself, in bounded
time; both are relaunched with `--resume` each time, and the finished run's log equals a
single-node two-rank run's (`torchrun --nproc_per_node 2`, shards read from the folder) step by
step, its weights bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sevlm.train.distributed import free_port
from tests.train.runkit import (
    alive,
    child_env,
    descendants,
    differing_tensors,
    export_tensors,
    first_difference,
    log_rows,
    losses_by_step,
    start,
    stopped_afterwards,
    wait_for,
)

SETTINGS = (
    "device=cpu",
    "data.features=null",
    "data.num_workers=1",
    "schedule.epochs=4",
    "schedule.checkpoint_every=2",
    "schedule.val_every=0",
    "schedule.val_gen_images=0",
)
EXIT_TIMEOUT_S = 120  # a rank notices a lost peer at its next collective: well within this
RUN_TIMEOUT_S = 300


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per shard request on the test's stderr otherwise
        pass


@pytest.fixture()
def shard_server(shard_dir):
    """`shard_dir` over HTTP on 127.0.0.1 (a free port), for the length of the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(shard_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def torchrun(*args: str) -> list[str]:
    """The torchrun command line (`python -m torch.distributed.run` is what `torchrun` runs)."""
    return [sys.executable, "-m", "torch.distributed.run", *args]


def node(k: int, port: int, train_args: list[str], log: Path):
    env = child_env(no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    return start(
        torchrun(
            "--nnodes",
            "2",
            "--node_rank",
            str(k),
            "--nproc_per_node",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "-m",
            "sevlm.cli",
            "train",
            *train_args,
        ),
        log,
        env=env,
    )


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:]


def interrupt(run_dir: Path, nodes: list, logs: list[Path], at_step: int, how: str) -> dict:
    """Once rank 0 has logged `at_step`, stop node 1 (`how`: "sigterm", a SIGTERM to its torchrun,
    which passes it on to its rank; "lost", a SIGKILL to its torchrun, its rank and the rank's
    workers: torchrun starts a rank in a session of its own, so a kill of torchrun alone leaves
    the rank training). Node 0 must then exit by itself, with an error, within EXIT_TIMEOUT_S."""
    wait_for(
        lambda: any(r.get("step", 0) >= at_step for r in log_rows(run_dir)),
        RUN_TIMEOUT_S,
        procs=nodes,
        logs=logs,
        what=f"step {at_step} on two nodes",
    )
    watched = [descendants(p.pid) for p in nodes]
    if how == "sigterm":
        nodes[1].send_signal(signal.SIGTERM)
    else:
        for p in [nodes[1], *watched[1]]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
    rc1 = nodes[1].wait(timeout=EXIT_TIMEOUT_S)
    stopped_at = time.monotonic()
    try:
        rc0 = nodes[0].wait(timeout=EXIT_TIMEOUT_S)
    except Exception:
        raise AssertionError(f"node 0 still runs {EXIT_TIMEOUT_S} s after node 1 stopped: {_tail(logs[0])}") from None
    assert rc0 != 0 and rc1 != 0, _tail(logs[0]) + _tail(logs[1])
    for k in (0, 1):
        wait_for(lambda: not alive(watched[k]), 10, what=f"node {k}'s rank and DataLoader worker ending")
        assert len(watched[k]) >= 2, watched  # a rank and its DataLoader worker were watched
    return dict(
        how=how,
        node0_exit_s=round(time.monotonic() - stopped_at, 1),
        rc0=rc0,
        rc1=rc1,
        rank1_said=[
            line for line in logs[1].read_text(errors="replace").splitlines() if "terminated (SIGTERM)" in line
        ],
    )


@pytest.mark.slow
def test_two_nodes_from_http_shards_resume_after_a_node_stops_and_match_one_node(
    tiny_data, shard_dir, shard_server, tmp_path
):
    from sevlm.train.checkpoint import CKPT_DIR, LAST, pointers
    from tests.train.conftest import tiny_overrides

    # the reference: one node, two ranks, shards read from the folder
    ref_dir, ref_log = tmp_path / "ref", tmp_path / "ref.txt"
    ref = start(
        torchrun(
            "--nnodes",
            "1",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "sevlm.cli",
            "train",
            "--config",
            "tiny",
            "--out",
            str(ref_dir),
            *tiny_overrides(tiny_data, *SETTINGS, f"data.shards={shard_dir}"),
        ),
        ref_log,
    )
    with stopped_afterwards([ref]):
        assert ref.wait(timeout=RUN_TIMEOUT_S) == 0, _tail(ref_log)

    # two nodes, the shards over HTTP: node 1 stopped by SIGTERM, both resumed, node 1 lost, both resumed
    run_dir = tmp_path / "run"
    args = [
        "--config",
        "tiny",
        "--out",
        str(run_dir),
        *tiny_overrides(tiny_data, *SETTINGS, f"data.shards={shard_server}"),
    ]
    stops, resumed_from = [], []
    for n, (at_step, how) in enumerate([(5, "sigterm"), (11, "lost"), (None, None)]):
        port, logs = free_port(), [tmp_path / f"launch{n}-node{k}.txt" for k in (0, 1)]
        nodes = [node(k, port, args, logs[k]) for k in (0, 1)]
        with stopped_afterwards(nodes):
            if how is None:
                for k, p in enumerate(nodes):
                    assert p.wait(timeout=RUN_TIMEOUT_S) == 0, _tail(logs[k])
                break
            stops.append(interrupt(run_dir, nodes, logs, at_step, how))
        resumed_from.append(int(pointers(run_dir / CKPT_DIR)[LAST][len("step") :]))
        assert at_step - 2 <= resumed_from[-1] <= at_step + 2 and not (run_dir / "done.json").exists(), resumed_from
        args = ["--resume", str(run_dir)]
    print(stops, "resumed from", resumed_from)
    assert stops[0]["rank1_said"] and stops[0]["rc1"] != 0  # rank 1 took the SIGTERM as a clean exit

    run = json.loads((run_dir / "run.json").read_text())
    assert (run_dir / "done.json").exists() and run["world_size"] == 2 and run["resumed_at_step"] == resumed_from[-1]
    assert [s for s, _ in losses_by_step(ref_dir)] == list(range(1, run["total_steps"] + 1))
    assert losses_by_step(run_dir) == losses_by_step(ref_dir)  # step by step, exactly
    assert log_rows(run_dir) == log_rows(ref_dir), first_difference(log_rows(run_dir), log_rows(ref_dir))
    assert differing_tensors(export_tensors(run_dir), export_tensors(ref_dir)) == []
