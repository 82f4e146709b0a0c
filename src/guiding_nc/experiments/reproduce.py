"""Run one of the paper's experiments (a grid of training runs) and write tidy results.

An *experiment* is a YAML file in ``configs/experiments/`` naming the training configs, the
methods, the seeds and, optionally, *variants* (named sets of overrides such as ``ddn: none``
or ``delta: 1e-5``) to compare; it also says how to shrink everything in quick mode.  Every
run goes through :func:`guiding_nc.training.trainer.train_run` with the same settings except the ones
the experiment varies, so the comparison is one switch at a time.

Usage::

    python -m guiding_nc.experiments.reproduce ufm10                 # full mode (the paper's sizes)
    python -m guiding_nc.experiments.reproduce ufm10 --quick         # seconds, for CI
    python -m guiding_nc.experiments.reproduce real_offline --seeds 0 1 --device cuda
    python -m guiding_nc.experiments.reproduce --list

Output directory (default ``data/results/<experiment>`` in full mode), written atomically after
every run so an interrupted experiment keeps everything it finished:

* ``runs.csv``: one row per run (final metrics, snapshots at the report epochs, steps to
  100% train accuracy, wall time, peak memory);
* ``curves.csv``: one row per evaluated epoch of every run (loss, top-1, NC1-NC4, equinorm,
  cosine margins, per-step time split);
* ``step_accuracy.json``: exact per-step train accuracy of every full-batch run (UFMs);
* ``margins.json``: final per-sample cosine margins (train split) of every run, if asked;
* ``summary.json``: median and min-max over seeds per (config, variant, method) and metric;
* ``provenance.json``: exact command, experiment spec, mode, seeds, git commit, date, device,
  library versions, wall time and status.

Each run also keeps its own directory under ``--work-dir`` (checkpoints, the trainer's own
files and a ``record.json`` once it finished); rerunning the same command continues a killed
run from its last checkpoint and skips finished ones.  A grid too long for one sitting can be
run in slices (``--configs``/``--seeds``/``--methods``) with the same ``--out`` and ``--work-dir``:
the files then hold every finished run of the whole grid whose settings match, the provenance
lists each slice's command under ``invocations`` (and each run's command, commit and settings hash
under ``run_sources``), and its status is ``partial`` until the grid is complete.  Runs the result
files already hold are kept and not trained again even when their work directory is not here
(committed results made in another clone): a slice run from a fresh clone adds to them.  Slices
may also run at the same time (one process per core, say): each write takes a lock on ``--out``
and re-reads the work directory under it, so the last write holds every run finished by then.
Book: the experiment chapters.

One concept, kept in one module although it passes 800 lines: the grid runner, its slices, locks
and merging of finished runs are one mechanism.
"""
from __future__ import annotations

import copy
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from ..training.provenance import (atomic_write_json, atomic_write_text, collect_provenance, local_command, local_path,
                          to_jsonable)
from ..training.config import CONFIG_DIR, ConfigError, load_config, project_root
from ..training.trainer import train_run
from .measures import first_fit_step, steps_to_thresholds
from .results import csv_text, group_key, load_results, results_dir, run_key

__all__ = ["ExperimentSpec", "EXPERIMENT_DIR", "results_dir", "list_experiments", "load_experiment", "run_experiment",
           "load_results", "summarize_records", "stale_runs", "main"]

MODULE = "guiding_nc.experiments.reproduce"
EXPERIMENT_DIR = CONFIG_DIR / "experiments"
REPO_ROOT = project_root()
# Run-level numbers that summary.json aggregates over seeds (when a run has them).
SUMMARY_KEYS = ("train_loss", "train_top1", "test_top1", "train_top5", "test_top5", "train_nc1", "train_nc2",
                "train_nc3", "train_equinorm", "train_ncc_mismatch", "train_cosine_margin_mean",
                "train_cosine_margin_min", "test_nc1", "test_ncc_mismatch", "steps_to_fit", "steps_to_loss",
                "steps_to_nc1", "steps_to_nc3", "epochs_to_fit", "train_top1_step0", "train_dead_units", "train_dead_weight", "wall_time_s",
                "time_step_ms", "time_backbone_ms", "time_etf_forward_ms", "time_ddn_backward_ms", "peak_mem_gb")
_SPEC_KEYS = {"description", "paper", "configs", "methods", "seeds", "overrides", "config_overrides", "variants",
              "quick", "record_step_accuracy", "record_step_losses", "thresholds", "save_margins", "report_epochs",
              "notes"}

_QUICK_KEYS = {"configs", "seeds", "overrides", "variants", "config_overrides"}


@dataclass
class ExperimentSpec:
    """What to run: ``configs x variants x methods x seeds`` training runs.

    ``overrides`` apply to every run, ``config_overrides`` to the runs of one config;
    ``variants`` maps a name to ``{"methods": [...], "overrides": {...}, "config_overrides":
    {config: {...}}}`` (each optional; the last for a setting that differs by config, such as a
    learning rate chosen per size); with none given there is one variant, ``"default"``.
    ``thresholds`` fixes, before the runs, the thresholds of the steps-to-threshold measures
    (:func:`steps_to_thresholds`).  ``quick`` holds the quick-mode changes:
    fewer ``configs``/``seeds``/``variants``, extra ``overrides`` for all runs and
    ``config_overrides`` per config (e.g. a shrunken UFM).  ``notes`` is free text (why the
    budget differs from the paper's, say) copied into the provenance.
    """

    name: str
    description: str = ""
    paper: str = ""
    configs: List[str] = field(default_factory=list)
    methods: List[str] = field(default_factory=lambda: ["standard", "fixed", "implicit"])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    overrides: Dict[str, Any] = field(default_factory=dict)
    config_overrides: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    variants: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {"default": {}})
    quick: Dict[str, Any] = field(default_factory=dict)
    # Overrides given on the command line (or to run_experiment): applied after everything the
    # experiment sets, per config and per variant included. Not an experiment-file key.
    cli_overrides: Dict[str, Any] = field(default_factory=dict)
    record_step_accuracy: bool = False
    record_step_losses: bool = False
    thresholds: Dict[str, float] = field(default_factory=dict)
    save_margins: bool = False
    report_epochs: Optional[List[int]] = None
    notes: str = ""

    def quick_spec(self) -> "ExperimentSpec":
        """The quick-mode version (CI): the ``quick`` section applied."""
        q = self.quick
        spec = copy.deepcopy(self)
        spec.configs = list(q.get("configs", self.configs))
        spec.seeds = [int(s) for s in q.get("seeds", self.seeds[:2])]
        if "variants" in q:
            spec.variants = {k: v for k, v in self.variants.items() if k in q["variants"]}
        spec.overrides = {**self.overrides, **q.get("overrides", {})}
        quick_cfg = q.get("config_overrides", {})
        spec.config_overrides = {c: {**self.config_overrides.get(c, {}), **quick_cfg.get(c, {})}
                                 for c in set(self.config_overrides) | set(quick_cfg)}
        spec.quick = {}
        return spec

    def jobs(self) -> List[Dict[str, Any]]:
        """Every run as ``{"config", "variant", "method", "seed", "overrides"}``."""
        out = []
        per_config = self.config_overrides
        for config in self.configs:
            cfg_ov = dict(per_config.get(config, {}))
            # `seeds` in a config's overrides narrows the experiment's seeds for that config.
            cfg_seeds = cfg_ov.pop("seeds", None)
            seeds = [s for s in self.seeds if cfg_seeds is None or s in cfg_seeds]
            for variant, v in self.variants.items():
                var_cfg_ov = (v.get("config_overrides") or {}).get(config, {})
                for method in v.get("methods", self.methods):
                    for seed in seeds:
                        # Precedence: command line > variant per config > variant > experiment per
                        # config > experiment > the config file.
                        ov = {**self.overrides, **cfg_ov, **v.get("overrides", {}), **var_cfg_ov,
                              **self.cli_overrides}
                        out.append({"config": config, "variant": variant, "method": method, "seed": int(seed),
                                    "overrides": ov})
        return out


def list_experiments() -> List[str]:
    return sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))


def load_experiment(name_or_path) -> ExperimentSpec:
    """An :class:`ExperimentSpec` from ``configs/experiments/<name>.yaml`` or a path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = EXPERIMENT_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"no experiment {str(name_or_path)!r}: {path} does not exist. "
                          f"Known experiments: {', '.join(list_experiments())}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an experiment file must be a mapping")
    unknown = sorted(set(data) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown experiment key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_SPEC_KEYS))}")
    bad_quick = sorted(set(data.get("quick", {}) or {}) - _QUICK_KEYS)
    if bad_quick:
        raise ConfigError(f"{path}: unknown quick key(s) {', '.join(bad_quick)}; valid: {', '.join(sorted(_QUICK_KEYS))}")
    if not data.get("configs"):
        raise ConfigError(f"{path}: an experiment needs a non-empty 'configs' list")
    from ..training.config import check_name

    for c in data["configs"]:
        check_name(f"{path.name}: config", c)
    data.setdefault("variants", {"default": {}})
    for vname, v in data["variants"].items():
        check_name(f"{path.name}: variant", vname)
        if not isinstance(v, dict) or set(v) - {"methods", "overrides", "config_overrides"}:
            raise ConfigError(f"{path}: variant {vname!r} must be a mapping with 'methods', 'overrides' and/or "
                              "'config_overrides' (per config)")
    data["quick"] = data.get("quick") or {}
    spec = ExperimentSpec(name=path.stem, **data)
    return spec


def _run_config(spec: ExperimentSpec, job: Dict[str, Any], run_dir: Path, device: str, num_threads, progress: bool):
    ov = dict(job["overrides"])
    ov.update(method=job["method"], seed=job["seed"], run_dir=str(run_dir), resume=True, device=device,
              progress=progress, verbose=False, record_step_accuracy=spec.record_step_accuracy,
              record_step_losses=spec.record_step_losses, save_margins=spec.save_margins)
    if num_threads is not None:
        ov["num_threads"] = num_threads
    cfg = load_config(job["config"], ov)
    if spec.report_epochs is not None:
        cfg = cfg.replace(report_epochs=[e for e in spec.report_epochs if e <= cfg.epochs])
    cfg.validate()
    return cfg


def _record(job: Dict[str, Any], cfg, res: Dict[str, Any], thresholds: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """The distilled result of one run: what the tidy files hold."""
    final_eval = res.get("final_eval") or {}
    row: Dict[str, Any] = {
        "config": job["config"], "variant": job["variant"], "method": job["method"], "seed": job["seed"],
        "dataset": cfg.dataset, "model": cfg.model, "num_classes": res.get("num_classes") or cfg.num_classes,
        "feature_dim": res.get("feature_dim") or cfg.feature_dim, "epochs": cfg.epochs, "steps": res["global_step"],
        "batch_size": cfg.batch_size, "optimizer": cfg.optimizer, "gain": cfg.gain,
        "stratified": cfg.stratified_batches, "delta": cfg.delta, "ddn_backward": cfg.ddn_backward, "lr": cfg.lr,
        "protocol": cfg.protocol_label(), "status": res["status"],
        "wall_time_s": res["wall_time_s"], "peak_mem_gb": res.get("peak_mem_gb"), "device": res["device"],
    }
    for k, v in final_eval.items():
        if k.startswith(("train_", "test_")):
            row[k] = v
    times = [r for r in res["history"] if "time_step_ms" in r]
    for k in ("time_step_ms", "time_backbone_ms", "time_etf_forward_ms", "time_ddn_backward_ms"):
        vals = [r[k] for r in times if r.get(k) is not None]
        if vals:
            # Median over epochs after the first (which pays one-off start-up costs).
            row[k] = float(statistics.median(vals[1:] if len(vals) > 1 else vals))
    for e, snap in (res.get("at_epochs") or {}).items():
        for k in ("train_top1", "test_top1"):
            if snap.get(k) is not None:
                row[f"{k}@{e}"] = snap[k]
    # Per-step accuracy is the exact training accuracy only for full-batch training (one step per
    # epoch); a mini-batch's accuracy says nothing about the training set, so it is not kept.
    # Epochs until every training sample is classified correctly, at the resolution of eval_every.
    fit_rows = [r for r in res["history"] if r.get("train_top1") is not None]
    if fit_rows:
        row["epochs_to_fit"] = next((int(r["epoch"]) for r in fit_rows if r["train_top1"] >= 1.0), None)
    full_batch = res.get("steps_per_epoch") == 1
    acc = res.get("step_accuracies") if full_batch else None
    if acc:
        row["steps_to_fit"] = first_fit_step(acc)
        row["fitted"] = row["steps_to_fit"] is not None  # None above then means "never", not "not measured"
        row["train_top1_step0"] = acc[0]  # before any update: the head start, if there is one
    losses = res.get("step_losses") if full_batch else None
    wanted = dict(thresholds or {})
    if cfg.method == "standard-no-norm":
        wanted.pop("loss_gap", None)  # no lower bound without feature normalisation and temperature
    row.update(steps_to_thresholds(wanted, losses, res["history"], res.get("num_classes") or cfg.num_classes, cfg.tau))
    curves = []
    for r in res["history"]:
        if any(k.startswith(("train_top1", "test_top1")) for k in r):
            curves.append({k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    margins = None
    if cfg.save_margins and res.get("run_dir"):
        npz = Path(res["run_dir"]) / "cosine_margins_final.npz"
        if npz.exists():
            with np.load(npz) as f:
                if "train" in f:
                    margins = [round(float(x), 5) for x in f["train"]]
    return {"row": row, "curves": curves, "step_accuracy": [round(float(a), 6) for a in acc] if acc else None,
            "step_loss": [float(f"{x:.7g}") for x in losses] if losses else None, "margins": margins}


def _key(job_or_row: Dict[str, Any]) -> str:
    return run_key(job_or_row["config"], job_or_row["variant"], job_or_row["method"], job_or_row["seed"])


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
                cell[k] = {"median": statistics.median(vals) if vals else None, "min": min(vals) if vals else None,
                           "max": max(vals) if vals else None, "n": len(vals), "missing": missing, "values": vals}
        out[g] = cell
    return out


def _run_meta(work_dir: Path, key: str, settings_hash: Optional[str]) -> Dict[str, Any]:
    """Where one finished run came from, read from its own provenance in ``work_dir``: command,
    commit (``-dirty`` when the tree had code changes), device, threads, date and settings hash."""
    p = work_dir / key / "provenance.json"
    prov = json.loads(p.read_text()) if p.exists() else {}
    git = prov.get("git") or {}
    # A run resumed from a checkpoint names the commits of its earlier processes too.
    earlier = [(seg.get("commit") or "unknown") + ("-dirty" if seg.get("dirty") else "")
               for seg in prov.get("resumed_segments") or []]
    return {"command": prov.get("command", "?"),
            "commit": (git.get("commit") or "unknown") + ("-dirty" if git.get("dirty") else ""),
            "earlier_commits": earlier,
            "device": str(prov.get("device_name") or prov.get("device") or "?"),
            "num_threads": prov.get("num_threads"), "first_date": prov.get("date"), "last_date": prov.get("date"),
            "settings_hash": settings_hash}


def _run_commits(sources: Dict[str, Dict[str, Any]]) -> List[str]:
    """The git commits that produced the runs, in run order: a result rewritten later still names
    the code that computed it."""
    seen: List[str] = []
    for meta in sources.values():
        for c in [*meta.get("earlier_commits", []), meta["commit"]]:
            if c not in seen:
                seen.append(c)
    return seen


def _local_commands(sources: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """``sources`` with every recorded command's absolute paths made local (commands kept from
    older result files may name the machine that ran them)."""
    return {k: dict(m, command=local_command(str(m.get("command", "?")))) for k, m in sources.items()}


def _invocations(sources: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The commands that produced the runs: one entry per (command, commit, device) with its runs,
    first and last date, in order of first use."""
    groups: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
    for k, meta in sources.items():
        commit = meta["commit"]
        if commit.endswith("-dirty"):
            commit = commit[:-len("-dirty")][:12] + "-dirty"
        else:
            commit = commit[:12]
        g = groups.setdefault((local_command(str(meta["command"])), commit, meta["device"]),
                              {"command": local_command(str(meta["command"])), "commit": commit,
                               "device": meta["device"],
                               "num_threads": meta.get("num_threads"), "first_date": meta.get("first_date"),
                               "last_date": meta.get("last_date"), "runs": []})
        g["runs"].append(k)
        d0, d1 = meta.get("first_date"), meta.get("last_date")
        if d0 and (g["first_date"] is None or d0 < g["first_date"]):
            g["first_date"] = d0
        if d1 and (g["last_date"] is None or d1 > g["last_date"]):
            g["last_date"] = d1
    return sorted(groups.values(), key=lambda g: g["first_date"] or "")


def _write_outputs(out: Path, spec: ExperimentSpec, records: Dict[str, Dict[str, Any]], status: str,
                   start: float, mode: str, device: Optional[str], argv: Sequence[str], num_threads,
                   work_dir: Path, sources: Dict[str, Dict[str, Any]], earlier: Iterable[str] = (),
                   kept: Iterable[str] = ()) -> None:
    out.mkdir(parents=True, exist_ok=True)
    recs = list(records.values())
    rows = [r["row"] for r in recs]
    lead = ("config", "variant", "method", "seed")
    atomic_write_text(out / "runs.csv", csv_text(rows, lead=lead))
    curve_rows = []
    for r in recs:
        for c in r["curves"]:
            curve_rows.append({**{k: r["row"][k] for k in lead}, **c})
    atomic_write_text(out / "curves.csv", csv_text(curve_rows, lead=lead + ("epoch", "step")))
    if spec.record_step_accuracy:
        atomic_write_json(out / "step_accuracy.json", {_key(r["row"]): r["step_accuracy"] for r in recs
                                                        if r["step_accuracy"]}, indent=None)
    if spec.record_step_losses:
        atomic_write_json(out / "step_loss.json", {_key(r["row"]): r.get("step_loss") for r in recs
                                                   if r.get("step_loss")}, indent=None)
    if spec.save_margins:
        atomic_write_json(out / "margins.json", {_key(r["row"]): r["margins"] for r in recs}, indent=None)
    atomic_write_json(out / "summary.json", summarize_records(rows))
    spec_dict = {k: v for k, v in spec.__dict__.items()}
    prov = collect_provenance(
        {"experiment": spec.name, "spec": spec_dict, "mode": mode, "num_threads": num_threads},
        device=device, argv=list(argv),
        extra={"status": status, "runs_done": len(rows), "runs_total": len(spec.jobs()),
               "wall_time_s": time.time() - start,
               "runs_wall_time_s": float(sum(r.get("wall_time_s") or 0.0 for r in rows)),
               "run_commits": _run_commits(sources), "experiment": spec.name, "mode": mode,
               # Runs that an earlier invocation produced and this one merged in: from the work
               # directory, or (``runs_kept_from_results``) from the result files already in ``out``,
               # e.g. committed results of runs whose work directory is on another machine.
               "runs_from_earlier_invocations": sorted(set(earlier) | set(kept)),
               "runs_kept_from_results": sorted(kept), "work_dir": local_path(work_dir),
               "invocations": _invocations(sources), "run_sources": _local_commands(sources),
               "seeds": list(spec.seeds), "configs": list(spec.configs), "notes": spec.notes},
    )
    atomic_write_json(out / "provenance.json", prov)


def run_experiment(name_or_spec, *, quick: bool = False, out: Optional[Path] = None,
                   work_dir: Optional[Path] = None, device: str = "auto", seeds: Optional[Sequence[int]] = None,
                   configs: Optional[Sequence[str]] = None, variants: Optional[Sequence[str]] = None,
                   methods: Optional[Sequence[str]] = None, overrides: Optional[Dict[str, Any]] = None,
                   num_threads: Optional[int] = None, progress: bool = True, replace: bool = False,
                   allow_dirty: bool = False, argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run (or continue) an experiment; returns ``{"records": [...], "summary": {...}, "out": path}``.

    ``seeds``/``configs``/``variants``/``methods`` restrict the grid; ``overrides`` apply to every
    run (e.g. ``{"device": "cuda", "data_root": "/data"}``).  Quick mode uses the experiment's
    ``quick`` section.  ``out`` defaults to ``data/results/<name>`` (full) or
    ``runs/experiments/<name>-quick`` (quick); ``work_dir`` (per-run checkpoints) defaults to
    ``runs/experiments/<name>[-quick]/work``.  Runs that ``out`` already holds with other settings
    than this call's stop it before any run (:class:`ConfigError`) unless ``replace``: then they
    are dropped from the rewritten files (their earlier version stays in the history of git).
    A full-mode run refuses a working tree whose code or configs differ from its commit (a result
    must name the code that made it) unless ``allow_dirty`` (or the environment variable
    ``GUIDING_NC_ALLOW_DIRTY=1``, which the test suite sets); the provenance records the state.
    """
    from tqdm.auto import tqdm

    spec = name_or_spec if isinstance(name_or_spec, ExperimentSpec) else load_experiment(name_or_spec)
    spec = spec.quick_spec() if quick else copy.deepcopy(spec)
    grid = copy.deepcopy(spec)  # the whole grid, before --seeds/--configs/--variants/--methods narrow it
    if seeds is not None:
        spec.seeds = [int(s) for s in seeds]
    if configs is not None:
        unknown = sorted(set(configs) - set(spec.configs))
        if unknown:
            raise ConfigError(f"experiment {spec.name!r} has no config(s) {', '.join(unknown)}; it has "
                              f"{', '.join(spec.configs)}")
        spec.configs = list(configs)
    if variants is not None:
        unknown = sorted(set(variants) - set(spec.variants))
        if unknown:
            raise ConfigError(f"experiment {spec.name!r} has no variant(s) {', '.join(unknown)}; it has "
                              f"{', '.join(spec.variants)}")
        spec.variants = {k: v for k, v in spec.variants.items() if k in variants}
    if methods is not None:
        spec.methods = list(methods)
        for v in spec.variants.values():
            if "methods" in v:
                v["methods"] = [m for m in v["methods"] if m in methods]
    if overrides:
        spec.cli_overrides = dict(overrides)
        grid.cli_overrides = dict(overrides)
    mode = "quick" if quick else "full"
    allow_dirty = allow_dirty or os.environ.get("GUIDING_NC_ALLOW_DIRTY") == "1"
    if not quick and not allow_dirty:
        from ..training.provenance import git_info

        if git_info().get("dirty"):
            raise ConfigError("the source or configs differ from the last commit, so a full-mode result could not "
                              "name the code that made it: commit first, or pass --allow-dirty (recorded)")
    tag = spec.name + ("-quick" if quick else "")
    out = Path(out) if out is not None else (results_dir(spec.name) if not quick
                                             else REPO_ROOT / "runs" / "experiments" / tag)
    work_dir = Path(work_dir) if work_dir is not None else REPO_ROOT / "runs" / "experiments" / tag / "work"
    if argv is None:  # called from Python (a notebook): record the equivalent command line
        argv = ["python", "-m", MODULE, str(name_or_spec if not isinstance(name_or_spec, ExperimentSpec)
                                             else spec.name)]
        argv += ["--quick"] if quick else []
        for flag, val in (("--seeds", seeds), ("--configs", configs), ("--variants", variants), ("--methods", methods)):
            if val is not None:
                argv += [flag, *map(str, val)]
        argv += ["--device", device, "--out", str(out), "--work-dir", str(work_dir)]
        argv += ["--threads", str(num_threads)] if num_threads is not None else []
        argv += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in (overrides or {}).items()]
    argv = list(argv)
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ConfigError(f"--threads must be a positive integer, got {num_threads!r}")
        import torch

        torch.set_num_threads(int(num_threads))  # the trainer does the same; provenance records it
    jobs = spec.jobs()
    # Validate every run before the first one starts: a typo fails now, not an hour in.
    cfgs = [_run_config(spec, job, work_dir / _key(job), device, num_threads, progress=False) for job in jobs]
    start = time.time()
    # Runs of the grid outside this slice, finished by other invocations (earlier or concurrent
    # --configs/--seeds slices) with the same settings, are merged in at every write: the result
    # files always hold every finished run, so a grid can be run in slices into one directory.
    grid_jobs = grid.jobs()
    grid_keys = [_key(j) for j in grid_jobs]
    this_slice = {_key(j) for j in jobs}
    others = [j for j in grid_jobs if _key(j) not in this_slice]
    records: Dict[str, Dict[str, Any]] = {}
    # Runs the result files already hold with these settings (committed results, say) are not trained
    # again; runs they hold with other settings are never dropped silently.
    done_in_results, _, refused = _read_results(out, grid, mode, work_dir, device, num_threads)
    if refused and not replace:
        raise ConfigError(f"{out} holds {len(refused)} run(s) made with other settings than this command's "
                          f"({', '.join(refused[:3])}{' ...' if len(refused) > 3 else ''}): write to another "
                          "directory with --out DIR, or pass --replace to drop them from the files")
    used_device = None
    elsewhere: List[Dict[str, Any]] = []  # runs of this slice another process is training now
    bar = tqdm(list(zip(jobs, cfgs)), desc=spec.name, disable=not progress, dynamic_ncols=True)
    for job, cfg in bar:
        bar.set_postfix_str(_key(job))
        run_dir = work_dir / _key(job)
        rec = _finished_record(run_dir, cfg)
        if rec is None and _key(job) in done_in_results:
            continue  # merged in from the result files at every write
        if rec is None:
            with _run_lock(run_dir) as mine:
                if not mine:
                    elsewhere.append(job)  # an overlapping slice holds it: never train a run twice
                    continue
                rec = _finished_record(run_dir, cfg)  # it may have finished while we waited
                if rec is None:
                    rec = _train_one(job, cfg, run_dir, spec, argv)
                    records[_key(job)] = rec
                    used_device = rec["row"].get("device", used_device)
                    if len(records) < len(jobs):
                        _write_merged(out, grid, grid_keys, records, others + elsewhere, "running", start, mode,
                                      used_device, argv, num_threads, work_dir, device)
                    continue
        records[_key(job)] = rec
        used_device = rec["row"].get("device", used_device)
    merged, status = _write_merged(out, grid, grid_keys, records, others + elsewhere, None, start, mode, used_device, argv,
                                   num_threads, work_dir, device)
    rows = [r["row"] for r in merged.values()]
    return {"records": list(merged.values()), "summary": summarize_records(rows), "out": str(out), "spec": spec,
            "status": status}


def _finished_record(run_dir: Path, cfg) -> Optional[Dict[str, Any]]:
    """The record of a run finished in ``run_dir`` with the settings of ``cfg``: by its hash, or
    (a record hashed by an earlier version of this module) by the run's own ``config.yaml``."""
    rec_path = run_dir / "record.json"
    if not rec_path.exists():
        return None
    rec = json.loads(rec_path.read_text())
    if rec.get("config_hash") in (_settings_hash(cfg), _hash(cfg)):
        return rec
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        try:
            ran = load_config(yaml.safe_load(cfg_path.read_text()))
        except (ConfigError, yaml.YAMLError):
            return None
        if effective_settings(ran) == effective_settings(cfg):
            return rec
    return None


def _train_one(job: Dict[str, Any], cfg, run_dir: Path, spec: ExperimentSpec, argv) -> Dict[str, Any]:
    """Train (or resume) one run in ``run_dir`` and write its ``record.json``."""
    h = _settings_hash(cfg)
    rec_path, hash_path = run_dir / "record.json", run_dir / "config_hash.txt"
    old = None
    if rec_path.exists():
        old = json.loads(rec_path.read_text()).get("config_hash")
    elif hash_path.exists():
        old = hash_path.read_text().strip()
    if old is not None and old not in (h, _hash(cfg)):
        # The run was made (or started) with other settings: keep it aside, start this one afresh.
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.superseded-{old}"))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(hash_path, h)
    res = train_run(cfg, argv=argv)
    rec = _record(job, cfg, res, spec.thresholds)
    rec["config_hash"] = h
    atomic_write_json(rec_path, rec, indent=None)
    return rec


class _DirLock:
    """An advisory ``fcntl.flock`` on a directory (no lock file left among the results), released
    when the ``with`` block ends; subclasses say how it is taken."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: Optional[int] = None

    def __exit__(self, *exc):
        if self.fd is not None:
            import fcntl
            import os

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        return False


class _run_lock(_DirLock):
    """An exclusive, non-blocking lock on one run's directory for a ``with`` block; ``as`` gives
    ``True`` when this process holds it, ``False`` when another does (it is training that run).
    Without ``fcntl`` (or where the file system refuses locks) it always gives ``True``."""

    def __enter__(self) -> bool:
        import os

        try:
            import fcntl
        except ImportError:
            return True
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False
        except OSError:
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
        return True


def _write_merged(out: Path, grid: ExperimentSpec, grid_keys: Sequence[str], records: Dict[str, Dict[str, Any]],
                  others: Sequence[Dict[str, Any]], status: Optional[str], start: float, mode: str,
                  used_device: Optional[str], argv: Sequence[str], num_threads, work_dir: Path,
                  device: str) -> Tuple[Dict[str, Dict[str, Any]], str]:
    """Write this invocation's runs merged with every other finished run of the grid.

    The other runs are re-read from ``work_dir`` under an exclusive lock on ``out``, so slices
    running at the same time cannot overwrite each other's runs: whichever writes last read the
    work directory last, after every other slice had saved its finished runs' records.
    ``status`` ``None`` means the invocation is over: ``completed`` or ``partial`` by the grid.
    """
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        earlier = _finished_records(grid, others, work_dir, device, num_threads)
        # Runs already in the result files whose work directory is not here (committed results
        # made on another machine or in another clone) are kept, never overwritten by absence.
        in_results, result_sources = _results_records(out, grid, mode, work_dir, device, num_threads)
        kept = {k: v for k, v in in_results.items() if k not in records and k not in earlier}
        merged = _in_grid_order(grid_keys, records, earlier, kept)
        jobs = {_key(j): j for j in grid.jobs()}
        sources = {k: (result_sources[k] if k in kept else _run_meta(
            work_dir, k, _settings_hash(_run_config(grid, jobs[k], work_dir / k, device, num_threads, progress=False))))
            for k in merged}
        if status is None:
            status = "completed" if len(merged) == len(grid_keys) else "partial"
        _write_outputs(out, grid, merged, status, start, mode, used_device, argv, num_threads, work_dir, sources,
                       earlier, kept)
    return merged, status


def _results_records(out: Path, grid: ExperimentSpec, mode: str, work_dir: Path, device: str,
                     num_threads) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    """:func:`_read_results` with a warning naming the runs it leaves out."""
    records, metas, refused = _read_results(out, grid, mode, work_dir, device, num_threads)
    if refused:
        import warnings

        warnings.warn(f"{out} holds {len(refused)} run(s) not made with the settings of experiment "
                      f"{grid.name!r} as it is now; they are left out of the rewritten files: "
                      f"{', '.join(refused[:6])}{' ...' if len(refused) > 6 else ''}", stacklevel=3)
    return records, metas


def _read_results(out: Path, grid: ExperimentSpec, mode: str, work_dir: Path, device: str,
                  num_threads) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Dict[str, Any]], List[str]]:
    """The finished runs of ``grid`` held by the result files in ``out``, as records, and where
    each came from.

    A run is taken only if it was made with the settings the grid asks for now: its settings hash
    (``run_sources`` in ``provenance.json``; it leaves out where the run was executed, see
    ``_PLACE_KEYS``) must match.  Files written before hashes were recorded have none; their runs
    are taken when the whole experiment spec and mode recorded in the file equal the present ones,
    and keep ``settings_hash: null``.  Runs that fail the check are
    left out with a warning (the files' history keeps them).
    """
    if not (out / "runs.csv").exists() or not (out / "provenance.json").exists():
        return {}, {}, []
    old = load_results(out) if (out / "summary.json").exists() and (out / "curves.csv").exists() else None
    if old is None:
        return {}, {}, []
    prov = old["provenance"]
    sources = prov.get("run_sources") or {}
    legacy: Dict[str, Dict[str, Any]] = {}
    for inv in prov.get("invocations") or []:
        for k in inv.get("runs", []):
            legacy[k] = {"command": inv.get("command", "?"), "commit": inv.get("commit", "unknown"),
                         "device": inv.get("device", "?"), "num_threads": inv.get("num_threads"),
                         "first_date": inv.get("first_date"), "last_date": inv.get("last_date"), "settings_hash": None}
    spec_now = json.loads(json.dumps(to_jsonable(dict(grid.__dict__))))
    spec_then = (prov.get("config") or {}).get("spec")
    same_spec = _same_spec(spec_then, spec_now) and prov.get("mode") == mode
    jobs = {_key(j): j for j in grid.jobs()}
    curves: Dict[str, List[Dict[str, Any]]] = {}
    for c in old["curves"]:
        curves.setdefault(_key(c), []).append({k: v for k, v in c.items()
                                               if k not in ("config", "variant", "method", "seed") and v is not None})
    records: Dict[str, Dict[str, Any]] = {}
    metas: Dict[str, Dict[str, Any]] = {}
    refused: List[str] = []
    for row in old["runs"]:
        k = _key(row)
        if k not in jobs:
            refused.append(k)
            continue
        meta = dict(sources.get(k) or legacy.get(k) or _file_level_meta(prov))
        if meta.get("settings_hash"):
            ok = meta["settings_hash"] == _settings_hash(_run_config(grid, jobs[k], work_dir / k, device, num_threads,
                                                                     progress=False))
        else:
            # No hash recorded: the same settings under the spec that made it as under today's
            # (the same spec, or one that spells the same run another way), and a method whose
            # definition has not changed since.
            from ..core.heads import HEAD_REVISIONS

            ok = HEAD_REVISIONS.get(str(row.get("method")), 1) == 1 and (
                same_spec or _same_run_then(spec_then, grid, jobs[k], work_dir / k, device, num_threads))
        if not ok:
            refused.append(k)
            continue
        records[k] = {"row": dict(row), "curves": curves.get(k, []),
                      "step_accuracy": (old.get("step_accuracy") or {}).get(k),
                      "step_loss": (old.get("step_loss") or {}).get(k),
                      "margins": (old.get("margins") or {}).get(k)}
        metas[k] = meta
    return records, metas, refused


def stale_runs(out: Path) -> List[str]:
    """The runs held by the result files in ``out`` (a ``data/results/<name>`` folder written by
    :func:`run_experiment`) that the experiment as defined now would not keep: made with other
    settings than its config asks for today (a changed hyper-parameter or a revised method), or no
    longer in its grid.  An empty list: every committed run is what a rerun would compute.
    """
    out = Path(out)
    prov_path = out / "provenance.json"
    if not prov_path.is_file():
        raise ConfigError(f"{out} holds no provenance.json: not a folder of experiment results")
    prov = json.loads(prov_path.read_text())
    if not prov.get("experiment"):
        raise ConfigError(f"{prov_path} names no experiment: not written by run_experiment")
    spec = load_experiment(prov["experiment"])
    mode = prov.get("mode", "full")
    grid = spec.quick_spec() if mode == "quick" else spec
    device = str(prov.get("device") or "cpu")
    _, _, refused = _read_results(out, grid, mode, out / "work", device, prov.get("num_threads"))
    return refused


def _file_level_meta(prov: Dict[str, Any]) -> Dict[str, Any]:
    """Where a run came from when the files that hold it predate per-run provenance: what the
    files say of all their runs together (their command, the commits that made their runs, their
    device and date), so a rewrite keeps it rather than writing "unknown"."""
    git = prov.get("git") or {}
    commits = prov.get("run_commits") or ([(git.get("commit") or "unknown") + ("-dirty" if git.get("dirty") else "")]
                                          if git else ["unknown"])
    return {"command": prov.get("command", "?"), "commit": " or ".join(str(c) for c in commits),
            "device": str(prov.get("device_name") or prov.get("device") or "?"),
            "num_threads": prov.get("num_threads"), "first_date": None, "last_date": prov.get("date"),
            "settings_hash": None}


def _same_run_then(then: Optional[Dict[str, Any]], grid: ExperimentSpec, job: Dict[str, Any], run_dir: Path,
                   device: str, num_threads) -> bool:
    """The run ``job`` of ``grid`` has the same effective settings under the spec recorded with
    its results (``then``, a dict) as under ``grid``: e.g. a spec that now states a value its
    config already gave."""
    import dataclasses

    if not isinstance(then, dict):
        return False
    names = {f.name for f in dataclasses.fields(ExperimentSpec)}
    try:
        old = ExperimentSpec(**{k: v for k, v in then.items() if k in names})
        old_job = next((j for j in old.jobs() if _key(j) == _key(job)), None)
        if old_job is None:
            return False
        before = effective_settings(_run_config(old, old_job, run_dir, device, num_threads, progress=False))
    except (ConfigError, TypeError, ValueError, KeyError):
        return False
    return before == effective_settings(_run_config(grid, job, run_dir, device, num_threads, progress=False))


def _same_spec(then: Optional[Dict[str, Any]], now: Dict[str, Any]) -> bool:
    """The spec recorded in old result files equals the present one; a key the old files do not
    have (added to :class:`ExperimentSpec` later) counts as equal when it has its default now."""
    if not isinstance(then, dict):
        return False
    defaults = json.loads(json.dumps(to_jsonable(ExperimentSpec(name=str(now.get("name"))).__dict__)))
    return all(then.get(k, defaults.get(k)) == now.get(k, defaults.get(k)) for k in set(then) | set(now))


class _locked(_DirLock):
    """An exclusive, blocking lock on the directory ``path`` for a ``with`` block.  A no-op where
    ``fcntl`` does not exist (Windows), and with a warning where the file system refuses the lock:
    slices must then not run at the same time."""

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        import os

        try:
            self.fd = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            import warnings

            warnings.warn(f"cannot lock {self.path} ({exc}); do not run slices into it at the same time",
                          stacklevel=2)
        return self


def _finished_records(spec: ExperimentSpec, jobs: Sequence[Dict[str, Any]], work_dir: Path, device: str,
                      num_threads) -> Dict[str, Dict[str, Any]]:
    """Records of ``jobs`` already finished in ``work_dir`` with exactly their settings."""
    found: Dict[str, Dict[str, Any]] = {}
    for job in jobs:
        rec_path = work_dir / _key(job) / "record.json"
        if not rec_path.exists():
            continue
        cfg = _run_config(spec, job, work_dir / _key(job), device, num_threads, progress=False)
        rec = _finished_record(work_dir / _key(job), cfg)
        if rec is not None:
            found[_key(job)] = rec
    return found


def _in_grid_order(keys: Sequence[str], *parts: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    have = {k: v for part in parts for k, v in part.items()}
    return {k: have[k] for k in keys if k in have}


def _hash(cfg, ignore: Sequence[str] = ("progress", "verbose", "resume", "device", "num_threads")) -> str:
    import hashlib

    from ..core.heads import HEAD_REVISIONS

    d = cfg.to_dict()
    for k in ignore:
        d.pop(k, None)
    # A method whose definition changed (its revision) computes something else with the same
    # settings; revision 1 adds nothing, so hashes recorded before revisions existed still hold.
    if HEAD_REVISIONS.get(cfg.method, 1) != 1:
        d["head_revision"] = HEAD_REVISIONS[cfg.method]
    return hashlib.sha256(json.dumps(to_jsonable(d), sort_keys=True).encode()).hexdigest()[:16]


# Where and how a run was executed, not what it computes: left out of the settings hash that the
# result files record, so a run made in another clone, work directory or data folder still counts.
_PLACE_KEYS = ("progress", "verbose", "resume", "device", "num_threads", "run_dir", "output_dir", "data_root",
               "download", "overwrite", "num_workers", "pin_memory", "keep_checkpoints")


def effective_settings(cfg) -> Dict[str, Any]:
    """The settings that determine a run's result, spelled one way: without where and how it ran
    (``_PLACE_KEYS``), with ``model_kwargs`` entries that equal the model's defaults left out, and
    with the revision of a method whose definition changed (``HEAD_REVISIONS``).

    The protocol (:mod:`guiding_nc.training.protocol`) enters as the values of the options that change
    this run (:func:`~guiding_nc.training.protocol.relevant`), not as the protocol's name: the run's sampler
    as ``stratified``, the final activation as the model's ``final_activation`` entry, and any
    other option only where it departs from the one-switch protocol, which every run made before
    the options existed used.  So a run's hash names what it computed, and those runs keep theirs.
    """
    from ..core.heads import HEAD_REVISIONS
    from ..training.models import model_defaults
    from ..training.protocol import OPTION_KEYS, protocol_values, relevant

    d = cfg.to_dict()
    for k in _PLACE_KEYS:
        d.pop(k, None)
    defaults = model_defaults(cfg.model)
    values = cfg.protocol_choices()
    has_final = "final_activation" in defaults
    keep = relevant(values, cfg.method, model_has_final_activation=has_final, agd=str(cfg.optimizer).lower() == "agd")
    for k in ("protocol",) + OPTION_KEYS:
        d.pop(k, None)
    d["stratified"] = cfg.stratified_batches
    if has_final:
        d["model_kwargs"] = {**(d.get("model_kwargs") or {}), "final_activation": bool(values["final_activation"])}
    before = protocol_values("one_switch")
    for k, v in keep.items():
        if k not in ("final_activation",) and not k.endswith("_sampler") and v != before[k]:
            d[k] = v
    d["model_kwargs"] = {k: v for k, v in (d.get("model_kwargs") or {}).items()
                         if not (k in defaults and defaults[k] == v)}
    if HEAD_REVISIONS.get(cfg.method, 1) != 1:
        d["head_revision"] = HEAD_REVISIONS[cfg.method]
    return json.loads(json.dumps(to_jsonable(d), sort_keys=True))


def _settings_hash(cfg) -> str:
    """Hash of :func:`effective_settings`: what the result files record for every run."""
    import hashlib

    return hashlib.sha256(json.dumps(effective_settings(cfg), sort_keys=True).encode()).hexdigest()[:16]


def format_summary(summary: Dict[str, Any], metrics: Iterable[str]) -> str:
    metrics = list(metrics)
    lines = ["  ".join([f"{'config/variant/method':<36}"] + [f"{m:>24}" for m in metrics])]
    for g, cell in summary.items():
        vals = []
        for m in metrics:
            c = cell.get(m)
            vals.append(f"{'-':>24}" if not c or c["median"] is None else
                        f"{c['median']:.4g} [{c['min']:.4g}, {c['max']:.4g}]".rjust(24))
        lines.append("  ".join([f"{g:<36}"] + vals))
    return "\n".join(lines)


def main(argv=None) -> int:
    from ..training.command_line import run_cli

    return run_cli(_main, argv)


def _main(argv=None) -> int:
    from ..training.command_line import OneLineParser

    parser = OneLineParser(prog="python -m guiding_nc.experiments.reproduce",
                           description="Run one of the paper's experiments and write tidy results with provenance.")
    parser.add_argument("experiment", nargs="?", help="name in configs/experiments/ (see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--quick", action="store_true", help="the experiment's quick mode (CI)")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--configs", nargs="+")
    parser.add_argument("--variants", nargs="+")
    parser.add_argument("--methods", nargs="+")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", default=None)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="run full mode although src/ or configs/ differ from the last commit (recorded)")
    parser.add_argument("--replace", action="store_true",
                        help="drop the runs --out holds with other settings than this command's (git keeps them)")
    parser.add_argument("overrides", nargs="*", default=[], help="key=value applied to every run")
    args, extra = parser.parse_known_args(argv)
    if args.list:
        for name in list_experiments():
            spec = load_experiment(name)
            print(f"{name:<16} {spec.paper:<28} {spec.description}")
        return 0
    if not args.experiment:
        parser.error("name an experiment (see --list)")
    items = list(args.overrides) + list(extra)
    bad = [i for i in items if "=" not in i]
    if bad:
        parser.error(f"unrecognised argument(s) {' '.join(bad)}; overrides are key=value")
    from ..training.config import parse_overrides

    res = run_experiment(args.experiment, quick=args.quick, out=args.out, work_dir=args.work_dir, device=args.device,
                         seeds=args.seeds, configs=args.configs, variants=args.variants, methods=args.methods,
                         overrides=parse_overrides(items), num_threads=args.threads, progress=not args.no_progress,
                         replace=args.replace, allow_dirty=args.allow_dirty, argv=["python", "-m", MODULE, *(sys.argv[1:] if argv is None else argv)])
    print(format_summary(res["summary"], ("train_top1", "test_top1", "steps_to_fit", "train_nc1", "wall_time_s")))
    print(f"saved {res['out']}")
    if res["status"] == "partial":
        prov = json.loads((Path(res["out"]) / "provenance.json").read_text())
        print(f"partial: {prov['runs_done']} of {prov['runs_total']} runs of the {res['spec'].name} grid are finished; "
              "run the other slices (or the whole grid) with the same --out and --work-dir to add the rest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
