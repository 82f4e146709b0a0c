"""Figures and tables of the head-start-free UFM comparison (book chapter 8).

The comparison trains the three classifiers from the mean-free start (every classifier at
chance before the first step) with three optimisers at three UFM sizes; these functions draw
the exact per-step loss gap to the cross-entropy lower bound and tabulate the steps each
method needed to reach the thresholds fixed before the runs.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from ...core import methods
from ...experiments.measures import step_counts
from ...core.metric_formulas import cross_entropy_lower_bound
from ...training.tables import band_text
from .style import MAX_WIDTH_IN, tidy_log_x
from .. import tables
from ..tables import Table

__all__ = ["plot_loss_gap_grid", "steps_table_markdown", "head_start_table_markdown"]

OPTIMISER_TITLES = {"agd": "AGD, gain 10", "adam": "Adam", "sgd": "SGD, momentum 0.9"}


def _gap_bands(step_loss: Mapping[str, Sequence[float]], config: str, variant: str, num_classes: int,
               tau: float) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]]:
    bound = cross_entropy_lower_bound(num_classes, tau)
    scale = math.log(num_classes) - bound
    runs: Dict[str, List[np.ndarray]] = defaultdict(list)
    for key, losses in step_loss.items():
        c, v, m, _ = key.split("/")
        if c == config and v == variant and losses:
            runs[m].append((np.asarray(losses, dtype=float) - bound) / scale)
    out = {}
    for m, rs in runs.items():
        n = min(len(r) for r in rs)
        a = np.maximum(np.stack([r[:n] for r in rs]), 1e-9)
        out[m] = (np.arange(n), np.median(a, 0), a.min(0), a.max(0), len(rs))
    return out


def plot_loss_gap_grid(step_loss: Mapping[str, Sequence[float]], *, configs: Sequence[str],
                       variants: Sequence[str], num_classes: Mapping[str, int], tau: float, threshold: float,
                       titles: Optional[Mapping[str, str]] = None) -> Figure:
    """Rows: UFM sizes; columns: optimisers.  Each panel: the full-batch training loss after each
    step as a fraction of its chance-level gap, ``(L_t - L*) / (log C - L*)``, median over seeds
    (band: min-max) for each method, with the threshold of the comparison."""
    fig = Figure(figsize=(MAX_WIDTH_IN, 2.5 * len(configs) + 0.6), layout="constrained")
    axes = fig.subplots(len(configs), len(variants), squeeze=False, sharey=True)
    for r, c in enumerate(configs):
        for k, v in enumerate(variants):
            ax = axes[r][k]
            bands = _gap_bands(step_loss, c, v, num_classes[c], tau)
            for i, m in enumerate(methods.PAPER_METHODS):
                if m not in bands:
                    continue
                xs, med, lo, hi, n = bands[m]
                ax.plot(xs + 1, med, lw=1.6, color=methods.colour(m, i), ls=methods.line_style(m),
                        label=methods.label(m))
                ax.fill_between(xs + 1, lo, hi, color=methods.colour(m, i), alpha=0.18, lw=0)
            ax.axhline(threshold, color="k", ls=":", lw=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(1e-4, 2.0)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=9)
            if r == 0:
                ax.set_title(OPTIMISER_TITLES.get(v, v), fontsize=10)
            if r == len(configs) - 1:
                ax.set_xlabel("step + 1 (full batch)", fontsize=9)
            if k == 0:
                ax.set_ylabel(f"{(titles or {}).get(c, c)}\nloss gap (fraction)", fontsize=9)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(r"$(L_t - L^\ast)/(\log C - L^\ast)$ from the mean-free start; dotted: the threshold",
                 fontsize=10)
    return tidy_log_x(fig)


def steps_table_markdown(runs: Sequence[Mapping[str, Any]], *, configs: Sequence[str], variants: Sequence[str],
                         key: str, titles: Optional[Mapping[str, str]] = None) -> str:
    """Median [min, max] over seeds of the step count ``key`` ("never": not within the budget),
    one row per (UFM size, optimiser), one column per method, the fastest in bold
    (:mod:`guiding_nc.companions.tables`)."""
    rows = []
    for c in configs:
        for v in variants:
            rows.append([(titles or {}).get(c, c), OPTIMISER_TITLES.get(v, v)]
                        + [tables.band("steps_to_fit", step_counts(runs, c, v, m, key)) for m in methods.PAPER_METHODS])
    return tables.table(["UFM", "optimiser", *(methods.label(m) for m in methods.PAPER_METHODS)], rows,
                        best=["lower"] * len(rows), align="llrrr")


def head_start_table_markdown(runs: Sequence[Mapping[str, Any]], *, configs: Sequence[str],
                              titles: Optional[Mapping[str, str]] = None) -> str:
    """Train accuracy before the first step (%), median [min, max] over every run of a size and
    method, against chance (1/C)."""
    lines = ["| UFM | chance | " + " | ".join(methods.label(m) for m in methods.PAPER_METHODS) + " |",
             "|---|---:|" + "---:|" * len(methods.PAPER_METHODS)]
    for c in configs:
        rows = [r for r in runs if r["config"] == c]
        if not rows:
            continue
        C = int(rows[0]["num_classes"])
        cells = []
        for m in methods.PAPER_METHODS:
            acc = [100 * float(r["train_top1_step0"]) for r in rows if r["method"] == m and
                   r.get("train_top1_step0") is not None]
            cells.append(band_text(float(np.median(acc)), min(acc), max(acc), fmt=".2f") if acc else "–")
        lines.append(f"| {(titles or {}).get(c, c)} | {100 / C:.2f} | " + " | ".join(cells) + " |")
    return Table("\n".join(lines))
