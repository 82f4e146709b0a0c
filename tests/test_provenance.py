"""Atomic writes and provenance records."""
import os
import stat

from guiding_nc.training.provenance import atomic_write_json, atomic_write_text


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


def test_provenance_names_paths_relative_to_the_project(tmp_path):
    from guiding_nc.training.config import project_root
    from guiding_nc.training.provenance import collect_provenance

    root = project_root()
    prov = collect_provenance({}, argv=[str(root / ".venv/bin/python"), "-m", "x", "--out", str(root / "data/r"),
                                        f"run_dir={tmp_path}", "--seeds", "0"])
    assert prov["argv"][:4] == [".venv/bin/python", "-m", "x", "--out"] and prov["argv"][4] == "data/r"
    assert not any(w.startswith("/") or "=/" in w for w in prov["argv"]) and not prov["cwd"].startswith("/")
    assert prov["command"] == " ".join(prov["argv"])


def test_recorded_commands_name_no_local_path():
    from guiding_nc.training.config import project_root
    from guiding_nc.training.provenance import local_command

    root = str(project_root())
    cmd = f"python -m x --work-dir {root}/runs/a --out={root}/data/r key={root}/b --seeds 0 1"
    assert local_command(cmd) == "python -m x --work-dir runs/a --out=data/r key=b --seeds 0 1"
    assert root not in local_command(f"{root}/.venv/bin/python -m y")
