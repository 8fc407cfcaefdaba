"""Network reads are bounded (data.read_timeout): a stalling shard server on 127.0.0.1 or a
stalling `pipe:` command fails the read within the timeout, naming the URL.

Only loopback traffic; every wait is bounded (the server's handlers wait on an event the
fixture sets, at most 60 s), and the fixture stops the server."""

from __future__ import annotations

import os
import threading
import time

import pytest

from sevlm.errors import DataError
from sevlm.features.remote import StalledRead
from sevlm.features.shards import open_shards, read_manifest, shard_pipeline

TIMEOUT = 2.0


@pytest.fixture()
def stalling(shard_dir):
    """A web server for the shard folder that stalls on the paths in `stall`: `silent` accepts and
    never answers; `partial` sends the headers and 512 bytes, then nothing."""
    import http.server

    from sevlm.train.distributed import free_port

    stop = threading.Event()
    stall: dict[str, str] = {}  # path suffix -> "silent" | "partial"
    asked: list[str] = []
    stalled_at: list[float] = []  # time.monotonic() when each stall began

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            asked.append(self.path)
            how = next((v for k, v in stall.items() if self.path.endswith(k)), None)
            if how == "silent":
                stalled_at.append(time.monotonic())
                stop.wait(60)
                return
            path = shard_dir / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if how == "partial":
                self.wfile.write(data[:512])
                self.wfile.flush()
                stalled_at.append(time.monotonic())
                stop.wait(60)
                return
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", stall, asked, stalled_at
    stop.set()
    server.shutdown()
    server.server_close()
    thread.join(10)
    assert not thread.is_alive()


def assert_killed(pid: int, what: str) -> None:
    """`pid` is gone within 5 s."""
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"{what} (pid {pid}) is still running")


def timed(fn):
    t0 = time.monotonic()
    try:
        fn()
    finally:
        timed.elapsed = time.monotonic() - t0


def test_a_manifest_server_that_never_answers_fails_within_the_timeout(stalling):
    url, stall, asked, _ = stalling
    stall["/manifest.json"] = "silent"
    with pytest.raises(StalledRead, match=rf"^{url}/manifest.json: no data for 2 s \(data.read_timeout\)"):
        timed(lambda: read_manifest(f"{url}/", read_timeout=TIMEOUT))
    assert TIMEOUT <= timed.elapsed < TIMEOUT + 10
    assert asked == ["/manifest.json"]


def test_a_shard_that_stalls_after_512_bytes_fails_within_the_timeout(stalling):
    url, stall, asked, _ = stalling
    stall["train-000001.tar"] = "partial"
    shards = open_shards(f"{url}/", "train", read_timeout=TIMEOUT)  # the manifest is served whole
    with pytest.raises(DataError, match=rf"{url}/train-000001.tar: no data for 2 s \(data.read_timeout\)"):
        timed(lambda: list(shard_pipeline(shards, shuffle=False)))
    assert timed.elapsed < 2 * (TIMEOUT + 10)
    assert "/train-000000.tar" in asked and "/train-000001.tar" in asked


def test_a_pipe_command_that_stalls_is_killed_within_the_timeout(tmp_path):

    pid_file = tmp_path / "pid"
    where = f"pipe:sh -c 'echo $$ > {pid_file}; sleep 30' {tmp_path}/"  # its last word: the folder
    with pytest.raises(StalledRead, match=r"^pipe:sh .*/manifest.json: no data for 2 s \(data.read_timeout\)"):
        timed(lambda: read_manifest(where, read_timeout=TIMEOUT))
    assert TIMEOUT <= timed.elapsed < TIMEOUT + 10
    assert_killed(int(pid_file.read_text()), "the stalled command")  # with its process group


def test_a_failing_server_reply_is_one_error_naming_the_url(stalling):
    url, _, _, _ = stalling
    with pytest.raises(
        DataError, match=rf"^{url}/nothing/manifest.json: cannot read the shard manifest \(`curl` exited with status 22"
    ):
        read_manifest(f"{url}/nothing/", read_timeout=TIMEOUT)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_training_on_a_stalled_shard_server_fails_within_the_timeout_naming_the_url(
    stalling, tiny_config, tmp_path, workers, capsys
):
    from sevlm.cli import main
    from sevlm.io import write_json

    url, stall, asked, stalled_at = stalling
    stall["train-000003.tar"] = "partial"
    cfg = tiny_config(
        "schedule.max_steps=6",
        "schedule.val_every=0",
        "schedule.val_gen_images=0",
        "data.features=null",
        f"data.shards={url}/",
        f"data.read_timeout={TIMEOUT}",
        f"data.num_workers={workers}",
    )
    from dataclasses import asdict

    write_json(tmp_path / "cfg.json", asdict(cfg))
    assert main(["train", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "run")]) == 1
    ended = time.monotonic()
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    errors = [line.split("sevlm train: error: ")[-1] for line in err if "sevlm train: error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"{url}/train-000003.tar: no data for 2 s (data.read_timeout)")
    assert "/train-000003.tar" in asked and len(stalled_at) == 1
    assert ended - stalled_at[0] < TIMEOUT + 30  # from the stall to the end of the process's work


def _fake_tool(bin_dir, name: str, body: str) -> None:
    """An executable `name` on a PATH of its own (gsutil, ais: the tools webdataset runs)."""
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text("#!/bin/sh\n" + body + "\n")
    tool.chmod(0o755)


def test_gs_urls_read_through_gsutil_give_the_local_folders_samples(shard_dir, tmp_path, monkeypatch):
    """gs:// goes through `gsutil cat URL`, as webdataset runs it, but bounded: the same samples as
    the folder itself."""
    _fake_tool(
        tmp_path / "bin", "gsutil", f'[ "$1" = cat ] || exit 2\nexec cat "{shard_dir}/${{2#gs://bucket/shards/}}"'
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    remote = open_shards("gs://bucket/shards/", "train", read_timeout=TIMEOUT)
    local = open_shards(str(shard_dir), "train")
    keys = [s["__key__"] for s in shard_pipeline(remote, shuffle=False)]
    assert keys == [s["__key__"] for s in shard_pipeline(local, shuffle=False)] and len(keys) > 5


@pytest.mark.parametrize(("scheme", "tool"), [("gs", "gsutil"), ("ais", "ais")], ids=["gs-gsutil", "ais-ais"])
def test_a_stalling_object_store_tool_is_killed_within_the_timeout(scheme, tool, tmp_path, monkeypatch):
    pid_file = tmp_path / "pid"
    _fake_tool(tmp_path / "bin", tool, f"echo $$ > {pid_file}\nexec sleep 30")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    url = f"{scheme}://bucket/shards/"
    with pytest.raises(StalledRead, match=rf"^{url}manifest.json: no data for 2 s \(data.read_timeout\)"):
        timed(lambda: read_manifest(url, read_timeout=TIMEOUT))
    assert TIMEOUT <= timed.elapsed < TIMEOUT + 10
    assert_killed(int(pid_file.read_text()), f"the stalled {tool}")


def test_a_missing_object_store_tool_is_one_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"^gs://bucket/manifest.json: .*needs `gsutil`, which is not on PATH"):
        read_manifest("gs://bucket/", read_timeout=TIMEOUT)
