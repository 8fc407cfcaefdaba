"""Reading a shard location's files over the network without hanging: http(s)/ftp(s) through curl,
gs:// through gsutil, ais:// through ais and `pipe:` commands through the shell, each under
`TimedPipe`, which fails with StalledRead after `read_timeout` seconds without a byte
(data.read_timeout). See docs/RELIABILITY.md.
"""

from __future__ import annotations

import ctypes
import io
import os
import select
import signal
import subprocess
import tempfile
from urllib.parse import urlparse

import webdataset as wds

from sevlm.errors import ConfigError, DataError

DEFAULT_READ_TIMEOUT = 60.0  # seconds without a byte before a network read fails (data.read_timeout)


class StalledRead(DataError):
    """A shard or manifest read that received no data for `read_timeout` seconds."""


class TimedPipe(io.RawIOBase):
    """The standard output of a process that must keep sending: `curl` for http(s)/ftp(s) URLs,
    `gsutil cat` / `ais get` for gs:// / ais:// (the commands webdataset runs), the user's shell
    command for `pipe:CMD`. A read that waits `timeout` seconds without a byte kills
    the process (its whole process group: a pipeline's members too) and raises StalledRead naming
    the URL; a process that ends with a failing status raises DataError with its last error line.

    webdataset's own opener runs `curl --connect-timeout 30 --retry 30` with no bound on a
    stalled transfer, so a server that accepts and never answers blocked training forever."""

    def __init__(self, url: str, args: list[str] | str, timeout: float, shell: bool = False):
        super().__init__()
        self.url, self.timeout = url, float(timeout)
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                args,
                shell=shell,
                stdout=subprocess.PIPE,
                stderr=self._err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except FileNotFoundError:  # a list's program (a shell command's is the shell's own error)
            self._err.close()
            scheme = urlparse(url).scheme
            raise DataError(f"{url}: reading {scheme}:// URLs needs `{args[0]}`, which is not on PATH") from None
        self._fd = self.proc.stdout.fileno()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        ready, _, _ = select.select([self._fd], [], [], self.timeout)
        if not ready:
            self._kill()
            raise StalledRead(
                f"{self.url}: no data for {self.timeout:g} s (data.read_timeout); the server or "
                "command stalled, or is too slow: check it, or raise data.read_timeout"
            )
        data = os.read(self._fd, len(buffer))
        if not data:
            self._finish()
            return 0
        buffer[: len(data)] = data
        return len(data)

    def _finish(self) -> None:
        try:
            status = self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:  # output closed but the process lingers
            self._kill()
            status = self.proc.returncode
        if status == 28 and isinstance(self.proc.args, list) and self.proc.args[0] == "curl":  # its own timeout
            raise StalledRead(
                f"{self.url}: no data for about {self.timeout:g} s (data.read_timeout; curl gave up); "
                "the server stalled, or is too slow: check it, or raise data.read_timeout"
            )
        if status not in (0, None):
            self._err.seek(0)
            lines = self._err.read().decode("utf-8", "replace").strip().splitlines()
            command = self.proc.args if isinstance(self.proc.args, str) else self.proc.args[0]
            what = f"`{command}` exited with status {status}"
            raise DataError(f"{self.url}: {what}" + (f" ({lines[-1].strip()})" if lines else ""))

    def _kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def close(self) -> None:
        if not self.closed:
            self._kill()  # read to its end already, or abandoned: either way nothing more is wanted
            self.proc.stdout.close()
            self._err.close()
        super().close()


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL when the reading process dies, so a killed
    DataLoader worker leaves no curl behind waiting on a stalled server."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_CURL_SCHEMES = ("http", "https", "ftp", "ftps", "sftp", "scp")
_COMMANDS = {  # scheme -> the command that writes the object to stdout (as webdataset.gopen runs it)
    "gs": lambda url: ["gsutil", "cat", url],
    "ais": lambda url: ["ais", "get", url, "-"],
}


def open_url(url: str, read_timeout: float = DEFAULT_READ_TIMEOUT):
    """A byte stream of a shard location's file (what webdataset.gopen opens): local paths and
    file:// directly; http(s)/ftp(s) through curl, gs:// and ais:// through their own command line
    tools and `pipe:CMD` through the shell, each bounded by `read_timeout` seconds without data
    (TimedPipe); other schemes (hf://) through webdataset.gopen, unbounded."""
    if read_timeout is None or read_timeout <= 0:
        raise ConfigError(f"data.read_timeout: must be > 0 seconds, got {read_timeout}")
    scheme = urlparse(url).scheme
    if scheme in _CURL_SCHEMES:
        connect = str(max(1, min(30, int(read_timeout))))
        # no --retry: a retry after a stall would start the wait over; -S: curl's error on stderr
        # --speed-limit/--speed-time: curl gives up by itself too, even if its reader is gone
        args = [
            "curl",
            "--connect-timeout",
            connect,
            "--speed-limit",
            "1",
            "--speed-time",
            str(int(read_timeout) + 5),
            "-f",
            "-s",
            "-S",
            "-L",
            url,
        ]
        return io.BufferedReader(TimedPipe(url, args, read_timeout), buffer_size=1 << 16)
    if scheme in _COMMANDS:
        return io.BufferedReader(TimedPipe(url, _COMMANDS[scheme](url), read_timeout), buffer_size=1 << 16)
    if scheme == "pipe":
        return io.BufferedReader(TimedPipe(url, url[len("pipe:") :], read_timeout, shell=True), buffer_size=1 << 16)
    return wds.gopen(url)
