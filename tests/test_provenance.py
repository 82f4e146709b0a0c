"""Atomic writes and provenance records."""
import os
import stat

from guiding_nc.provenance import atomic_write_json, atomic_write_text


def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        os.umask(0o002)
        q = atomic_write_json(tmp_path / "b.json", {"a": 1})
        assert stat.S_IMODE(q.stat().st_mode) == 0o664
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*.tmp"))
