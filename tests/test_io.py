"""sevlm.io: atomic writes whose files and folders follow the user's umask."""

from __future__ import annotations

import os
import stat

import pytest

from sevlm.io import (
    atomic_dir,
    atomic_path,
    current_umask,
    ensure_parent,
    follow_umask,
    temp_dir_beside,
    write_json,
    write_text,
)


def _mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_current_umask_reads_without_changing(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_files_follow_umask(tmp_path, umask):
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    write_json(tmp_path / "new" / "deeper" / "a.json", {"x": 1})  # parents are created
    write_text(tmp_path / "b.txt", "hi")
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.unlink()  # writers such as h5py replace the temporary file: still fixed
        tmp.write_bytes(b"\0")
    assert {_mode(tmp_path / n) for n in ("new/deeper/a.json", "b.txt", "c.bin")} == {file_mode}
    assert _mode(tmp_path / "new") == _mode(tmp_path / "new" / "deeper") == dir_mode
    assert (file_mode, dir_mode) == {0o022: (0o644, 0o755), 0o002: (0o664, 0o775)}[umask]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt", "c.bin", "new"]  # no temporaries left


def test_atomic_dir_follows_umask_and_replaces(tmp_path, umask):
    import tempfile

    out = tmp_path / "sub" / "export"
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp.is_dir() and not out.exists()
        (tmp / "w.txt").write_text("one")
        tempfile.mkdtemp(dir=tmp, prefix="inner")  # 0700 from tempfile: fixed on the swap
    assert _mode(out) == 0o777 & ~umask
    assert {_mode(p) for p in out.iterdir()} == {0o777 & ~umask, 0o666 & ~umask}
    with atomic_dir(out) as tmp:
        (tmp / "w.txt").write_text("two")
    assert [p.name for p in out.iterdir()] == ["w.txt"] and (out / "w.txt").read_text() == "two"
    assert sorted(p.name for p in out.parent.iterdir()) == ["export"]


def test_atomic_dir_failure_keeps_old(tmp_path):
    out = tmp_path / "export"
    with atomic_dir(out) as tmp:
        (tmp / "w.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "w.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "w.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_temp_dir_beside_and_follow_umask(tmp_path, umask):
    t = temp_dir_beside(tmp_path / "a" / "target")
    assert t.parent == tmp_path / "a" and _mode(t) == 0o777 & ~umask
    f = t / "x"
    f.write_bytes(b"")
    os.chmod(f, 0o600)
    exe = t / "run.sh"
    exe.write_text("#!/bin/sh\n")
    os.chmod(exe, 0o700)
    follow_umask(t, recursive=True)
    assert (_mode(f), _mode(exe)) == (0o666 & ~umask, 0o777 & ~umask)
    assert ensure_parent(tmp_path / "p" / "q" / "r.txt") == tmp_path / "p" / "q" / "r.txt"
    assert (tmp_path / "p" / "q").is_dir()


def test_output_path_errors_name_the_path(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        write_json(tmp_path / "adir", {})
    assert e.value.filename == str(tmp_path / "adir")
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder") as e:
        write_json(tmp_path / "afile" / "x.json", {})
    assert e.value.filename == str(tmp_path / "afile")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_atomic_dir_swap_paths(tmp_path, monkeypatch, exchange):
    import sevlm.io as io

    if not exchange:
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    out = tmp_path / "ds"
    for text in ("one", "two"):
        with atomic_dir(out) as tmp:
            (tmp / "f.txt").write_text(text)
        assert (out / "f.txt").read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_atomic_dir_repairs_a_kill_between_renames(tmp_path):
    # What the two-rename fallback leaves when killed between its renames: no `ds`, and the
    # last complete version inside .ds.old.*.tmp/
    orphan = tmp_path / ".ds.old.abc.tmp"
    (orphan / "ds").mkdir(parents=True)
    (orphan / "ds" / "f.txt").write_text("complete")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "ds"):
            raise RuntimeError("the next writer fails too")
    assert (tmp_path / "ds" / "f.txt").read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_read_json_refuses_binary_in_one_line(tmp_path):
    from sevlm.errors import DataError
    from sevlm.io import read_json

    (tmp_path / "b.json").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match=r"b\.json: not UTF-8 text \(byte 0\)"):
        read_json(tmp_path / "b.json")
