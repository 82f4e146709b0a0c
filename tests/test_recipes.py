"""The README's recipes hold: a new classifier head and a new dataset, each added in the files the
README names (a copy of the package in a temporary directory), train through the command line,
and the figures draw the new head in its registry colour."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "guiding_nc"

HEAD_MODULE = '''"""A fixed simplex ETF read at half the temperature (an example head)."""
from .heads import FixedETFHead


class HalfTauETFHead(FixedETFHead):
    """The canonical fixed ETF with tau / 2."""

    def __init__(self, feature_dim, num_classes, *, tau=5.0, **kwargs):
        super().__init__(feature_dim, num_classes, tau=tau / 2, **kwargs)
'''

METHOD_ENTRY = '''    Method("fixed-half-tau", "fixed ETF, half tau", "#123456", "--", family="fixed", build=lambda d, C, o: __import__(
        "guiding_nc.core.half_tau", fromlist=["HalfTauETFHead"]).HalfTauETFHead(d, C, tau=o.tau,
                                                                             centring=o.centring)),
'''

DATASET_BUILDER = '''

def _build_digits_five(spec, root, train, download, augment, seed):
    """The digits 0-4 of scikit-learn's digits (an example dataset with five classes)."""
    images, labels = _load_digits()
    keep = labels < spec.num_classes
    return _build_offline_image(spec, images[keep], labels[keep], 16.0, train=train, augment=augment, seed=seed,
                                padding=1, degrees=0.0)
'''

DATASET_ENTRY = '''    DatasetSpec("digits5", 5, (1, 8, 8), offline=True, build=_build_digits_five, label="digits 0-4"),
'''

CONFIG = """base: paper_defaults
name: digits5_mlp
dataset: digits5
model: mlp
model_kwargs: {hidden: [32]}
feature_dim: 16
batch_size: 64
epochs: 2
report_epochs: [2]
checkpoint_every: 0
"""


def _insert_before(path: Path, anchor: str, text: str) -> None:
    s = path.read_text()
    assert anchor in s, f"{path.name} has no {anchor!r}: the README recipe's anchor moved"
    path.write_text(s.replace(anchor, text + anchor, 1))


@pytest.mark.slow
def test_a_new_head_and_a_new_dataset_train_through_the_cli(tmp_path):
    pkg = tmp_path / "src" / "guiding_nc"
    shutil.copytree(SRC, pkg, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
    before = {p.relative_to(pkg): p.read_bytes() for p in pkg.rglob("*") if p.is_file()}

    # Recipe "a classifier head": the head's class in a module, one entry in core/methods.py.
    (pkg / "core" / "half_tau.py").write_text(HEAD_MODULE)
    _insert_before(pkg / "core" / "methods.py", ')}\n\nMETHOD_NAMES', METHOD_ENTRY)
    # Recipe "a dataset": its builder and one DatasetSpec entry in training/datasets.py, and a
    # training config in configs/.
    _insert_before(pkg / "training" / "datasets.py", "\n\n# ------", DATASET_BUILDER)
    _insert_before(pkg / "training" / "datasets.py", "    # Random 32x32 colour images", DATASET_ENTRY)
    (pkg / "configs" / "digits5_mlp.yaml").write_text(CONFIG)

    after = {p.relative_to(pkg): p.read_bytes() for p in pkg.rglob("*") if p.is_file()}
    changed = sorted(str(k) for k in after if before.get(k) != after[k])
    assert changed == ["configs/digits5_mlp.yaml", "core/half_tau.py", "core/methods.py", "training/datasets.py"]

    env = dict(os.environ, PYTHONPATH=str(tmp_path / "src"))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "guiding_nc.train", "digits5_mlp", "method=fixed-half-tau", "seed=0",
           f"run_dir={run_dir}", "--no-progress", "num_threads=1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["method"] == "fixed-half-tau" and res["num_classes"] == 5
    assert res["final_eval"]["train_n"] > 0

    # The figures read the registry: the new head is drawn in its colour, under its label.
    code = (
        "import json, sys\n"
        "from guiding_nc.companions.plotting.collapse import plot_nc_metric_histories\n"
        "from guiding_nc.core import methods\n"
        f"rows = [json.loads(x) for x in open({str(run_dir / 'metrics.jsonl')!r})]\n"
        "fig = plot_nc_metric_histories({'fixed-half-tau': rows}, 5, x='epoch')\n"
        "line = [l for ax in fig.axes for l in ax.get_lines() if l.get_label() == 'fixed-half-tau'][0]\n"
        "print(line.get_color(), methods.label('fixed-half-tau'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "#123456" and "half tau" in out.stdout
