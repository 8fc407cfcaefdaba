"""The run's log: every metric as one JSON object per line in log.jsonl, and TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

from sevlm.io import write_text


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
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if tensorboard and self.tb is not None and "step" in row:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
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
