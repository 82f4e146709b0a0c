"""A regular install works outside the repository: the wheel carries the configs and experiment
specs, and its commands write to the current directory.

The wheel goes into a fresh virtual environment that borrows this environment's installed
dependencies (torch and the rest, through a ``.pth`` path entry: no download) but not its
editable install of ``guiding_nc``, so the package imported there is the wheel's.
"""
import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_environment_and_runs_from_anywhere(tmp_path):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
         cwd=tmp_path)
    (wheel,) = wheels.glob("guiding_nc-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    # This environment's dependencies, as a plain path entry (its .pth files, the editable install's
    # among them, are not read from there).
    ours = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (purelib / "borrowed_dependencies.pth").write_text("\n".join(ours) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)], cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([str(py), "-c", "import guiding_nc; print(guiding_nc.__file__)"], cwd=work, env=env).strip()
    assert where.startswith(str(purelib)), where  # the wheel's copy, not the repository's
    listing = _run([str(py), "-m", "guiding_nc.experiments.reproduce", "--list"], cwd=work, env=env)
    assert "ufm10" in listing and "real_offline" in listing
    _run([str(py), "-m", "guiding_nc.training.train_command", "ufm10", "--quick", "--no-progress", "methods=[implicit]", "seeds=[0]"],
         cwd=work, env=env)
    results = json.loads((work / "runs" / "ufm10" / "implicit" / "seed0" / "results.json").read_text())
    assert results["status"] == "completed"
    assert not (purelib / "runs").exists()  # nothing written inside the environment
