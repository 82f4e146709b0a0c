"""The precomputed grid of small UFM runs behind the book's in-browser explorer (page 06).

Every run is :func:`guiding_nc.companions.explorer.runs.run_ufm` -- the trainer, settings and snapshots of
the live explorer -- on one CPU thread.  Of each run a few log-spaced snapshot steps are kept: the
evaluation metrics at that step and the coordinates of the centred, unit-Frobenius class means,
their nearest simplex ETF and the classifier rows in the fixed projection basis of
:func:`guiding_nc.companions.explorer.projection.projection_frames`.  :mod:`guiding_nc.companions.explorer_html`
turns the file into a self-contained page element that replays the runs offline.

The grid is the union of the *blocks* of a spec (``configs/explorer/grid.yaml``): each block is a product
over the axes C, d, n (samples per class), method, optimizer, tau, delta and seed, an axis it does not name
taking the spec's ``defaults``.  ``delta`` only changes the implicit method (:data:`DELTA_METHODS`); the
other methods are run once per remaining setting and stored with ``delta = null``.

Usage::

    python -m guiding_nc.experiments.explorer_grid --out data/explorer/grid.json.gz
    python -m guiding_nc.experiments.explorer_grid --quick --out /tmp/grid.json.gz   # seconds
    python -m guiding_nc.experiments.explorer_grid --dry-run                         # count the runs

The output is gzipped JSON, written atomically once every run is done; finished runs are
appended to ``<out>.partial.jsonl`` as they end, so a killed command continues where it stopped
when run again.  Like the other experiment commands, a full run refuses a working tree whose
code or configs differ from the last commit (``--allow-dirty`` to override; recorded).

File format (``format`` = :data:`FORMAT`): ``steps`` (S,) snapshot steps shared by every run;
``coord_scale``: coordinates are integers, ``value * coord_scale``; ``runs``: one dict per run
with its axis values, ``status``, ``wall_time_s``, ``loss_bound`` (the cross-entropy lower bound
for its C and tau), ``steps`` (the snapshot steps it reached: all of them unless it diverged),
``metrics`` ``{key: (S,)}`` rounded to 4 significant digits (``top1`` a fraction), ``dims``
(3 for C >= 4, else 2), ``means``/``etf``/``classifier`` flat ``(S, C, dims)`` and
``reference`` flat ``(C, dims)`` (the 2-D projection is the first two coordinates: the 3-D basis
extends the 2-D one), ``captured2``/``captured3`` (S,) (the share of ``||H~||_F^2`` in the plane
and in the 3-D view); ``provenance``: command, config, seeds, commit, versions, device, wall time.
"""
from __future__ import annotations

import copy
import dataclasses
import gzip
import hashlib
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..training.config import CONFIG_DIR, ConfigError, project_root
from .explorer.projection import projection_frames
from .explorer.runs import run_ufm
from .explorer.settings import ExplorerSettings, ExplorerSettingsError
from ..core.methods import METHOD_NAMES
from ..core.metric_formulas import cross_entropy_lower_bound
from ..training.optim import OPTIMIZER_NAMES
from ..training.provenance import atomic_write, atomic_write_text, collect_provenance, git_info

__all__ = ["FORMAT", "AXES", "DELTA_METHODS", "METRICS", "SPEC_PATH", "DEFAULT_OUT", "GridSpec",
           "load_spec", "snapshot_schedule", "record_run", "generate", "load_grid", "main"]

MODULE = "guiding_nc.experiments.explorer_grid"  # the command path (a shim)
FORMAT = "guiding_nc.explorer_grid/1"
SPEC_PATH = CONFIG_DIR / "explorer" / "grid.yaml"
DEFAULT_OUT = "data/explorer/grid.json.gz"
# The order of a run's key, and of the viewer's selectors.
AXES: Tuple[str, ...] = ("C", "d", "n", "optimizer", "tau", "delta", "seed", "method")
# Only the implicit head reads delta (methods.build_head); a run of another method is the same
# for every delta, so it is made once.
DELTA_METHODS: Tuple[str, ...] = ("implicit",)
# The recorded metrics kept per snapshot (the trainer's evaluation on all N features), plus the
# distance of the class means to their nearest ETF.
METRICS: Tuple[str, ...] = ("top1", "loss", "nc1", "nc3", "cosine_margin_mean", "cosine_margin_min",
                            "etf_distance")
COORD_SCALE = 10000  # coordinates (|x| <= 1) stored as integers: 1e-4 is far below a pixel
SIGNIFICANT = 4
_SPEC_KEYS = {"steps", "record_every", "snapshots", "optimizers", "defaults", "blocks"}
_OPT_KEYS = {"optimizer", "gain", "lr"}


def _fail(msg: str) -> None:
    raise ConfigError(msg)


# ------------------------------------------------------------------------------------ the spec
@dataclass
class GridSpec:
    """A validated grid spec (see the module docstring and ``configs/explorer/grid.yaml``).

    ``steps``: optimiser steps per run; ``record_every``: evaluation and snapshot interval after
    the first 20 steps; ``snapshots``: how many log-spaced snapshot steps are kept;
    ``optimizers``: ``{name: {"optimizer": ..., "gain" or "lr": ...}}``; ``defaults``:
    ``{axis: [values]}`` for every axis; ``blocks``: ``[(name, {axis: [values]})]``.
    """

    steps: int
    record_every: int
    snapshots: int
    optimizers: Dict[str, Dict[str, Any]]
    defaults: Dict[str, List[Any]]
    blocks: List[Tuple[str, Dict[str, List[Any]]]]
    source: str = ""
    quick: bool = False
    _runs: Optional[List[Dict[str, Any]]] = field(default=None, repr=False)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: str = "<mapping>", quick: bool = False) -> "GridSpec":
        """Validate ``raw`` (a parsed YAML spec; with ``quick``, its ``quick`` section overrides
        the top-level keys).  Raises :class:`~guiding_nc.training.config.ConfigError` naming the problem."""
        if not isinstance(raw, Mapping):
            _fail(f"{source}: a grid spec is a mapping of {', '.join(sorted(_SPEC_KEYS))}, got {type(raw).__name__}")
        raw = dict(raw)
        q = raw.pop("quick", None)
        if quick:
            if not isinstance(q, Mapping):
                _fail(f"{source}: --quick needs a `quick:` section in the spec")
            raw.update(q)
        unknown = sorted(set(raw) - _SPEC_KEYS)
        if unknown:
            _fail(f"{source}: unknown key(s) {', '.join(unknown)}; a grid spec has {', '.join(sorted(_SPEC_KEYS))}")
        missing = sorted(_SPEC_KEYS - set(raw))
        if missing:
            _fail(f"{source}: missing key(s) {', '.join(missing)}")
        ints = {}
        for key, low in (("steps", 1), ("record_every", 1), ("snapshots", 2)):
            v = raw[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                _fail(f"{source}: {key} must be an integer >= {low}, got {v!r}")
            ints[key] = int(v)
        opts = raw["optimizers"]
        if not isinstance(opts, Mapping) or not opts:
            _fail(f"{source}: optimizers must be a non-empty mapping name -> settings")
        optimizers: Dict[str, Dict[str, Any]] = {}
        for name, o in opts.items():
            o = dict(o or {})
            bad = sorted(set(o) - _OPT_KEYS)
            if bad:
                _fail(f"{source}: optimizer {name!r} has unknown key(s) {', '.join(bad)}; use "
                      f"{', '.join(sorted(_OPT_KEYS))}")
            o.setdefault("optimizer", str(name))
            if o["optimizer"] not in OPTIMIZER_NAMES:
                _fail(f"{source}: optimizer {name!r} is {o['optimizer']!r}, not one of {', '.join(OPTIMIZER_NAMES)}")
            optimizers[str(name)] = o
        defaults = _axis_values(raw["defaults"], f"{source}: defaults")
        absent = [a for a in AXES if a not in defaults]
        if absent:
            _fail(f"{source}: defaults must give every axis; missing {', '.join(absent)}")
        blocks_raw = raw["blocks"]
        if not isinstance(blocks_raw, list) or not blocks_raw:
            _fail(f"{source}: blocks must be a non-empty list")
        blocks = []
        for i, b in enumerate(blocks_raw):
            if not isinstance(b, Mapping):
                _fail(f"{source}: block {i} must be a mapping of axes, got {type(b).__name__}")
            b = dict(b)
            name = str(b.pop("name", f"block {i}"))
            blocks.append((name, _axis_values(b, f"{source}: block {name!r}")))
        spec = cls(optimizers=optimizers, defaults=defaults, blocks=blocks, source=source, quick=quick, **ints)
        spec.runs()  # every combination is checked now, before anything trains
        return spec

    def runs(self) -> List[Dict[str, Any]]:
        """Every run of the grid, each ``{axis: value}``, in block order, without repeats."""
        if self._runs is not None:
            return [dict(r) for r in self._runs]
        out: List[Dict[str, Any]] = []
        seen = set()
        for name, block in self.blocks:
            axes = {a: block.get(a, self.defaults[a]) for a in AXES}
            for values in itertools.product(*(axes[a] for a in AXES)):
                key = dict(zip(AXES, values))
                if key["method"] not in DELTA_METHODS:
                    key["delta"] = None
                rid = run_id(key)
                if rid in seen:
                    continue
                self._check_run(name, key)
                seen.add(rid)
                out.append(key)
        self._runs = out
        return [dict(r) for r in out]

    def _check_run(self, block: str, key: Dict[str, Any]) -> None:
        if key["optimizer"] not in self.optimizers:
            _fail(f"{self.source}: block {block!r} names optimizer {key['optimizer']!r}, which `optimizers` does "
                  f"not define ({', '.join(self.optimizers)})")
        try:
            self.settings(key)
        except ExplorerSettingsError as exc:
            _fail(f"{self.source}: block {block!r}, run {describe(key)}: {exc}")

    def settings(self, key: Mapping[str, Any]) -> ExplorerSettings:
        """The :class:`~guiding_nc.companions.explorer.settings.ExplorerSettings` of one run (one CPU thread)."""
        o = self.optimizers[key["optimizer"]]
        delta = key["delta"] if key["delta"] is not None else _first_delta(self.defaults["delta"])
        extra = {k: float(o[k]) for k in ("gain", "lr") if k in o}
        return ExplorerSettings(C=int(key["C"]), d=int(key["d"]), N=int(key["n"]) * int(key["C"]),
                                method=key["method"], tau=float(key["tau"]), delta=float(delta),
                                optimizer=o["optimizer"], steps=self.steps, seed=int(key["seed"]),
                                snapshot_every=self.record_every, eval_every=self.record_every, device="cpu",
                                num_threads=1, **extra)

    def snapshot_steps(self) -> List[int]:
        return snapshot_schedule(self.steps, self.snapshots, self.record_every)

    def axes(self) -> Dict[str, List[Any]]:
        """The values each axis takes somewhere in the grid, sorted (``delta`` without ``None``)."""
        runs = self.runs()
        out = {}
        for a in AXES:
            vals = {r[a] for r in runs if r[a] is not None}
            out[a] = [m for m in METHOD_NAMES if m in vals] if a == "method" else sorted(vals, key=_sort_key)
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"steps": self.steps, "record_every": self.record_every, "snapshots": self.snapshots,
                "optimizers": copy.deepcopy(self.optimizers), "defaults": copy.deepcopy(self.defaults),
                "blocks": [dict(name=n, **copy.deepcopy(b)) for n, b in self.blocks], "quick": self.quick,
                "source": self.source}

    def digest(self) -> str:
        """A hash of everything that decides what the runs compute (not where the spec came from)."""
        d = self.to_dict()
        d.pop("source")
        d.pop("quick")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _first_delta(values: Sequence[Any]) -> float:
    return float(values[0])


def _sort_key(v: Any):
    return (0, float(v)) if isinstance(v, (int, float)) else (1, str(v))


def _axis_values(raw: Any, where: str) -> Dict[str, List[Any]]:
    """``{axis: [values]}`` checked for names and types (a scalar means a one-value list)."""
    if not isinstance(raw, Mapping):
        _fail(f"{where} must be a mapping of axes to lists of values, got {type(raw).__name__}")
    out: Dict[str, List[Any]] = {}
    for axis, vals in raw.items():
        if axis not in AXES:
            _fail(f"{where}: unknown axis {axis!r}; axes are {', '.join(AXES)}")
        vals = list(vals) if isinstance(vals, (list, tuple)) else [vals]
        if not vals:
            _fail(f"{where}: axis {axis} has no values")
        for v in vals:
            if axis in ("C", "d", "n", "seed"):
                if isinstance(v, bool) or not isinstance(v, int):
                    _fail(f"{where}: {axis} values must be integers, got {v!r}")
            elif axis in ("tau", "delta"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    _fail(f"{where}: {axis} values must be numbers > 0, got {v!r}")
            elif axis == "method" and v not in METHOD_NAMES:
                _fail(f"{where}: unknown method {v!r}; choose from {', '.join(METHOD_NAMES)}")
            elif axis == "optimizer" and not isinstance(v, str):
                _fail(f"{where}: optimizer values are names of `optimizers`, got {v!r}")
        if len(set(map(str, vals))) != len(vals):
            _fail(f"{where}: axis {axis} repeats a value: {vals}")
        out[axis] = [float(v) if axis in ("tau", "delta") else v for v in vals]
    return out


def load_spec(path: Optional[os.PathLike] = None, *, quick: bool = False) -> GridSpec:
    """The grid spec at ``path`` (default :data:`SPEC_PATH`); ``quick`` takes its ``quick`` section."""
    import yaml

    p = Path(path) if path is not None else SPEC_PATH
    if not p.is_file():
        _fail(f"no grid spec at {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        _fail(f"{p}: not valid YAML ({type(exc).__name__})")
    try:
        shown = str(p.relative_to(project_root()))
    except ValueError:
        shown = str(p)
    return GridSpec.from_mapping(raw, source=shown, quick=quick)


def run_id(key: Mapping[str, Any]) -> str:
    """A run's key as text, ``C|d|n|optimizer|tau|delta|seed|method`` (``-`` for no delta)."""
    parts = []
    for a in AXES:
        v = key[a]
        parts.append("-" if v is None else (repr(float(v)) if a in ("tau", "delta") else str(v)))
    return "|".join(parts)


def describe(key: Mapping[str, Any]) -> str:
    parts = [f"{a}={key[a]}" for a in AXES if key.get(a) is not None]
    return ", ".join(parts)


def snapshot_schedule(steps: int, count: int, every: int, early: int = 20) -> List[int]:
    """``count`` steps in ``[0, steps]``, evenly spaced in ``log(1 + step)``, among those the explorer
    records (every step up to ``early``, then the multiples of ``every``, and the last); 0 and
    ``steps`` included.  Fewer when fewer steps are recorded."""
    recorded = np.asarray(sorted(set(range(0, min(early, steps) + 1)) | set(range(0, steps + 1, every)) | {steps}))
    if count >= len(recorded):
        return [int(s) for s in recorded]
    free = np.ones(len(recorded), dtype=bool)
    chosen = []
    for u in np.linspace(0.0, math.log1p(steps), count):
        # the nearest recorded step not taken yet (early targets crowd together below step 1)
        dist = np.where(free, np.abs(np.log1p(recorded) - u), np.inf)
        i = int(np.argmin(dist))
        free[i] = False
        chosen.append(int(recorded[i]))
    chosen[-1] = steps  # the last target is log1p(steps) itself, so this only guards rounding
    return sorted(set(chosen))


# ------------------------------------------------------------------------------------ one run
def _sig(x: float) -> Optional[float]:
    x = float(x)
    return float(f"{x:.{SIGNIFICANT}g}") if math.isfinite(x) else None


def _coords(a: np.ndarray) -> List[int]:
    return [int(v) for v in np.round(np.asarray(a, dtype=np.float64) * COORD_SCALE).ravel()]


def record_run(spec: GridSpec, key: Mapping[str, Any]) -> Dict[str, Any]:
    """Train one run of the grid and return its compact record (see the module docstring).

    A run that diverges (a non-finite loss, or non-finite features that a solve or a metric
    refuses) keeps the snapshots it reached, with ``status = "diverged: <error>"``; any other
    error of the training is kept the same way as ``"failed: <error>"``, so one bad setting
    never stops the grid (the provenance counts them).
    """
    import torch

    from ..training.trainer import NonFiniteError

    settings = spec.settings(key)
    wanted = spec.snapshot_steps()
    last: List[Any] = []
    t0 = time.perf_counter()
    status = "completed"
    try:
        # the latest partial result, so a diverged run keeps the snapshots it reached
        result = run_ufm(settings, on_update=lambda r: last.__setitem__(slice(None), [r]),
                         update_every=spec.record_every)
    except Exception as exc:  # noqa: BLE001 - recorded in the run's status, counted in the provenance
        what = "diverged" if isinstance(exc, (NonFiniteError, torch.linalg.LinAlgError)) else "failed"
        status = f"{what}: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
        result = last[0] if last else None
    wall = time.perf_counter() - t0
    rec: Dict[str, Any] = {**{a: key[a] for a in AXES}, "N": int(key["n"]) * int(key["C"]), "status": status,
                           "wall_time_s": round(wall, 3),
                           "loss_bound": _sig(cross_entropy_lower_bound(int(key["C"]), float(key["tau"])))}
    C = int(key["C"])
    dims = 3 if C >= 4 else 2
    rec["dims"] = dims
    if result is None or len(result.snapshot_steps) == 0:
        rec.update(steps=[], metrics={k: [] for k in METRICS}, means=[], etf=[], classifier=[], reference=[],
                   captured2=[], captured3=[])
        return rec
    # Snapshots with finite coordinates and an evaluation at the same step; the projection basis
    # comes from the last of them (a diverged run's last snapshot may hold NaN).
    evals = {int(s): i for i, s in enumerate(result.eval_steps)}
    ok = np.asarray([i for i, s in enumerate(result.snapshot_steps)
                     if int(s) in evals and all(np.isfinite(a[i]).all()
                                                for a in (result.means, result.etf, result.classifier))],
                    dtype=np.int64)
    result = dataclasses.replace(result, snapshot_steps=result.snapshot_steps[ok], means=result.means[ok],
                                 etf=result.etf[ok], classifier=result.classifier[ok],
                                 etf_distance=result.etf_distance[ok])
    have = {int(s): i for i, s in enumerate(result.snapshot_steps)}
    idx = [have[s] for s in wanted if s in have]
    if len(idx) < len(wanted) and status == "completed":
        missing = [s for s in wanted if s not in have]
        raise RuntimeError(f"run {describe(key)} recorded no snapshot at step(s) {missing}")
    if not idx:
        rec["status"] = status if status != "completed" else "failed: no finite snapshot"
        rec.update(steps=[], metrics={k: [] for k in METRICS}, means=[], etf=[], classifier=[], reference=[],
                   captured2=[], captured3=[])
        return rec
    f = projection_frames(result, dims)
    f2 = projection_frames(result, 2) if dims == 3 else f
    if dims == 3 and not np.allclose(f.means[:, :, :2], f2.means, atol=1e-9):
        raise RuntimeError("the 3-D projection basis does not extend the 2-D one")  # the viewer relies on it
    steps = [int(result.snapshot_steps[i]) for i in idx]
    metrics = {}
    for k in METRICS:
        if k == "etf_distance":
            metrics[k] = [_sig(result.etf_distance[i]) for i in idx]
        else:
            metrics[k] = [_sig(result.metrics[k][evals[s]]) for s in steps]
    rec.update(steps=steps, metrics=metrics, means=_coords(f.means[idx]), etf=_coords(f.etf[idx]),
               classifier=_coords(f.classifier[idx]), reference=_coords(f.reference),
               captured2=[_sig(f2.captured[i]) for i in idx],
               captured3=[_sig(f.captured[i]) for i in idx] if dims == 3 else [])
    return rec


# ------------------------------------------------------------------------------------ the grid
def _partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def _read_partial(path: Path, spec: GridSpec) -> Tuple[Dict[str, Dict[str, Any]], List[Dict[str, Any]]]:
    """Finished runs of an earlier, killed command with the same spec: ``({run id: record}, [git])``."""
    if not path.exists():
        return {}, []
    done: Dict[str, Dict[str, Any]] = {}
    gits: List[Dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    if not lines:
        return {}, []
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = {}
    if header.get("format") != FORMAT + "-partial" or header.get("spec") != spec.digest():
        _fail(f"{path} holds finished runs of another grid spec; delete it or choose another --out")
    good = [lines[0]]
    for line in lines[1:]:
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by the kill: that run is made again
        good.append(line)
        done[item["id"]] = item["run"]
        if item.get("git") not in gits:
            gits.append(item.get("git"))
    if len(good) < len(lines):  # drop the cut line, so the runs appended next stay readable
        atomic_write_text(path, "\n".join(good) + "\n")
    return done, gits


def _append(path: Path, item: Dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(item, separators=(",", ":")) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def generate(spec: GridSpec, out: os.PathLike, *, progress: bool = True, allow_dirty: bool = False,
             overwrite: bool = False, argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run every run of ``spec`` (skipping those a killed earlier command finished) and write the
    gzipped grid to ``out`` atomically; returns the grid as :func:`load_grid` reads it.

    An existing ``out`` is refused unless ``overwrite`` (and is replaced only at the end, so a
    failure never costs it).  A spec that is not a quick one refuses a working tree whose code
    differs from its commit unless ``allow_dirty`` or ``GUIDING_NC_ALLOW_DIRTY=1``.
    """
    import torch
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() and not overwrite:
        _fail(f"{out} already exists; pass --overwrite to replace it (it is replaced only once every run is done)")
    if out.name.endswith(".partial.jsonl"):
        _fail(f"--out {out} is the name of a work file; choose another")
    allow_dirty = allow_dirty or os.environ.get("GUIDING_NC_ALLOW_DIRTY") == "1"
    git = git_info()
    if not spec.quick and not allow_dirty and git.get("dirty"):
        _fail("the source or configs differ from the last commit, so the grid could not name the code that made it: "
              "commit first, or pass --allow-dirty (recorded)")
    keys = spec.runs()
    if argv is None:
        argv = ["python", "-m", MODULE, "--out", str(out)] + (["--quick"] if spec.quick else [])
    partial = _partial_path(out)
    done, gits = _read_partial(partial, spec)
    if not partial.exists() or partial.stat().st_size == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        _append(partial, {"format": FORMAT + "-partial", "spec": spec.digest()})
    here = {"commit": git.get("commit"), "dirty": git.get("dirty")}
    if here not in gits:
        gits.append(here)
    start = time.time()
    threads = torch.get_num_threads()
    bar = tqdm(keys, desc="explorer grid", disable=not progress, dynamic_ncols=True)
    records: List[Dict[str, Any]] = []
    try:
        torch.set_num_threads(1)  # small matrices: one thread is fastest, and leaves the other cores free
        with threadpool_limits(limits=1):
            for key in bar:
                rid = run_id(key)
                if rid in done:
                    records.append(done[rid])
                    continue
                bar.set_postfix_str(describe(key), refresh=False)
                rec = record_run(spec, key)
                _append(partial, {"id": rid, "git": here, "run": rec})
                records.append(rec)
            num_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
        bar.close()
    seeds = sorted({int(k["seed"]) for k in keys})
    diverged = [r for r in records if r["status"].startswith("diverged")]
    failed = [r for r in records if r["status"].startswith("failed")]
    prov = collect_provenance(
        spec.to_dict(), seed=seeds, device="cpu", argv=argv,
        extra={"status": "completed", "wall_time_s": round(time.time() - start, 1),
               "run_time_s": round(sum(r["wall_time_s"] for r in records), 1),
               "runs_total": len(records), "runs_diverged": len(diverged), "runs_failed": len(failed),
               "resumed_runs": len(done),
               "commits": gits, "allow_dirty": bool(allow_dirty), "num_threads": num_threads,
               "spec_digest": spec.digest(), "trainer": "guiding_nc.companions.explorer.runs.run_ufm"})
    grid = {"format": FORMAT, "steps": spec.snapshot_steps(), "coord_scale": COORD_SCALE,
            "axes": spec.axes(), "methods": spec.axes()["method"], "delta_methods": list(DELTA_METHODS),
            "optimizers": spec.optimizers, "metrics": list(METRICS), "runs": records, "provenance": prov}
    _write_grid(out, grid)
    partial.unlink(missing_ok=True)
    return grid


def _write_grid(out: Path, grid: Dict[str, Any]) -> None:
    text = json.dumps(grid, separators=(",", ":"), allow_nan=False)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
            gz.write(text.encode("utf-8"))

    atomic_write(out, write)


def load_grid(path: os.PathLike) -> Dict[str, Any]:
    """Read a grid file (gzipped or plain JSON); a file that is not one is a one-line ``ValueError``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no explorer grid at {p}; make it with "
                                f"`python -m {MODULE} --out {p}`")
    data = p.read_bytes()
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        grid = json.loads(data.decode("utf-8"))
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p} is not a readable explorer grid ({type(exc).__name__})") from None
    if not isinstance(grid, dict) or grid.get("format") != FORMAT:
        found = grid.get("format") if isinstance(grid, dict) else type(grid).__name__
        raise ValueError(f"{p} is not an explorer grid of format {FORMAT} (found {found!r})")
    return grid


# ------------------------------------------------------------------------------------ command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..training.command_line import run_cli

    return run_cli(_main, argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    from ..training.command_line import OneLineParser

    words = list(sys.argv[1:] if argv is None else argv)
    parser = OneLineParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help=f"the grid file (default {DEFAULT_OUT}; with --quick, "
                                                    "runs/explorer/grid-quick.json.gz)")
    parser.add_argument("--config", default=None, help=f"grid spec (default {SPEC_PATH.name} in configs/explorer)")
    parser.add_argument("--quick", action="store_true", help="the spec's quick section: a handful of short runs")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (at the end)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="run although src/ or configs/ differ from the last commit (recorded)")
    parser.add_argument("--dry-run", action="store_true", help="count the runs of each block and exit")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(words)
    spec = load_spec(args.config, quick=args.quick)
    if args.dry_run:
        total = 0
        seen = set()
        for name, _ in spec.blocks:
            one = GridSpec(spec.steps, spec.record_every, spec.snapshots, spec.optimizers, spec.defaults,
                           [b for b in spec.blocks if b[0] == name], spec.source, spec.quick)
            new = [run_id(k) for k in one.runs() if run_id(k) not in seen]
            seen.update(new)
            total += len(new)
            print(f"{name:<24} {len(new):4d} new runs")
        print(f"{'total':<24} {total:4d} runs of {spec.steps} steps, {len(spec.snapshot_steps())} snapshots each: "
              f"{spec.snapshot_steps()}")
        return 0
    out = Path(args.out) if args.out else project_root() / ("runs/explorer/grid-quick.json.gz" if args.quick
                                                            else DEFAULT_OUT)
    grid = generate(spec, out, progress=not args.no_progress, allow_dirty=args.allow_dirty,
                    overwrite=args.overwrite, argv=["python", "-m", MODULE, *words])
    prov = grid["provenance"]
    size = out.stat().st_size
    print(f"{prov['runs_total']} runs ({prov['runs_diverged']} diverged, {prov['runs_failed']} failed) in "
          f"{prov['wall_time_s']:.0f} s; saved {out} ({size / 2 ** 20:.2f} MiB)")
    for r in grid["runs"]:
        if r["status"].startswith("failed"):
            print(f"failed: {describe(r)}: {r['status']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
