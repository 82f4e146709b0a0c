"""Run one of the paper's experiments (a grid of training runs) and write tidy results.

An *experiment* is a YAML file in ``configs/experiments/`` (:mod:`guiding_nc.experiments.spec`)
naming the training configs, the methods, the seeds and, optionally, *variants* (named sets of
overrides such as ``ddn: none`` or ``delta: 1e-5``) to compare; it also says how to shrink
everything in quick mode.  Every run goes through :func:`guiding_nc.training.trainer.train_run`
with the same settings except the ones the experiment varies, so the comparison is one switch at
a time.

Usage::

    python -m guiding_nc.experiments.reproduce ufm10                 # full mode (the paper's sizes)
    python -m guiding_nc.experiments.reproduce ufm10 --quick         # seconds, for CI
    python -m guiding_nc.experiments.reproduce real_offline --seeds 0 1 --device cuda
    python -m guiding_nc.experiments.reproduce --list

Output directory (default ``data/results/<experiment>`` in full mode): the files of
:mod:`guiding_nc.experiments.store`, rewritten after every run as one change (a crash at any point
leaves the files of the last complete write, and rerunning the command completes them), so an
interrupted experiment keeps everything it finished.  The overrides (``key=value``) apply to every
run; the settings the grid gives each run itself are flags instead (``--methods``, ``--seeds``,
``--device``, ``--threads``, ``--work-dir``; :data:`~guiding_nc.experiments.spec.PER_RUN_KEYS`), and a
flag's value must be in the experiment's grid.

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
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..core.checks import THREADS, ArgumentError
from ..training.config import ConfigError, check_name, project_root
from ..training.tables import band_text
from ..training.provenance import atomic_write_json, atomic_write_text
from ..training.trainer import train_run
from .measures import first_fit_step, steps_to_thresholds
from .results import results_dir, summarize_records
from .spec import ExperimentSpec, check_overrides, list_experiments, load_experiment, run_config, run_key_of
from .store import (check_results, finished_record, legacy_config_hash, made_dirty, read_record, read_results, run_lock,
                    settings_hash, write_merged)

__all__ = ["MODULE", "REPO_ROOT", "run_experiment", "format_summary", "main"]

MODULE = "guiding_nc.experiments.reproduce"
REPO_ROOT = project_root()


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


def run_experiment(name_or_spec, *, quick: bool = False, out: Optional[Path] = None,
                   work_dir: Optional[Path] = None, device: str = "auto", seeds: Optional[Sequence[int]] = None,
                   configs: Optional[Sequence[str]] = None, variants: Optional[Sequence[str]] = None,
                   methods: Optional[Sequence[str]] = None, overrides: Optional[Dict[str, Any]] = None,
                   num_threads: Optional[int] = None, progress: bool = True, replace: bool = False,
                   allow_dirty: bool = False, remake_dirty: bool = False,
                   argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run (or continue) an experiment; returns ``{"records": [...], "summary": {...}, "out": path}``.

    ``seeds``/``configs``/``variants``/``methods`` restrict the grid (to values it has); ``overrides``
    apply to every run (e.g. ``{"data_root": "/data"}``; not the settings each run gets from the
    grid, :data:`~guiding_nc.experiments.spec.PER_RUN_KEYS`: ``device`` is an argument).  Quick
    mode uses the experiment's ``quick`` section.  ``out`` defaults to ``data/results/<name>`` (full) or
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
    check_name("experiment name", spec.name)  # it names the result and work directories
    check_overrides(spec, overrides or {})
    spec = spec.quick_spec() if quick else copy.deepcopy(spec)
    grid = copy.deepcopy(spec)  # the whole grid, before --seeds/--configs/--variants/--methods narrow it
    _narrow(spec, quick, seeds=seeds, configs=configs, variants=variants, methods=methods)
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
    for flag, path in (("--out", out), ("--work-dir", work_dir)):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{flag} {path} is a file, not a directory: name a directory (new, or one this command "
                              "wrote before)")
    if num_threads is not None:
        try:
            THREADS("--threads", num_threads)  # far too many crash the OpenMP runtime without a word
        except ArgumentError as exc:
            raise ConfigError(str(exc)) from None
        import torch

        torch.set_num_threads(int(num_threads))  # the trainer does the same; provenance records it
    jobs = spec.jobs()
    if not jobs:
        raise ConfigError(f"--seeds/--configs/--variants/--methods select no run of experiment {spec.name!r}"
                          f"{' (quick)' if quick else ''}: its runs are "
                          f"{', '.join(run_key_of(j) for j in grid.jobs())}")
    # Validate every run before the first one starts: a typo fails now, not an hour in.
    cfgs = [run_config(spec, job, work_dir / run_key_of(job), device, num_threads, progress=False) for job in jobs]
    start = time.time()
    # Runs of the grid outside this slice, finished by other invocations (earlier or concurrent
    # --configs/--seeds slices) with the same settings, are merged in at every write: the result
    # files always hold every finished run, so a grid can be run in slices into one directory.
    grid_jobs = grid.jobs()
    grid_keys = [run_key_of(j) for j in grid_jobs]
    this_slice = {run_key_of(j) for j in jobs}
    others = [j for j in grid_jobs if run_key_of(j) not in this_slice]
    records: Dict[str, Dict[str, Any]] = {}
    # Runs the result files already hold with these settings (committed results, say) are not trained
    # again; runs they hold with other settings are never dropped silently: they stop the command
    # here, or, with --replace, are dropped -- those rows only, as they are now: a row another
    # command writes later stops this one at its next write (write_merged).
    done_in_results, may_drop = check_results(out, grid, mode, work_dir, device, num_threads, replace=replace)
    if remake_dirty:
        # Runs the files hold that were made from a tree with uncommitted changes: trained again here
        # (from this clean tree) and their rows replaced, so every result names committed code.
        _, metas, _ = read_results(out, grid, mode, work_dir, device, num_threads)
        for k in [k for k in done_in_results if k in this_slice and made_dirty(metas.get(k) or {})]:
            del done_in_results[k]
    used_device = None
    elsewhere: List[Dict[str, Any]] = []  # runs of this slice another process is training now
    bar = tqdm(list(zip(jobs, cfgs)), desc=spec.name, disable=not progress, dynamic_ncols=True)
    for job, cfg in bar:
        bar.set_postfix_str(run_key_of(job))
        run_dir = work_dir / run_key_of(job)
        rec = finished_record(run_dir, cfg)
        if rec is None and run_key_of(job) in done_in_results:
            continue  # merged in from the result files at every write
        if rec is None:
            with run_lock(run_dir) as mine:
                if not mine:
                    elsewhere.append(job)  # an overlapping slice holds it: never train a run twice
                    continue
                rec = finished_record(run_dir, cfg)  # it may have finished while we waited
                if rec is None:
                    rec = _train_one(job, cfg, run_dir, spec, argv)
                    records[run_key_of(job)] = rec
                    used_device = rec["row"].get("device", used_device)
                    if len(records) < len(jobs):
                        write_merged(out, grid, grid_keys, records, others + elsewhere, "running", start, mode,
                                      used_device, argv, num_threads, work_dir, device, may_drop)
                    continue
        records[run_key_of(job)] = rec
        used_device = rec["row"].get("device", used_device)
    merged, status = write_merged(out, grid, grid_keys, records, others + elsewhere, None, start, mode, used_device, argv,
                                   num_threads, work_dir, device, may_drop)
    rows = [r["row"] for r in merged.values()]
    return {"records": list(merged.values()), "summary": summarize_records(rows), "out": str(out), "spec": spec,
            "status": status}


def _narrow(spec: ExperimentSpec, quick: bool, *, seeds=None, configs=None, variants=None, methods=None) -> None:
    """Narrow ``spec`` to the slice ``--seeds``/``--configs``/``--variants``/``--methods`` name; a
    value outside the grid is a :class:`ConfigError` naming the grid's values (a run outside it
    would be trained and then left out of the files)."""
    grid_methods: List[str] = []
    for v in spec.variants.values():
        grid_methods += [m for m in v.get("methods", spec.methods) if m not in grid_methods]
    where = f"experiment {spec.name!r}{' (quick)' if quick else ''}"
    for flag, given, have in (("--seeds", seeds, spec.seeds), ("--configs", configs, spec.configs),
                              ("--variants", variants, list(spec.variants)), ("--methods", methods, grid_methods)):
        if given is None:
            continue
        if flag == "--seeds" and any(isinstance(x, bool) or not isinstance(x, int) for x in given):
            raise ConfigError(f"--seeds takes integers, got {' '.join(map(str, given))}")
        unknown = [str(x) for x in given if x not in have]
        if unknown:
            noun = flag[2:-1] + ("(s)" if len(unknown) > 1 else "")
            raise ConfigError(f"{where} has no {noun} {', '.join(unknown)} ({flag}); its {flag[2:]} are "
                              f"{', '.join(map(str, have))}")
    if seeds is not None:
        spec.seeds = [int(s) for s in seeds]
    if configs is not None:
        spec.configs = list(configs)
    if variants is not None:
        spec.variants = {k: v for k, v in spec.variants.items() if k in variants}
    if methods is not None:
        spec.methods = list(methods)
        for v in spec.variants.values():
            if "methods" in v:
                v["methods"] = [m for m in v["methods"] if m in methods]


def _train_one(job: Dict[str, Any], cfg, run_dir: Path, spec: ExperimentSpec, argv) -> Dict[str, Any]:
    """Train (or resume) one run in ``run_dir`` and write its ``record.json``."""
    h = settings_hash(cfg)
    rec_path, hash_path = run_dir / "record.json", run_dir / "config_hash.txt"
    old = None
    if rec_path.exists():
        old = read_record(rec_path).get("config_hash")
    elif hash_path.exists():
        old = hash_path.read_text().strip()
    if old is not None and old not in (h, legacy_config_hash(cfg)):
        # The run was made (or started) with other settings: keep it aside, start this one afresh.
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.superseded-{old}"))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(hash_path, h)
    res = train_run(cfg, argv=argv)
    rec = _record(job, cfg, res, spec.thresholds)
    rec["config_hash"] = h
    atomic_write_json(rec_path, rec, indent=None)
    return rec


def format_summary(summary: Dict[str, Any], metrics: Iterable[str]) -> str:
    metrics = list(metrics)
    lines = ["  ".join([f"{'config/variant/method':<36}"] + [f"{m:>24}" for m in metrics])]
    for g, cell in summary.items():
        vals = []
        for m in metrics:
            c = cell.get(m)
            vals.append(band_text(*((c["median"], c["min"], c["max"]) if c else (None,)), none="-").rjust(24))
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
    parser.add_argument("--remake-dirty", action="store_true",
                        help="train again the runs --out holds that were made from uncommitted code (use a fresh "
                             "--work-dir), and replace their rows")
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
                         replace=args.replace, allow_dirty=args.allow_dirty, remake_dirty=args.remake_dirty, argv=["python", "-m", MODULE, *(sys.argv[1:] if argv is None else argv)])
    print(format_summary(res["summary"], ("train_top1", "test_top1", "steps_to_fit", "train_nc1", "wall_time_s")))
    print(f"saved {res['out']}")
    if res["status"] == "partial":
        prov = json.loads((Path(res["out"]) / "provenance.json").read_text())
        print(f"partial: {prov['runs_done']} of {prov['runs_total']} runs of the {res['spec'].name} grid are finished; "
              "run the other slices (or the whole grid) with the same --out and --work-dir to add the rest")
    return 0
