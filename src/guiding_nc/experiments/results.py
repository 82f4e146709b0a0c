"""The results store: how every experiment of the package writes and reads its files.

* :func:`results_dir` -- where an experiment's committed results live (``data/results/<name>``);
* :func:`csv_text` / :func:`read_csv` -- the one CSV writer and reader (``None`` is an empty
  cell and reads back as ``None``; numbers and booleans read back as numbers and booleans);
* :func:`load_results` -- a grid experiment's directory (``runs.csv``, ``curves.csv``,
  ``summary.json``, ``provenance.json`` and the per-step JSON files), as written by
  :mod:`guiding_nc.experiments.store`;
* :func:`run_key` -- the key of one run in those files (``config/variant/method/seed``), and
  :func:`group_key` without the seed;
* :func:`seed_bands` -- median and min-max over seeds of a curve, per group;
* :func:`provenance_caption` -- the one text every chapter prints under a result: command,
  commits, date, device, versions, compute.

Book: every experiment chapter reads its numbers through these.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..training.config import project_root
from ..training.tables import band_text, read_csv

__all__ = ["results_dir", "load_results", "run_key", "group_key",
           "seed_bands", "provenance_caption", "is_finite_number", "summary_cell", "format_cell"]


def results_dir(name: str) -> Path:
    """Where the committed results of experiment ``name`` live: ``data/results/<name>``."""
    return project_root() / "data" / "results" / name


def run_key(config: str, variant: str, method: str, seed: int) -> str:
    """The key of one run in an experiment's files: ``config/variant/method/seed``."""
    return f"{config}/{variant}/{method}/{seed}"


def group_key(config: str, variant: str, method: str) -> str:
    """The key of one (config, variant, method) group in ``summary.json``: its seeds pooled."""
    return f"{config}/{variant}/{method}"


def load_results(path) -> Dict[str, Any]:
    """Read an experiment's result directory back: ``runs`` (list of dicts), ``curves`` (list of
    dicts), ``summary``, ``provenance`` and, when present, ``step_accuracy``, ``step_loss`` and
    ``margins``."""
    path = Path(path)
    if not (path / "runs.csv").exists():
        raise FileNotFoundError(f"{path} holds no experiment results (no runs.csv); run "
                                f"`python -m guiding_nc.experiments.reproduce <experiment>` to produce them")
    out = {"runs": read_csv(path / "runs.csv"), "curves": read_csv(path / "curves.csv"),
           "summary": json.loads((path / "summary.json").read_text()),
           "provenance": json.loads((path / "provenance.json").read_text())}
    for name in ("step_accuracy", "step_loss", "margins"):
        if (path / f"{name}.json").exists():
            out[name] = json.loads((path / f"{name}.json").read_text())
    return out


def is_finite_number(v: Any) -> bool:
    """A real number (not a bool) that is finite: what a figure or a summary can use."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def seed_bands(curves: Sequence[Mapping[str, Any]], y: str, *, x: str = "step",
               group: Sequence[str] = ("config", "variant", "method"), where: Optional[Mapping[str, Any]] = None
               ) -> Dict[Tuple, Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Median and min-max over seeds of ``y`` against ``x``, per group.

    ``curves``: rows of ``curves.csv`` (one per evaluated epoch of every run).  ``where``
    keeps only rows whose keys equal the given values.  Returns ``{group values: (xs, median,
    lo, hi)}``; only the ``x`` values every seed of the group reached are kept, so a band never
    mixes a different number of seeds.
    """
    by: Dict[Tuple, Dict[Any, Dict[Any, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in curves:
        if where and any(r.get(k) != v for k, v in where.items()):
            continue
        if not is_finite_number(r.get(y)) or r.get(x) is None:
            continue
        by[tuple(r[g] for g in group)][r["seed"]][r[x]] = float(r[y])
    out = {}
    for key, seeds in by.items():
        common = sorted(set.intersection(*(set(s) for s in seeds.values())))
        vals = np.array([[seeds[s][t] for t in common] for s in seeds])  # (seeds, x)
        out[key] = (np.asarray(common, dtype=float), np.median(vals, 0), vals.min(0), vals.max(0))
    return out


def provenance_caption(prov: Mapping[str, Any]) -> str:
    """One block of plain text saying how a result file was produced."""
    git = prov.get("git") or {}
    commit = git.get("commit") or prov.get("git_commit") or "unknown"
    if git.get("dirty"):
        commit += " (with uncommitted changes)"
    lines = [f"command : {prov.get('command', '?')}"]
    if prov.get("run_commits"):
        legend = "  (-dirty: code changes not committed)" if any(c.endswith("-dirty") for c in prov["run_commits"]) else ""
        lines.append(f"runs at : commit {', '.join(prov['run_commits'])}{legend}")
        lines.append(f"files at: commit {commit}")
    else:
        lines.append(f"commit  : {commit}")
    lines += [
        f"date    : {prov.get('date', '?')}   status: {prov.get('status', '?')}",
        f"device  : {prov.get('device_name', prov.get('device', '?'))}, {prov.get('num_threads', '?')} thread(s)",
        f"versions: python {prov.get('python', '?')}, torch {prov.get('torch', '?')}, numpy {prov.get('numpy', '?')}",
    ]
    if prov.get("runs_wall_time_s") is not None:
        lines.append(f"compute : {float(prov['runs_wall_time_s']) / 60:.1f} min of training, summed over "
                     f"{prov.get('runs_done', '?')} of {prov.get('runs_total', '?')} runs")
    elif prov.get("wall_time_s") is not None:
        lines.append(f"wall    : {float(prov['wall_time_s']) / 60:.1f} min")
    invocations = prov.get("invocations") or []
    if len(invocations) > 1:  # the grid was run in slices: say which command made which runs
        for inv in invocations:
            lines.append(f"slice   : {len(inv['runs'])} runs by `{inv['command']}` at {inv['commit']} on "
                         f"{inv['device']}, {inv.get('num_threads') or '?'} thread(s), "
                         f"{str(inv.get('first_date', '?'))[:10]}")
    if prov.get("seeds") is not None:
        lines.append(f"seeds   : {prov['seeds']}")
    if prov.get("notes"):
        lines.append(f"notes   : {prov['notes']}")
    return "\n".join(lines)


def summary_cell(summary: Mapping[str, Any], group: str, key: str,
                 scale: float = 1.0) -> Optional[Tuple[float, float, float]]:
    """``(median, min, max)`` of ``key`` over the seeds of a ``summary.json`` group, times ``scale``
    (``None`` when the group does not have it)."""
    c = (summary.get(group) or {}).get(key)
    if not c or c.get("median") is None:
        return None
    return scale * c["median"], scale * c["min"], scale * c["max"]


def format_cell(cell: Optional[Tuple[float, float, float]], fmt: str = ".4g", unit: str = "") -> str:
    """``median [min, max]`` of a :func:`summary_cell` (:func:`~guiding_nc.training.tables.band_text`),
    ``–`` for none."""
    return band_text(*(cell or (None,)), fmt=fmt, unit=unit)

