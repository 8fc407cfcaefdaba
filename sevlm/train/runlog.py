"""The run's log: every metric as one JSON object per line in log.jsonl, and TensorBoard.

Every row carries `time`, the wall clock (Unix seconds) when it was written; it is not a
TensorBoard scalar (TensorBoard records its own wall time per event)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from sevlm.io import write_text


def _after_last_event_file(tb_dir: Path) -> None:
    """Wait (under a second) until a new event file's name sorts after every one in `tb_dir`.

    TensorBoard reads a folder's event files in name order, and the purge that hides what a
    resumed run redoes only works when the resumed run's file comes last. A name is
    `events.out.tfevents.<unix seconds>.<host>.<pid>.<counter>`: within one second, a resume in
    the same process can sort first (counter "10" < "9"), so a resume starts its file in a
    later second than any existing one."""
    stamps = []
    for f in tb_dir.glob("events.out.tfevents.*"):
        try:
            stamps.append(int(f.name.split(".")[3]))
        except (IndexError, ValueError):
            continue
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


class RunLog:
    """JSONL + TensorBoard on rank 0; silent elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # drop what the interrupted run logged after its last checkpoint: it will be redone
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                if row.get("step", 0) <= resume_step and row.get("event") != "done":  # resumed: not done
                    kept.append(line)
            write_text(self.path, "".join(k + "\n" for k in kept))
        if resume_step is not None:
            _after_last_event_file(run_dir / "tb")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1)
        except ImportError:  # tensorboard is optional at runtime
            self.tb = None
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict, prefix: str = "train", tensorboard: bool = True) -> None:
        """One row of log.jsonl and, with `tensorboard`, its numbers as scalars at its step."""
        if not self.enabled:
            return
        self._f.write(json.dumps({**row, "time": round(time.time(), 3)}) + "\n")
        self._f.flush()
        if tensorboard and self.tb is not None and "step" in row:
            for k, v in row.items():
                if (
                    k not in ("step", "time")
                    and isinstance(v, (int, float))
                    and not isinstance(v, bool)
                    and math.isfinite(v)
                ):
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])

    def flush(self) -> None:
        """Everything written so far on disk (log.jsonl is flushed at every row; TensorBoard's writer
        thread may still hold some)."""
        if self.enabled and self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self.tb is not None:
            self.tb.close()
