"""Exclusive claims on an output, so that a second writer is refused instead of mixing files.

POSIX record locks (`fcntl.lockf`) belong to the process that took them: forked DataLoader
workers do not inherit them, and the kernel drops them the moment the holder dies (kill -9
included), so a restart never waits for orphaned workers. (`flock` locks, which HDF5 uses,
are shared with forked children and outlive a killed parent while its workers linger.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from sevlm.errors import SevlmError

# lock files this process holds: POSIX locks are per process, so a second claim from the same
# process would succeed at the OS level (and closing its descriptor would drop the first claim)
_HELD: set[str] = set()


class InUseError(SevlmError):
    """Another process is writing the same output."""


@contextlib.contextmanager
def claim(lock_path: str | os.PathLike, what: str | os.PathLike, wait: bool = False) -> Iterator[None]:
    """Hold `lock_path` exclusively for the block; the lock file is removed afterwards.

    Without `wait`, a claim held elsewhere raises InUseError naming `what` (the output it guards).
    """
    lock_path = Path(lock_path)
    key = os.path.abspath(lock_path)
    if key in _HELD:
        raise InUseError(f"{what}: in use by another writer in this process")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = _read_pid(lock_path)
            raise InUseError(
                f"{what}: in use by another process{f' (pid {holder})' if holder else ''}; "
                f"wait for it to finish or stop it, then run again"
            ) from None
        # the previous holder removes the file on release: make sure we locked the live one
        try:
            live = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            live = False
        if live:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        lock_path.unlink(missing_ok=True)  # before closing: a waiter then retries on a fresh file
        os.close(fd)


def _read_pid(lock_path: Path) -> str:
    try:
        return lock_path.read_text().strip()
    except OSError:
        return ""
