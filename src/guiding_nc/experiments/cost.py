"""What each method costs per training step (paper Table 3, Fig. 5, Fig. 16).

For every UFM size and every classifier variant

* ``standard``, ``fixed``: learned / fixed classifier;
* ``implicit, DDN off``: the implicit ETF without a gradient through ``U*``;
* ``implicit, DDN closed form``: the exact O(dC²) adjoint (this package's default);
* ``implicit, DDN dense KKT``: the paper's dense implicit-function gradient (skipped where its
  matrices exceed ``--kkt-cap-gb``, with the memory it would need recorded instead),

this trains the real model with the real trainer for a few full-batch steps in a fresh
subprocess and records the per-step time split that the trainer measures (backbone = forward +
backward outside the ETF layer, nearest-ETF forward, DDN backward; median over the steps after
the first) and the peak memory of the process: peak resident memory minus the resident memory
once the model and data exist on a CPU, ``torch.cuda.max_memory_allocated`` on CUDA.

Usage::

    python -m guiding_nc.experiments.cost                      # UFM-10/100/200/1000
    python -m guiding_nc.experiments.cost --quick              # tiny, for CI
    python -m guiding_nc.experiments.cost --device cuda --kkt-cap-gb 100

Writes ``cost.csv``, ``cost.json`` (rows + provenance) to ``--out`` (default
``data/results/cost``) atomically after every case.  The layer alone at ImageNet scale
(d=2048, C=1000) is measured by ``python -m guiding_nc.bench etf``.  Book: the cost chapter.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..core.memory import process_memory_bytes, reset_peak_rss
from ..core.reference.kkt_gradient import kkt_memory_bytes
from ..training.provenance import atomic_write_json, atomic_write_text, collect_provenance
from ..training.tables import csv_text
from ..training.config import CONFIG_DIR, load_config

DEFAULT_CONFIGS = ("ufm10", "ufm100", "ufm200", "ufm1000")
VARIANTS = (
    # label, method, ddn_backward
    ("standard", "standard", "closed_form"),
    ("fixed", "fixed", "closed_form"),
    ("implicit, DDN off", "implicit", "none"),
    ("implicit, DDN closed form", "implicit", "closed_form"),
    ("implicit, DDN dense KKT", "implicit", "kkt"),
)


def quick_sizes(num_classes: int) -> Dict[str, int]:
    """The shrunken UFM of quick mode (CI): few samples, the smallest width a C-class ETF allows."""
    n = max(200, 2 * num_classes)
    return {"num_samples": n, "feature_dim": max(64, num_classes), "batch_size": n}

MODULE = "guiding_nc.experiments.cost"
TIME_KEYS = ("time_step_ms", "time_backbone_ms", "time_etf_forward_ms", "time_ddn_backward_ms")


def _case(config: str, method: str, ddn: str, steps: int, device: str, quick: bool, threads: Optional[int]) -> Dict:
    """Runs in a fresh process: ``steps`` full-batch steps, one epoch each, timed by the trainer."""
    import tempfile

    import torch

    from ..training.trainer import Trainer

    overrides = {"method": method, "ddn_backward": ddn, "seed": 0, "epochs": steps, "eval_every": 10 ** 6,
                 "eval_train": False, "eval_test": False, "checkpoint_every": 0, "progress": False,
                 "verbose": False, "timing": "sync", "device": device, "num_threads": threads,
                 "report_epochs": []}
    if quick:
        overrides.update(quick_sizes(int(load_config(config).num_classes)))
    with tempfile.TemporaryDirectory(prefix="cost_") as tmp:
        cfg = load_config(config, {**overrides, "run_dir": tmp})
        trainer = Trainer(cfg)
        dev = trainer.device
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        else:
            base = reset_peak_rss()
        res = trainer.fit()
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated(dev)
        else:
            peak = process_memory_bytes("VmHWM")
    rows = res["history"][1:] if len(res["history"]) > 1 else res["history"]  # first step pays start-up
    out = {k: statistics.median(r[k] for r in rows) for k in TIME_KEYS if all(k in r for r in rows)}
    out.update(peak_extra_gb=max(0, peak - base) / 2 ** 30, base_gb=base / 2 ** 30, device=str(dev),
               num_classes=cfg.num_classes, feature_dim=cfg.feature_dim, num_samples=cfg.num_samples,
               steps=res["global_step"], status=res["status"])
    return out


def _spawn(cmd: List[str]) -> subprocess.CompletedProcess:
    # A fixed mmap threshold makes glibc hand large freed blocks back at once, so the child's peak
    # resident size counts every large tensor it allocates.
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))


def run(configs: Sequence[str] = DEFAULT_CONFIGS, *, steps: int = 6, device: str = "cpu", quick: bool = False,
        kkt_cap_gb: float = 12.0, threads: Optional[int] = None, out: Optional[Path] = None,
        progress: bool = True, argv: Optional[Sequence[str]] = None) -> Dict:
    """Measure every (config, variant); returns ``{"rows": [...], "provenance": {...}}``."""
    from tqdm.auto import tqdm

    if steps < 2:
        raise ValueError(f"steps must be >= 2 (the first step is excluded from the timings), got {steps}")
    jobs = [(c, v) for c in configs for v in VARIANTS]
    rows: List[Dict] = []
    start = time.time()
    if argv is None:  # called from Python (a notebook): record the equivalent command line
        argv = ["python", "-m", MODULE, "--configs", *configs, "--steps", str(steps), "--device", device,
                "--kkt-cap-gb", f"{kkt_cap_gb:g}"] + (["--quick"] if quick else []) + \
               (["--threads", str(threads)] if threads is not None else []) + (["--out", str(out)] if out else [])
    argv = list(argv)
    bar = tqdm(jobs, desc="cost", disable=not progress, dynamic_ncols=True)
    used_device = device
    for config, (label, method, ddn) in bar:
        bar.set_postfix_str(f"{config} {label}")
        cfg = load_config(config)
        if quick:
            cfg = cfg.replace(**quick_sizes(int(cfg.num_classes)))
        d, C = int(cfg.feature_dim), int(cfg.num_classes)
        row: Dict = {"config": config, "variant": label, "method": method, "ddn_backward": ddn,
                     "num_classes": C, "feature_dim": d, "num_samples": int(cfg.num_samples)}
        if ddn == "kkt":
            # In the dtype the trainer solves in (the config's solve_dtype, float32 by default).
            itemsize = 8 if cfg.solve_dtype == "float64" else 4
            need = kkt_memory_bytes(d, C, itemsize) / 2 ** 30
            row["kkt_need_gb"] = need
            row["kkt_need_dtype"] = cfg.solve_dtype
            if need > kkt_cap_gb:
                row["status"] = f"skipped: the dense KKT matrices need {need:.1f} GiB > cap {kkt_cap_gb:g} GiB"
                rows.append(row)
                _write(out, rows, start, used_device, argv, configs, steps, quick, kkt_cap_gb, threads)
                continue
        cmd = [sys.executable, "-m", MODULE, "_case", config, method, ddn, str(steps), device,
               "1" if quick else "0", str(threads or 0)]
        proc = _spawn(cmd)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            row["status"] = "failed: " + " | ".join(tail)
        else:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            used_device = row.get("device", used_device)
        rows.append(row)
        _write(out, rows, start, used_device, argv, configs, steps, quick, kkt_cap_gb, threads)
    return {"rows": rows, "provenance": _provenance(rows, start, used_device, argv, configs, steps, quick,
                                                    kkt_cap_gb, threads)}


def _provenance(rows, start, device, argv, configs, steps, quick, kkt_cap_gb, threads) -> Dict:
    return collect_provenance(
        {"configs": list(configs), "steps": steps, "quick": quick, "kkt_cap_gb": kkt_cap_gb, "threads": threads},
        device=device, argv=argv,
        extra={"status": "completed" if len(rows) == len(configs) * len(VARIANTS) else "running",
               "wall_time_s": time.time() - start,
               "notes": "per-step times: median over full-batch steps 2..steps (trainer timing='sync'); "
                        "peak_extra_gb: peak resident memory minus resident memory once model and data exist "
                        "(CPU), max_memory_allocated minus allocated (CUDA)"})


def _write(out, rows, start, device, argv, configs, steps, quick, kkt_cap_gb, threads) -> None:
    if out is None:
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "cost.csv", csv_text(rows))
    atomic_write_json(out / "cost.json", {"rows": rows, "provenance": _provenance(
        rows, start, device, argv, configs, steps, quick, kkt_cap_gb, threads)})


def format_table(rows: Sequence[Dict]) -> str:
    lines = [f"{'config':<8} {'variant':<27} {'step ms':>9} {'backbone':>9} {'ETF fwd':>8} {'DDN bwd':>8} {'peak GiB':>8}"]
    for r in rows:
        if "time_step_ms" not in r:
            lines.append(f"{r['config']:<8} {r['variant']:<27} {r.get('status', '')}")
            continue
        lines.append(f"{r['config']:<8} {r['variant']:<27} {r['time_step_ms']:>9.1f} {r['time_backbone_ms']:>9.1f} "
                     f"{r['time_etf_forward_ms']:>8.1f} {r['time_ddn_backward_ms']:>8.1f} {r['peak_extra_gb']:>8.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if argv_list and argv_list[0] == "_case":
        config, method, ddn, steps, device, quick, threads = argv_list[1:8]
        print(json.dumps(_case(config, method, ddn, int(steps), device, quick == "1", int(threads) or None)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m guiding_nc.experiments.cost",
                                     description="Per-step time split and peak memory of each method (Table 3).")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--steps", type=int, default=6, help="full-batch steps per case (first one excluded)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="shrink every UFM to a few samples and d = max(64, C) (CI)")
    parser.add_argument("--kkt-cap-gb", type=float, default=12.0, help="skip the dense KKT gradient above this")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="data/results/cost")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv_list)
    unknown = [c for c in args.configs if not (CONFIG_DIR / f"{c}.yaml").exists()]
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)} (looked in {CONFIG_DIR})")
    res = run(args.configs, steps=args.steps, device=args.device, quick=args.quick, kkt_cap_gb=args.kkt_cap_gb,
              threads=args.threads, out=Path(args.out), progress=not args.no_progress,
              argv=["python", "-m", MODULE, *argv_list])
    print(format_table(res["rows"]))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
