"""Exports that teammates can read and that refuse damaged weights, naming the file."""

from __future__ import annotations

import os
import stat

from sevlm.export import save_export


def test_export_follows_umask(tmp_path, make_model, tok):
    old = os.umask(0o002)
    try:
        out = save_export(tmp_path / "runs" / "r1" / "export", make_model().eval(), tok, {"data": {"lexicon": "demo"}})
    finally:
        os.umask(old)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes.pop(".") == modes.pop("tokenizer") == 0o775
    assert set(modes.values()) == {0o664}, modes
    assert stat.S_IMODE((tmp_path / "runs").stat().st_mode) == 0o775  # parents created too
