"""``python -m guiding_nc.bench paired``: ``nearest_etf`` of this checkout against another's
(a git worktree of an older commit, say), call by call in one process, so the machine's load
drifts out of the ratios (:func:`bench_paired`, :func:`format_paired`).  The command line is
:func:`guiding_nc.experiments.bench.main`; ``scripts/bench_etf_against.sh`` runs it.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from ..core.nearest import nearest_etf
from .bench import bench_provenance, step_problem

__all__ = ["PAIRED_CASES", "load_package_from", "bench_paired", "format_paired"]

PAIRED_CASES = ((512, 10, "float32", True), (1024, 100, "float32", False), (1024, 100, "float32", True),
                (1024, 100, "float64", True), (1024, 200, "float64", True), (1024, 1000, "float32", False),
                (1024, 1000, "float32", True), (2048, 1000, "float64", True))


def load_package_from(src: str, name: str = "guiding_nc_other"):
    """The ``guiding_nc`` package of another checkout (its ``src`` folder), imported under ``name``
    beside this one, so two versions can be timed in one process."""
    import importlib.util

    init = Path(src) / "guiding_nc" / "__init__.py"
    if not init.is_file():
        raise ValueError(f"{src}: no guiding_nc package there (expected {init})")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def bench_paired(other, *, cases=PAIRED_CASES, calls: int = 20, progress=print) -> dict:
    """``nearest_etf`` of this package against ``other`` (see :func:`load_package_from`), call by
    call in one process: each pair of calls runs back to back, in alternating order, so the
    machine's load drifts out of the ratio.  Per case: both medians, the median and interquartile
    range of the paired new/old ratios, and whether the two outputs are identical."""
    this_etf = nearest_etf
    rows = []
    for d, C, dtype_name, backward in cases:
        H, P = step_problem(d, C, getattr(torch, dtype_name), "cpu")

        def call(fn):
            h = H.clone().requires_grad_(backward)
            t = time.perf_counter()
            U = fn(h, P, 1e-3)
            if backward:
                U.sum().backward()
            return (time.perf_counter() - t) * 1e3

        identical = bool(torch.equal(this_etf(H, P, 1e-3), other.nearest_etf(H, P, 1e-3)))
        n = max(4, calls if d * C <= 3 * 10**5 else calls // 4)  # the C = 1000 cases take ~1 s a call
        call(this_etf), call(other.nearest_etf)  # warm-up
        t_old, t_new = [], []
        for i in range(n):
            if i % 2:
                t_old.append(call(other.nearest_etf)), t_new.append(call(this_etf))
            else:
                t_new.append(call(this_etf)), t_old.append(call(other.nearest_etf))
        ratios = sorted(b / a for a, b in zip(t_old, t_new))
        row = {"d": d, "C": C, "dtype": dtype_name, "what": "forward+backward" if backward else "forward",
               "calls": n, "old_ms": statistics.median(t_old), "new_ms": statistics.median(t_new),
               "ratio_median": statistics.median(ratios), "ratio_q1": ratios[len(ratios) // 4],
               "ratio_q3": ratios[(3 * len(ratios)) // 4], "identical_output": identical}
        rows.append(row)
        progress(f"  ({d}, {C}) {dtype_name} {row['what']}: new/old {row['ratio_median']:.3f}")
    return {"rows": rows, "provenance": bench_provenance("cpu")}


def format_paired(result: dict) -> str:
    head = (f"{'d':>5} {'C':>5} {'dtype':>8} {'':>16} | {'old ms':>9} {'new ms':>9} | "
            f"{'new/old':>7} {'IQR':>15} | calls  same output")
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(f"{r['d']:>5} {r['C']:>5} {r['dtype']:>8} {r['what']:>16} | {r['old_ms']:9.2f} {r['new_ms']:9.2f} | "
                     f"{r['ratio_median']:7.3f} [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}] | {r['calls']:>5}  "
                     f"{'yes' if r['identical_output'] else 'NO'}")
    lines.append("new/old: median of the paired ratios (calls back to back, order alternating); below 1: faster")
    return "\n".join(lines)
