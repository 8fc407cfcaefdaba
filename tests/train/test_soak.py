"""Kill soak: a tiny run killed 10 times in a row, resumed each time, equals an uninterrupted run.

`sevlm train` (tiny config, 2 DataLoader workers, a checkpoint every 4 steps, 60 steps) is
killed with SIGKILL or SIGTERM at moments drawn by a seeded RNG across start-up, training and
the middle of a checkpoint save, and restarted with `sevlm train --resume RUN` each time. The
finished run's export weights, log.jsonl rows (wall-clock fields aside) and TensorBoard
scalars must equal those of a run that was never interrupted, bit for bit; the kills must
land where they were aimed, the run must move on across them, and no DataLoader worker,
shared-memory file, lock or temporary file may outlive them.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.train.conftest import tiny_overrides
from tests.train.runkit import (
    alive,
    descendants,
    differing_tensors,
    export_tensors,
    first_difference,
    log_rows,
    sevlm_argv,
    shm_of,
    start,
    stopped_afterwards,
    tb_scalars,
    wait_for,
)

SEED = 20  # the kill moments; any seed must pass
KILLS = 10
TOTAL_STEPS, CHECKPOINT_EVERY = 60, 4  # 6 epochs of 10 steps; validation (and a save) at each epoch's end
SETTINGS = (
    "data.num_workers=2",
    "schedule.epochs=6",
    f"schedule.checkpoint_every={CHECKPOINT_EVERY}",
    "schedule.val_every=0",
    "schedule.val_gen_images=0",
)  # no generation: the export is the last weights
STARTED = "sevlm train: world_size="  # printed once the model, engine and checkpoint are loaded
# the moments of a save, in the order DeepSpeed and sevlm write them (each is there once being written)
SAVE_FILES = (None, "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "fingerprint.json")
ORPHAN_GRACE_S = 2.0  # how long a killed run's workers may take to go
LAUNCH_TIMEOUT_S = 180


@dataclass
class Launch:
    """One start of `sevlm train` and what the test knew of the run folder just before it."""

    proc: object
    output: Path
    resumes_from: int  # the step of the checkpoint it continues from (0: none)
    log_inode: int | None  # log.jsonl before the start: the run rewrites it (a new inode) as it resumes
    old_tags: set = field(default_factory=set)  # checkpoint tags already there (pruned as it resumes)
    gone: set = field(default_factory=set)  # old tags seen removed since
    t0: float = field(default_factory=time.monotonic)

    def tail(self) -> str:
        return self.output.read_text(errors="replace")[-3000:]


def _last_step(run_dir: Path) -> int:
    from sevlm.train.checkpoint import CKPT_DIR, LAST, pointers

    tag = pointers(run_dir / CKPT_DIR).get(LAST)
    return int(tag[len("step") :]) if tag else 0


def _tags(run_dir: Path) -> set[str]:
    root = run_dir / "checkpoints"
    return {p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step")} if root.is_dir() else set()


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def launch(run_dir: Path, data: dict, n: int) -> Launch:
    """`sevlm train --resume RUN`, or the first command again while the run has no config.json yet."""
    if (run_dir / "config.json").exists():
        argv = sevlm_argv("train", "--resume", str(run_dir))
    else:
        argv = sevlm_argv("train", "--config", "tiny", "--out", str(run_dir), *tiny_overrides(data, *SETTINGS))
    before = dict(resumes_from=_last_step(run_dir), log_inode=_inode(run_dir / "log.jsonl"), old_tags=_tags(run_dir))
    return Launch(start(argv, run_dir.parent / f"launch{n:02d}.txt"), run_dir.parent / f"launch{n:02d}.txt", **before)


def new_steps(run_dir: Path, run: Launch) -> list[int]:
    """Steps that this launch has logged (none until it has rewritten the log it resumes)."""
    if _inode(run_dir / "log.jsonl") in (None, run.log_inode):
        return []
    return [r["step"] for r in log_rows(run_dir) if "loss" in r and "event" not in r and r["step"] > run.resumes_from]


def new_tags(run_dir: Path, run: Launch) -> list[str]:
    """Checkpoint tags this launch has begun to save, in order."""
    tags = _tags(run_dir)
    run.gone |= run.old_tags - tags
    return sorted(t for t in tags if int(t[4:]) > run.resumes_from and (t not in run.old_tags or t in run.gone))


def landed(run_dir: Path, run: Launch) -> str:
    """Where the kill of `run` landed, read from what it left (its files no longer change)."""
    from sevlm.train.checkpoint import CKPT_DIR, pointers

    if (run_dir / "done.json").exists():
        return "after the end"
    if not new_steps(run_dir, run):
        return "start-up"
    unnamed = _tags(run_dir) - set(pointers(run_dir / CKPT_DIR).values())
    return "checkpoint save" if unnamed else "training"  # a save not yet named, or its old tag not yet removed


@pytest.mark.slow
def test_ten_kills_then_resume_equal_an_uninterrupted_run_bit_for_bit(tiny_data, tmp_path):
    rng = random.Random(SEED)
    phases = ["start-up"] * 2 + ["training"] * 5 + ["checkpoint save"] * 3
    rng.shuffle(phases)
    signals = [signal.SIGKILL, signal.SIGTERM] * (KILLS // 2)
    rng.shuffle(signals)

    # the run nobody interrupts (same command, same kind of process), and how long its start-up takes
    (tmp_path / "ref").mkdir()
    reference = launch(tmp_path / "ref" / "run", tiny_data, 0)
    with stopped_afterwards([reference.proc]):
        wait_for(
            lambda: STARTED in reference.output.read_text(errors="replace"),
            LAUNCH_TIMEOUT_S,
            logs=[reference.output],
            procs=[reference.proc],
            what="reference start-up",
        )
        startup_s = time.monotonic() - reference.t0
        assert reference.proc.wait(timeout=LAUNCH_TIMEOUT_S) == 0, reference.tail()
    ref_dir = tmp_path / "ref" / "run"

    (tmp_path / "soak").mkdir()
    run_dir = tmp_path / "soak" / "run"
    kills, pids = [], []
    for n, (phase, sig) in enumerate(zip(phases, signals), start=1):
        run = launch(run_dir, tiny_data, n)
        with stopped_afterwards([run.proc]):
            pids.append(run.proc.pid)
            if phase == "start-up":  # a random moment of start-up, at the latest just before the first step
                delay = rng.random() * startup_s
                aim = f"{delay:.1f} s in"
                reached = lambda: (
                    time.monotonic() - run.t0 >= delay or STARTED in run.output.read_text(errors="replace")
                )
            elif phase == "training":  # past the next checkpoint, so the run moves on
                target = min(
                    run.resumes_from + rng.randint(CHECKPOINT_EVERY + 1, 2 * CHECKPOINT_EVERY + 1), TOTAL_STEPS - 2
                )  # (not the last steps: the kill must come before the end)
                aim = f"step {target}"
                reached = lambda: any(s >= target for s in new_steps(run_dir, run))
            else:  # inside the first or second save of this launch, as one of its files is being written
                skip, name = rng.randint(0, 1), rng.choice(SAVE_FILES)
                aim = f"save {skip + 1}, {name or 'its folder'}"
                reached = lambda: (
                    len(tags := new_tags(run_dir, run)) > skip
                    and (name is None or (run_dir / "checkpoints" / tags[skip] / name).exists())
                )
            wait_for(
                reached,
                LAUNCH_TIMEOUT_S,
                interval=0.002,
                procs=[run.proc],
                what=f"kill {n} ({phase}, {aim})",
                logs=[run.output],
            )
            workers = descendants(run.proc.pid)
            pids += [w.pid for w in workers]
            run.proc.send_signal(sig)
            rc = run.proc.wait(timeout=60)
            where = landed(run_dir, run)
            wait_for(lambda: not alive(workers), ORPHAN_GRACE_S, what=f"kill {n}: its DataLoader workers ending")
        kills.append(
            dict(
                n=n,
                phase=phase,
                aim=aim,
                signal=sig.name,
                rc=rc,
                landed=where,
                workers=len(workers),
                resumed_from=run.resumes_from,
                tail=run.tail(),
            )
        )
        assert where != "after the end", f"kill {n} came after the run had finished: {kills[-1]}"

    final = launch(run_dir, tiny_data, KILLS + 1)
    with stopped_afterwards([final.proc]):
        assert final.proc.wait(timeout=LAUNCH_TIMEOUT_S) == 0, final.tail()
    summary = "\n".join(
        f"{k['n']:2d} {k['signal']:7s} {k['phase']:15s} aimed {k['aim']:32s} landed {k['landed']:15s} "
        f"rc {k['rc']:4d}, {k['workers']} workers, resumed from {k['resumed_from']}"
        for k in kills
    )

    # the kills landed where they were aimed, and the run moved on across them
    assert [k["landed"] for k in kills if k["phase"] == "start-up"] == ["start-up"] * phases.count("start-up"), summary
    mid_training = [k for k in kills if k["landed"] in ("training", "checkpoint save")]
    assert len(mid_training) == phases.count("training") + phases.count("checkpoint save"), summary
    assert any(k["landed"] == "checkpoint save" for k in kills), summary
    assert {k["signal"] for k in kills} == {"SIGKILL", "SIGTERM"}
    resumed = [k["resumed_from"] for k in kills] + [final.resumes_from]
    assert resumed == sorted(resumed) and final.resumes_from >= TOTAL_STEPS // 2, summary
    for before, after in zip(kills, resumed[1:]):
        if before["phase"] == "training" and int(before["aim"][5:]) > before["resumed_from"] + CHECKPOINT_EVERY:
            assert after > before["resumed_from"], summary  # it was let past a checkpoint
    # SIGKILL ends a run on the spot; SIGTERM once training has begun is a clean exit (143) that leaves
    # what a kill leaves: workers stopped, the lock released, the last finished checkpoint to resume
    for k in kills:
        if k["signal"] == "SIGKILL":
            assert k["rc"] == -signal.SIGKILL, summary
        elif k["landed"] != "start-up":
            assert k["rc"] == 128 + signal.SIGTERM and "terminated (SIGTERM)" in k["tail"], k["tail"] + summary
        else:  # before `sevlm train` takes over SIGTERM (imports), the default action
            assert k["rc"] in (-signal.SIGTERM, 128 + signal.SIGTERM), summary
    # the orphan check saw the workers (between two epochs a kill may find none: one epoch's are gone)
    assert sum(k["workers"] == 2 for k in mid_training) >= len(mid_training) - 2, summary

    # bit for bit: the weights, every log row (wall clock aside), the TensorBoard scalars
    assert (run_dir / "done.json").exists()
    print(summary)
    assert log_rows(run_dir) == log_rows(ref_dir), first_difference(log_rows(run_dir), log_rows(ref_dir))
    assert [r["step"] for r in log_rows(run_dir) if "loss" in r and "event" not in r and "val_loss" not in r] == list(
        range(1, TOTAL_STEPS + 1)
    )
    assert differing_tensors(export_tensors(run_dir), export_tensors(ref_dir)) == []
    assert tb_scalars(run_dir) == tb_scalars(ref_dir)

    # nothing left behind: shared memory, the lock, half-written checkpoints or temporary files
    assert shm_of(pids) == []
    assert not list(run_dir.parent.glob(".*.lock")), list(run_dir.parent.iterdir())
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        p.name for p in (ref_dir / "checkpoints").iterdir()
    )

    def files(d: Path) -> list[str]:
        return sorted(str(p.relative_to(d)) for p in d.rglob("*") if "tb" not in p.relative_to(d).parts[:1])

    assert files(run_dir) == files(ref_dir)
