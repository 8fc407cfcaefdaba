"""What every DataLoader worker of sevlm does first (training and feature extraction alike)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys


def end_with_parent(parent: int, worker_id: int) -> None:
    """A DataLoader worker's first act: die the moment the main process dies (Linux's parent-death
    signal) instead of living on until torch's watchdog notices, about 5 s later, keeping its
    memory, its open files and its share of the cores while a restarted run starts beside it.
    SIGTERM gets its default action back: the main process's handler (`sevlm train`'s clean
    exit) is inherited by the fork but is not the worker's; the main process stops its workers.
    (The signal follows the thread that started the worker: the recipe iterates in its main thread.)"""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the main process died before the signal was armed
        os._exit(1)
