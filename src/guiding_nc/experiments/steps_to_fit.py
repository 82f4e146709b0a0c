"""How many optimiser steps each method needs to fit a UFM (the paper's central claim, Fig. 3).

For every (UFM config, method, seed) this trains the unconstrained feature model full-batch
with the *same* optimiser for all three methods (the configs' AGD, gain 10) and records the
training accuracy at every step; ``steps_to_fit`` is the first step count after which every
training sample is classified correctly (``None`` if that never happens within the budget).
With full-batch training the per-step accuracy is exact, not a batch estimate.

Usage::

    python -m guiding_nc.experiments.steps_to_fit                    # UFM-10 and UFM-100, 5 seeds
    python -m guiding_nc.experiments.steps_to_fit --quick            # tiny, for CI
    python -m guiding_nc.experiments.steps_to_fit --configs ufm10 --seeds 0 1 --steps 500

Writes ``runs.csv`` (one row per run), ``curves.json`` (per-step accuracy of every run),
``summary.json`` (median and min-max per config and method) and ``provenance.json`` to
``--out`` (default ``data/results/steps_to_fit``), each atomically.
"""
from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..provenance import atomic_write_json, atomic_write_text, collect_provenance
from ..trainer import load_config, train_run

DEFAULT_CONFIGS = ("ufm10", "ufm100")
DEFAULT_METHODS = ("standard", "fixed", "implicit")


def first_fit_step(accuracies: Sequence[float]) -> Optional[int]:
    """Steps taken before the training accuracy first reaches 100%.

    ``accuracies[i]`` is the accuracy of the parameters after ``i`` steps (it is measured in
    the forward pass of step ``i + 1``), so the answer is the first ``i`` with accuracy 1.
    """
    for i, acc in enumerate(accuracies):
        if acc >= 1.0:
            return i
    return None


def run(configs=DEFAULT_CONFIGS, methods=DEFAULT_METHODS, seeds=(0, 1, 2, 3, 4), *, steps: Optional[int] = None,
        quick: bool = False, device: str = "auto", out: Optional[Path] = None, progress: bool = True,
        num_threads: Optional[int] = None, argv: Optional[Sequence[str]] = None) -> Dict:
    """Run the experiment and return ``{"runs": [...], "summary": {...}, "curves": {...}}``."""
    from tqdm.auto import tqdm

    jobs = [(c, m, s) for c in configs for m in methods for s in seeds]
    rows: List[Dict] = []
    curves: Dict[str, List[float]] = {}
    start = time.time()
    used_device = None
    with tempfile.TemporaryDirectory(prefix="steps_to_fit_") as tmp:
        bar = tqdm(jobs, desc="steps to fit", disable=not progress, dynamic_ncols=True)
        for config_name, method, seed in bar:
            bar.set_postfix_str(f"{config_name} {method} seed {seed}")
            overrides = {
                "method": method, "seed": seed, "record_step_accuracy": True,
                "output_dir": tmp, "progress": False, "verbose": False, "device": device,
                "eval_test": False, "checkpoint_every": 10**9, "save_margins": False, "timing": "off",
                "num_threads": num_threads,
            }
            cfg = load_config(config_name, overrides)
            if steps is not None:
                cfg = cfg.replace(epochs=int(steps))
            if quick:
                cfg = cfg.apply_quick().replace(epochs=min(cfg.epochs, 60) if steps is None else int(steps))
            cfg = cfg.replace(eval_every=cfg.epochs, report_epochs=[cfg.epochs])
            t0 = time.time()
            res = train_run(cfg)
            used_device = res["device"]
            acc = res["step_accuracies"] or []
            fit = first_fit_step(acc)
            rows.append({
                "config": config_name, "method": method, "seed": seed,
                "num_classes": cfg.num_classes, "num_samples": cfg.num_samples, "feature_dim": cfg.feature_dim,
                "optimizer": cfg.optimizer, "gain": cfg.gain, "stratified": cfg.stratified,
                "steps_budget": cfg.epochs * res["steps_per_epoch"], "steps_to_fit": fit,
                "final_step_accuracy": acc[-1] if acc else None, "wall_time_s": time.time() - t0,
            })
            curves[f"{config_name}/{method}/{seed}"] = acc
            if out is not None:  # after every run, so an interrupted experiment keeps what it measured
                _write(Path(out), rows, curves, "running" if len(rows) < len(jobs) else "completed",
                       start, used_device, configs, methods, seeds, steps, quick, num_threads, argv)
    return {"runs": rows, "summary": summarize(rows), "curves": curves}


def _write(out: Path, rows, curves, status, start, device, configs, methods, seeds, steps, quick, num_threads, argv):
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "runs.csv", buf.getvalue())
    atomic_write_json(out / "curves.json", curves, indent=None)
    atomic_write_json(out / "summary.json", summarize(rows))
    prov = collect_provenance(
        {"configs": list(configs), "methods": list(methods), "seeds": list(seeds), "steps": steps, "quick": quick,
         "num_threads": num_threads},
        device=device, argv=argv if argv is not None else [sys.executable, "-m", __name__] + sys.argv[1:],
        extra={"status": status, "runs_done": len(rows), "wall_time_s": time.time() - start},
    )
    atomic_write_json(out / "provenance.json", prov)


def summarize(rows: Sequence[Dict]) -> Dict[str, Dict[str, Dict]]:
    """Median and min-max of ``steps_to_fit`` per config and method; runs that never fit count as missing."""
    out: Dict[str, Dict[str, Dict]] = {}
    for row in rows:
        out.setdefault(row["config"], {}).setdefault(row["method"], {"steps": [], "not_fitted": 0, "seeds": []})
        cell = out[row["config"]][row["method"]]
        cell["seeds"].append(row["seed"])
        if row["steps_to_fit"] is None:
            cell["not_fitted"] += 1
        else:
            cell["steps"].append(row["steps_to_fit"])
    for methods in out.values():
        for cell in methods.values():
            s = cell["steps"]
            cell.update(median=statistics.median(s) if s else None, min=min(s) if s else None, max=max(s) if s else None)
    return out


def format_summary(summary: Dict) -> str:
    lines = [f"{'config':<8} {'method':<10} {'median':>7} {'min':>6} {'max':>6} {'not fitted':>11}"]
    for config, methods in summary.items():
        for method, c in methods.items():
            fmt = lambda v: "-" if v is None else f"{v:g}"
            lines.append(f"{config:<8} {method:<10} {fmt(c['median']):>7} {fmt(c['min']):>6} {fmt(c['max']):>6} "
                         f"{c['not_fitted']:>4} of {len(c['seeds'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guiding_nc.experiments.steps_to_fit",
                                     description="Steps each method needs to reach 100% train accuracy on UFMs.")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=None, help="step budget (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="tiny UFMs and few steps (CI)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="data/results/steps_to_fit")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 is fastest for UFMs on a busy CPU)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.configs, args.methods, args.seeds, steps=args.steps, quick=args.quick, device=args.device,
                 out=Path(args.out), progress=not args.no_progress, num_threads=args.threads)
    print(format_summary(result["summary"]))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
