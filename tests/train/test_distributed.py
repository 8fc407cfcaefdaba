"""Two CPU ranks over gloo: ZeRO-2 really partitions the optimizer state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sevlm.train.distributed import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_gloo_ranks_partition_optimizer_state(tiny_data, tmp_path):
    from tests.train.conftest import tiny_overrides

    run_dir = tmp_path / "run"
    overrides = tiny_overrides(
        tiny_data,
        "schedule.max_steps=1",
        "schedule.val_every=0",
        "schedule.val_gen_images=2",
        "device=cpu",
        "data.corpus_vocab=false",
    )  # the full GPT-2 id space here
    # exactly what a launcher (torchrun / deepspeed) does: one process per rank, rendezvous by env
    script = (
        "import sys; from sevlm.cli import main; "
        f"sys.exit(main(['train', '--config', 'tiny', '--out', {str(run_dir)!r}, *{overrides!r}]))"
    )
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            DS_ACCELERATOR="cpu",
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    # several CPU ranks keep DeepSpeed's shared-memory op (a single process skips it: test_telemetry)
    assert all("deepspeed_shm_comm_op built successfully" in out for out in outputs)

    run = json.loads((run_dir / "run.json").read_text())
    assert run["world_size"] == 2 and run["global_batch"] == 8  # micro 4 x 2 ranks x accum 1
    # the step telemetry of two ranks: timings averaged over ranks, samples and tokens of both
    from tests.train.test_telemetry import TIMINGS

    step = json.loads((run_dir / "log.jsonl").read_text().splitlines()[0])
    assert all(step[k] >= 0 and step[k] == step[k] for k in TIMINGS), step
    assert step["samples_per_s"] == pytest.approx(8 / step["step_time_s"], rel=1e-3)
    assert step["tokens_per_s"] == pytest.approx(step["tokens"] / step["step_time_s"], rel=1e-3)
    assert step["tokens"] > run["max_tokens_per_step"] / 2  # more than one rank could hold: both ranks counted
    ranks = [json.loads((run_dir / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    trainable = ranks[0]["trainable_parameters"]
    for info in ranks:
        assert info["zero_stage"] == 2 and info["world_size"] == 2
        # Adam keeps two moments; each rank holds about half of them (ZeRO pads the partitions a little)
        assert abs(info["optimizer_state_elements"] - trainable) <= 0.01 * trainable
    assert sum(r["optimizer_state_elements"] for r in ranks) >= 2 * trainable
    # every rank wrote its own partition of the checkpoint
    from sevlm.train.checkpoint import CKPT_DIR, LAST, pointers

    last = run_dir / CKPT_DIR / pointers(run_dir / CKPT_DIR)[LAST]
    assert len(list(last.glob("zero_pp_rank_*_optim_states.pt"))) == 2
    from sevlm.export import load_run

    loaded = load_run(run_dir)
    assert loaded.model.config.n_layer == 2 and loaded.model.config.vocab_size == len(loaded.tokenizer)


def test_a_single_process_takes_another_port_when_its_own_was_taken(monkeypatch):
    """The port a plain `sevlm train` picks is free only until someone binds it: two runs started
    together could draw the same one (the kill soak met it as EADDRINUSE)."""
    from sevlm.train import distributed as D

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", D._OWN_PORT):
        monkeypatch.delenv(k, raising=False)
    D.set_env_defaults("cpu")
    ports = []

    class FakeDeepSpeed:
        @staticmethod
        def init_distributed(dist_backend):
            ports.append(os.environ["MASTER_PORT"])
            if len(ports) < 3:
                raise RuntimeError(f"port: {ports[-1]}, code: -98, name: EADDRINUSE, message: address already in use")

    D._init_process_group(FakeDeepSpeed, "gloo")
    assert len(ports) == 3 and len(set(ports)) == 3  # a new port each time

    # a port the user (or a launcher) chose is theirs: no silent change
    monkeypatch.setenv("MASTER_PORT", "29555")
    ports.clear()
    with pytest.raises(RuntimeError, match="EADDRINUSE"):
        D._init_process_group(FakeDeepSpeed, "gloo")
    assert ports == ["29555"]
