"""RunLog details that the end-to-end training tests only meet by chance."""

from __future__ import annotations

import time

from sevlm.train.runlog import _after_last_event_file


def test_a_resumed_event_file_sorts_after_the_existing_ones(tmp_path):
    """TensorBoard reads event files in name order; the name's first field is the second it was
    made in, so a resume waits for a later second than any file there."""
    newest = int(time.time()) + 1  # a file "from the next second", as a fast resume in one process meets
    (tmp_path / f"events.out.tfevents.{newest}.host.123.9").write_bytes(b"")
    (tmp_path / "events.out.tfevents.garbled").write_bytes(b"")  # not a stamp: ignored
    _after_last_event_file(tmp_path)
    assert int(time.time()) > newest
    t0 = time.perf_counter()
    _after_last_event_file(tmp_path / "absent")  # no folder yet: nothing to wait for
    assert time.perf_counter() - t0 < 0.05
