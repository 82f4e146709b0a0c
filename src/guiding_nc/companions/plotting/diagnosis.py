"""Figures of the fixed-ETF diagnosis (book chapter 9): one candidate cause per variant.

:func:`plot_fixed_etf_diagnosis` reads the rows of ``data/results/fixed_etf_diagnosis`` and
draws, per variant and dataset, every seed's final train accuracy and the share of the
classifier's weight that sits on dead feature units.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from .style import MAX_WIDTH_IN
from ...training.config import config_title
from ...training.tables import band_text
from ..tables import Table

__all__ = ["plot_fixed_etf_diagnosis", "diagnosis_table_markdown"]

_MARKERS = ("o", "s", "^", "D", "v", "P")


def _configs(runs: Sequence[Mapping[str, Any]]):
    """The configs the rows hold, in order, each with its colour, marker and title (read from the
    dataset and model registries through :func:`~guiding_nc.training.config.config_title`)."""
    names = list(dict.fromkeys(str(r["config"]) for r in runs))
    return [(c, f"C{k % 10}", _MARKERS[k % len(_MARKERS)], config_title(c)) for k, c in enumerate(names)]


def _rows_by(runs: Sequence[Mapping[str, Any]], config: str, variant: str):
    return [r for r in runs if r["config"] == config and r["variant"] == variant]


def plot_fixed_etf_diagnosis(runs: Sequence[Mapping[str, Any]], *, variants: Sequence[str],
                             labels: Optional[Mapping[str, str]] = None) -> Figure:
    """Two stacked panels over the ``variants``: final train top-1 (%) of every seed with the
    median marked, and the share of the classifier's squared weight on dead units."""
    labels = dict(labels or {})
    configs = _configs(runs)
    fig = Figure(figsize=(MAX_WIDTH_IN, 6.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(variants))
    width = 0.72 / max(len(configs), 1)
    for k, (c, colour, marker, name) in enumerate(configs):
        off = (k - (len(configs) - 1) / 2) * width
        for i, v in enumerate(variants):
            rows = _rows_by(runs, c, v)
            acc = np.array([100 * float(r["train_top1"]) for r in rows])
            dead = np.array([float(r.get("train_dead_weight") or 0.0) for r in rows])
            if not len(acc):
                continue
            jitter = np.linspace(-0.06, 0.06, len(acc))
            top.scatter(x[i] + off + jitter, acc, s=14, color=colour, marker=marker, alpha=0.55, lw=0)
            top.plot([x[i] + off - 0.09, x[i] + off + 0.09], [np.median(acc)] * 2, color=colour, lw=2.2,
                     label=name if i == 0 else None)
            bottom.scatter(x[i] + off + jitter, 100 * dead, s=14, color=colour, marker=marker, alpha=0.7, lw=0,
                           label=name if i == 0 else None)
    for C in sorted({int(r["num_classes"]) for r in runs if r.get("num_classes")}):
        top.axhline(100 / C, color="0.5", ls=":", lw=1)
        top.text(-0.45, 100 / C + 1.5, f"chance ({C} classes)", fontsize=9, color="0.35", ha="left")
    top.axhline(90, color="k", ls="--", lw=0.8)
    top.set_ylabel("final train top-1 (%)")
    top.set_ylim(0, 102)
    top.set_title("Fixed ETF after 30 epochs: every seed (dots), median (bar)", fontsize=11)
    top.legend(fontsize=9, loc="center right", bbox_to_anchor=(1.0, 0.45))
    bottom.set_ylabel("classifier weight on\ndead units (%)")
    bottom.set_ylim(-4, 104)
    bottom.set_xticks(x, [labels.get(v, v) for v in variants], rotation=20, ha="right", fontsize=10)
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(labelsize=10)
    return fig


def diagnosis_table_markdown(runs: Sequence[Mapping[str, Any]], *, variants: Sequence[str],
                             labels: Optional[Mapping[str, str]] = None) -> str:
    """Median [min, max] final train top-1 (%) and median dead units per variant and dataset."""
    labels = dict(labels or {})
    configs = _configs(runs)
    head = "| variant | " + " | ".join(title for *_, title in configs) + " |"
    lines = [head, "|---|" + "---:|" * len(configs)]
    for v in variants:
        cells = []
        for c, *_ in configs:
            rows = _rows_by(runs, c, v)
            if not rows:
                cells.append("–")
                continue
            acc = [100 * float(r["train_top1"]) for r in rows]
            dead = [int(r.get("train_dead_units") or 0) for r in rows]
            cells.append(band_text(float(np.median(acc)), min(acc), max(acc), fmt=".1f")
                         + f"; dead units {int(np.median(dead))}")
        lines.append(f"| {labels.get(v, v)} | " + " | ".join(cells) + " |")
    return Table("\n".join(lines))
