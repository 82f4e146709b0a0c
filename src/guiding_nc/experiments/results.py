"""The results store: how every experiment of the package writes and reads its files.

* :func:`results_dir` -- where an experiment's committed results live (``data/results/<name>``);
* :func:`csv_text` / :func:`read_csv` -- the one CSV writer and reader (``None`` is an empty
  cell and reads back as ``None``; numbers and booleans read back as numbers and booleans);
* :func:`load_results` -- a grid experiment's directory (``runs.csv``, ``curves.csv``,
  ``summary.json``, ``provenance.json`` and the per-step JSON files), as written by
  :mod:`guiding_nc.experiments.store`, read as its last complete write left it
  (:func:`read_result_files`: under a shared lock, through the journal of a write a crash
  interrupted, every file checked, a damaged one named with how to restore it);
* :func:`run_key` -- the key of one run in those files (``config/variant/method/seed``), and
  :func:`group_key` without the seed;
* :func:`summarize_records` -- ``summary.json``: median and min-max over seeds per group and metric,
  from ``runs.csv`` (a value that is not a finite number is a missing one, never a number);
* :func:`seed_bands` -- median and min-max over seeds of a curve, per group;
* :func:`provenance_caption` -- the one text every chapter prints under a result: command,
  commits, date, device, versions, compute.

Book: every experiment chapter reads its numbers through these.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..training.config import ConfigError, check_name, project_root
from ..training.provenance import commit_label, committed_file
from ..training.tables import band_text, parse_value, seed_summary

__all__ = ["RESULT_FILES", "SUMMARY_KEYS", "summarize_records", "results_dir", "read_result_files", "load_results",
           "run_key", "group_key", "seed_bands", "provenance_caption", "is_finite_number", "summary_cell", "format_cell"]

#: The files of a grid experiment's result directory, in the order they are written.
RESULT_FILES = ("runs.csv", "curves.csv", "step_accuracy.json", "step_loss.json", "margins.json", "summary.json",
                "provenance.json")
_LEAD = ("config", "variant", "method", "seed")


def results_dir(name: str) -> Path:
    """Where the committed results of experiment ``name`` live: ``data/results/<name>``."""
    return project_root() / "data" / "results" / check_name("experiment name", name)


def run_key(config: str, variant: str, method: str, seed: int) -> str:
    """The key of one run in an experiment's files: ``config/variant/method/seed``."""
    return f"{config}/{variant}/{method}/{seed}"


def group_key(config: str, variant: str, method: str) -> str:
    """The key of one (config, variant, method) group in ``summary.json``: its seeds pooled."""
    return f"{config}/{variant}/{method}"


class DirLock:
    """An advisory ``fcntl.flock`` on a directory (no lock file left among the results) for a
    ``with`` block, released when it ends.  ``mode``:

    * ``"shared"`` -- readers (:func:`load_results`): a writer never changes the files mid-read;
    * ``"exclusive"`` -- a writer, blocking (:func:`guiding_nc.experiments.store.write_merged`);
      where the file system refuses the lock it warns: slices must then not run at the same time;
    * ``"try"`` -- one run's directory, exclusive and not blocking: ``as`` gives ``True`` when this
      process holds it, ``False`` when another does (it is training that run).

    A no-op (``True`` for ``"try"``) where ``fcntl`` does not exist or the lock is refused.
    """

    def __init__(self, path: Path, mode: str = "exclusive"):
        if mode not in ("shared", "exclusive", "try"):
            raise ValueError(f"mode must be 'shared', 'exclusive' or 'try', got {mode!r}")
        self.path, self.mode, self.fd = Path(path), mode, None

    def __enter__(self):
        import os

        try:
            import fcntl
        except ImportError:
            return True if self.mode == "try" else self
        if self.mode == "try":
            self.path.mkdir(parents=True, exist_ok=True)
        flags = {"shared": fcntl.LOCK_SH, "exclusive": fcntl.LOCK_EX, "try": fcntl.LOCK_EX | fcntl.LOCK_NB}[self.mode]
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self.fd, flags)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False
        except OSError as exc:
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
            if self.mode == "exclusive":
                import warnings

                warnings.warn(f"cannot lock {self.path} ({exc}); do not run slices into it at the same time",
                              stacklevel=2)
        return True if self.mode == "try" else self

    def __exit__(self, *exc):
        if self.fd is not None:
            import fcntl
            import os

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        return False


def _damaged(path: Path, what: str) -> ConfigError:
    shown = str(path)
    return ConfigError(f"{shown} is damaged ({what}): restore it (e.g. git checkout -- {shown}), or delete it and "
                       "rerun the command that wrote the folder with --replace")


def _read_json(path: Path, shown: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _damaged(shown, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _damaged(shown, f"not valid JSON: {exc.msg}, line {exc.lineno} column {exc.colno}") from None


def _read_rows(path: Path, shown: Path, lead: Sequence[str]) -> list:
    """A CSV file of :func:`~guiding_nc.training.tables.csv_text`, every row checked: as many cells
    as the header, and its ``lead`` columns (the run's config, variant, method, seed) filled."""
    import csv

    rows = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [k for k in lead if k not in (reader.fieldnames or [])]
            if missing:
                raise _damaged(shown, f"its header has no {', '.join(missing)} column")
            for r in reader:
                line = reader.line_num
                if None in r:
                    raise _damaged(shown, f"line {line} has more cells than the header")
                if any(v is None for v in r.values()):
                    raise _damaged(shown, f"line {line} has fewer cells than the header")
                row = {k: parse_value(v) for k, v in r.items()}
                bad = [k for k in lead if row.get(k) is None or isinstance(row.get(k), bool)
                       or (k == "seed" and not (isinstance(row[k], int) and row[k] >= 0))]
                if bad:
                    raise _damaged(shown, f"line {line} has no valid {', '.join(bad)}")
                rows.append(row)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise _damaged(shown, f"not CSV: {exc}") from None
    return rows


def read_result_files(path, *, lock: bool = True, names: Sequence[str] = RESULT_FILES) -> Dict[str, Any]:
    """Every result file in ``path`` that is there, parsed: ``{"runs", "curves", "summary",
    "provenance", "step_accuracy", "step_loss", "margins"}`` (``None`` for a file that is not).

    The directory is read as its last complete write left it
    (:func:`~guiding_nc.training.provenance.committed_file`), under a shared lock unless ``lock`` is
    false (the caller holds the exclusive one).  ``names``: the files to read (the others are
    ``None``).  A damaged file -- rows without their config,
    variant, method or seed, cells beyond the header, truncated JSON -- is a one-line
    :class:`~guiding_nc.training.config.ConfigError` naming it and how to restore it.
    """
    path = Path(path)
    out: Dict[str, Any] = {}
    with (DirLock(path, "shared") if lock and path.is_dir() else nullcontext()):
        for name in RESULT_FILES:
            key = name.rsplit(".", 1)[0]
            where = committed_file(path, name)
            if name not in names or not where.is_file():
                out[key] = None
            elif name == "runs.csv":
                out[key] = _read_rows(where, path / name, _LEAD)
            elif name == "curves.csv":
                out[key] = _read_rows(where, path / name, _LEAD)
            else:
                out[key] = _read_json(where, path / name)
                if not isinstance(out[key], dict):
                    raise _damaged(path / name, "not a JSON object")
    return out


def load_results(path) -> Dict[str, Any]:
    """Read an experiment's result directory back: ``runs`` (list of dicts), ``curves`` (list of
    dicts), ``summary``, ``provenance`` and, when present, ``step_accuracy``, ``step_loss`` and
    ``margins`` (:func:`read_result_files`).  A missing file is a ``FileNotFoundError`` naming it
    and how to make it again."""
    path = Path(path)
    if not (path / "runs.csv").exists() and not committed_file(path, "runs.csv").exists():
        raise FileNotFoundError(f"{path} holds no experiment results (no runs.csv); run "
                                f"`python -m guiding_nc.experiments.reproduce <experiment>` to produce them")
    files = read_result_files(path)
    if files["summary"] is None and files["runs"] is not None:
        files["summary"] = json.loads(json.dumps(summarize_records(files["runs"])))  # derived: rebuilt
    for name in ("runs.csv", "curves.csv", "summary.json", "provenance.json"):
        if files[name.rsplit(".", 1)[0]] is None:
            shown = str(path / name)
            raise FileNotFoundError(f"{shown} is missing: restore it (e.g. git checkout -- {shown}), or rerun the "
                                    "command that wrote the folder (it rebuilds it)")
    return {k: v for k, v in files.items() if v is not None or k in ("runs", "curves", "summary", "provenance")}


# Run-level numbers that summary.json aggregates over seeds (when a run has them).
SUMMARY_KEYS = ("train_loss", "train_top1", "test_top1", "train_top5", "test_top5", "train_nc1", "train_nc2",
                "train_nc3", "train_equinorm", "train_ncc_mismatch", "train_cosine_margin_mean",
                "train_cosine_margin_min", "test_nc1", "test_ncc_mismatch", "steps_to_fit", "steps_to_loss",
                "steps_to_nc1", "steps_to_nc3", "epochs_to_fit", "train_top1_step0", "train_dead_units", "train_dead_weight", "wall_time_s",
                "time_step_ms", "time_backbone_ms", "time_etf_forward_ms", "time_ddn_backward_ms", "peak_mem_gb")


def summarize_records(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """``{"config/variant/method": {metric: {"median", "min", "max", "n", "values"}}}`` over seeds."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group_key(r["config"], r["variant"], r["method"]), []).append(r)
    out: Dict[str, Any] = {}
    for g, rs in groups.items():
        cell: Dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
        keys: List[str] = []
        for r in rs:
            keys += [k for k in r if (k in SUMMARY_KEYS or "@" in k) and k not in keys]
        for k in keys:
            vals = [float(r[k]) for r in rs if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                    and math.isfinite(float(r[k]))]
            missing = len(rs) - len(vals)
            steps = k.startswith("steps_to_")
            if steps:
                # Runs that were measured and never got there count as missing; runs where the
                # measure does not apply (mini-batch training) leave no cell at all.
                flag = "fitted" if k == "steps_to_fit" else "reached_" + k[len("steps_to_"):]
                never = sum(r.get(flag) is False for r in rs)
                if not vals and not never:
                    continue
                missing = never
            if vals or steps:
                cell[k] = seed_summary(vals, missing=missing)
        out[g] = cell
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


def _date_text(date: Any, full: bool = False) -> str:
    """A recorded date as text (the day only unless ``full``), or that none was recorded."""
    if not date:
        return "date not recorded"
    return str(date) if full else str(date)[:10]


def provenance_caption(prov: Mapping[str, Any]) -> str:
    """One block of plain text saying how a result file was produced."""
    commit = commit_label(prov).replace("-dirty", " (with uncommitted changes)")
    lines = [f"command : {prov.get('command', '?')}"]
    if prov.get("run_commits"):
        legend = "  (-dirty: code changes not committed)" if any(c.endswith("-dirty") for c in prov["run_commits"]) else ""
        lines.append(f"runs at : commit {', '.join(prov['run_commits'])}{legend}")
        lines.append(f"files at: commit {commit}")
    else:
        lines.append(f"commit  : {commit}")
    lines += [
        f"date    : {_date_text(prov.get('date'), full=True)}   status: {prov.get('status', '?')}",
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
                         f"{_date_text(inv.get('first_date') or inv.get('last_date'))}")
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


def report_epoch_key(summary: Mapping[str, Any], config: str, metric: str, which: str = "last") -> Optional[str]:
    """The ``metric@epoch`` key of the last (``which="last"``) or first (``"first"``) report epoch
    that a config's groups in ``summary.json`` hold, e.g. ``"test_top1@30"``; ``None`` if none."""
    if which not in ("last", "first"):
        raise ValueError(f"which must be 'last' or 'first', got {which!r}")
    keys = {k for g, cell in summary.items() if g.startswith(config + "/") for k in cell
            if k.startswith(metric + "@")}
    if not keys:
        return None
    pick = max if which == "last" else min
    return pick(keys, key=lambda k: int(k.split("@")[1]))
