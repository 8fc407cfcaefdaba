"""Atomic writes that follow the user's umask: a file or folder is either absent or complete.

`tempfile` creates files 0600 and folders 0700 whatever the umask, so anything renamed into
place from it would be unreadable to a teammate; every temporary here gets the mode that a
plain `open()`/`mkdir()` would have given it (`follow_umask`) before it becomes visible.

  atomic_path(path)    a temporary file beside `path`, renamed over it if the block succeeds
                       (named with the writer's pid: a later write sweeps those of dead writers)
  atomic_dir(path)     a temporary folder beside `path`, swapped into place if the block succeeds
  temp_dir_beside(p)   a temporary folder beside `p` (umask mode), for callers that move files out
  follow_umask(path)   give an existing file or folder the mode the umask implies
  ensure_parent(path)  create the parent folders of an output
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from sevlm.errors import DataError


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (threads may be running)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike, recursive: bool = False) -> None:
    """Set `path` to 0666 (file) or 0777 (folder) less the umask, as open()/mkdir() would.

    Executable files keep their execute bits (0777 less the umask). `recursive` also fixes
    everything below a folder.
    """
    mask = current_umask()
    path = Path(path)
    paths = [path]
    if recursive and path.is_dir():
        paths += sorted(path.rglob("*"))
    for p in paths:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        full = 0o777 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o666
        os.chmod(p, full & ~mask)


def ensure_parent(path: str | os.PathLike) -> Path:
    """Create the parent folders of the output `path` (they follow the umask); return `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # mkdir's "File exists" hides that it is a file in the way
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", e.filename) from None
    return path


def temp_dir_beside(path: str | os.PathLike, prefix: str | None = None) -> Path:
    """A new empty folder beside `path` (same filesystem, so renames out of it are atomic),
    with the umask's mode. The caller removes it."""
    path = ensure_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{path.name}.", suffix=".tmp", dir=path.parent))
    follow_umask(tmp)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The block may write the temporary file in place or replace it (h5py, save_file): its
    mode is set from the umask just before the rename.
    """
    path = ensure_parent(path)
    if path.is_dir():  # else os.replace's error would name the temporary file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    sweep_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.p{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        follow_umask(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that `atomic_path(path)` writers killed mid-write left beside `path`
    (`.NAME.p<pid>.XXXX.tmp`, pid no longer running); returns what was removed."""
    path = Path(path)
    gone = []
    pattern = re.compile(re.escape(f".{path.name}.p") + r"(\d+)\..*\.tmp")
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.p*.tmp"):
        m = pattern.fullmatch(tmp.name)
        if m and tmp.is_file() and not _alive(int(m.group(1))):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # filesystem or kernel without it
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _restore_orphan(path: Path) -> None:
    """A writer killed between the two renames of the fallback swap left `path` missing and its
    last complete version inside `.NAME.old.*.tmp/`: put that back."""
    for old in sorted(path.parent.glob(f".{glob.escape(path.name)}.old.*.tmp")):
        if not path.exists() and (old / path.name).exists():
            os.replace(old / path.name, path)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; if the block succeeds it becomes `path`
    (an existing `path` is replaced), otherwise it is removed and `path` is left as it was.

    A reader sees the old folder or the new one, never neither: the two are exchanged in one
    step where the OS can, else by two renames that a later call repairs if killed between.
    Folders created inside by mkdtemp get the umask's mode too (files written with open() or
    through this module already have it).
    """
    path = Path(path)
    tmp = temp_dir_beside(path)
    try:
        _restore_orphan(path)
        yield tmp
        follow_umask(tmp, recursive=True)
        if not path.exists():
            os.replace(tmp, path)
        elif not _exchange(tmp, path):  # tmp now holds the old folder, removed below
            # POSIX cannot rename a folder over a non-empty one: move the old one aside first.
            old = temp_dir_beside(path, prefix=f".{path.name}.old.")
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, ensure_ascii=False)
            f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); is it the right file?") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
