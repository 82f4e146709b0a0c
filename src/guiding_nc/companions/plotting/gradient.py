"""Figures for chapter 5, "Differentiating through the nearest ETF".

Each function takes plain numbers (lists or arrays, e.g. from
:mod:`guiding_nc.companions.gradient_checks`) and returns a :class:`matplotlib.figure.Figure`
with labelled axes and a legend.  Nothing is computed here.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

from matplotlib.figure import Figure

from .style import MAX_WIDTH_IN, subplots

__all__ = ["plot_collapse_gradient_error", "plot_delta_conditioning", "plot_memory_vs_classes"]

_COLLAPSE_SERIES = (
    ("svd_float64", "autograd through SVD, float64", "C3", "-", "o"),
    ("svd_float32", "autograd through SVD, float32", "C3", "--", "s"),
    ("closed_float64", "closed-form adjoint, float64", "C0", "-", "o"),
    ("closed_float32", "closed-form adjoint, float32", "C0", "--", "s"),
)


def plot_collapse_gradient_error(sweep: Mapping[str, Sequence[float]], *, cap: float = 10.0) -> Figure:
    """Relative gradient error against finite differences vs distance from a collapsed (ETF) point.

    ``sweep`` has keys ``distance`` and any of ``svd_float64, svd_float32,
    closed_float64, closed_float32`` (relative errors; ``inf`` for NaN/inf
    gradients), as returned by :func:`guiding_nc.companions.gradient_checks.collapse_sweep`.
    Non-finite gradients are drawn as crosses at ``cap`` on a shaded band.
    """
    fig, ax = subplots(figsize=(MAX_WIDTH_IN, 4.2))
    x = list(sweep["distance"])
    for key, label, color, ls, marker in _COLLAPSE_SERIES:
        if key not in sweep:
            continue
        y = list(sweep[key])
        # Finite errors as a line; NaN/inf gradients as crosses on the band (never joined to the line).
        good = [(xi, yi) for xi, yi in zip(x, y) if math.isfinite(yi)]
        bad = [(xi, cap) for xi, yi in zip(x, y) if not math.isfinite(yi)]
        handle = None
        if good:
            (handle,) = ax.plot(*zip(*good), color=color, ls=ls, marker=marker, ms=4, label=label)
        if bad:
            ax.plot(*zip(*bad), ls="none", marker="x", ms=9, mew=2, color=color,
                    label=None if handle is not None else label)
    ax.axhspan(cap / 2, cap * 2, color="0.85", zorder=0)
    ax.text(min(x), cap * 1.15, "NaN / inf gradient", fontsize=8, va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=cap * 4)
    ax.set_xlabel(r"distance from collapse $\|\tilde H - \tilde H_{\mathrm{ETF}}\|_F$ (unit-norm means)")
    ax.set_ylabel("relative error of $\\partial L/\\partial \\tilde H$\nvs central differences")
    ax.set_title("Gradient through the nearest ETF near neural collapse", fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def plot_delta_conditioning(sweep: Mapping[str, Sequence[float]]) -> Figure:
    """Two panels against the proximal coefficient ``delta`` (log-log).

    Left: the smallest eigenvalue of Prop. 1's ``G`` and the norms of ``dL/dH``
    and ``dL/dprox``.  Right: relative gap between the dense KKT and the
    closed-form ``dL/dH``.  ``sweep`` as returned by
    :func:`guiding_nc.companions.gradient_checks.delta_sweep`.
    """
    fig, (ax1, ax2) = subplots(1, 2, figsize=(MAX_WIDTH_IN, 3.8))
    x = list(sweep["delta"])
    ax1.plot(x, sweep["g_min"], "o-", ms=4, color="C2", label=r"smallest eigenvalue of $\mathbf{G}$")
    ax1.plot(x, sweep["grad_H_norm"], "s-", ms=4, color="C0", label=r"$\|\partial L/\partial \tilde H\|_F$")
    ax1.plot(x, sweep["grad_P_norm"], "^-", ms=4, color="C1", label=r"$\|\partial L/\partial U_{\mathrm{prox}}\|_F$")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel(r"proximal coefficient $\delta$")
    ax1.set_ylabel("value (dimensionless)")
    ax1.set_title(r"$\mathbf{G}$ becomes singular," "\n" r"the gradient does not", fontsize=10)
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.plot(x, sweep["kkt_vs_closed"], "o-", ms=4, color="C3", label="dense KKT vs closed form")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel(r"proximal coefficient $\delta$")
    ax2.set_ylabel(r"relative difference of $\partial L/\partial \tilde H$")
    ax2.set_title("Accuracy of the dense solve", fontsize=10)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_memory_vs_classes(
    curves: Mapping[str, tuple],
    points: Mapping[str, tuple],
    *,
    budget_gb: Optional[float] = 80.0,
) -> Figure:
    """Memory (bytes, log scale) against the number of classes ``C``.

    ``curves``: ``label -> (C_values, bytes)`` drawn as lines (e.g. the dense
    KKT requirement at fixed ``d``).  ``points``: ``label -> (C_values, bytes)``
    drawn as markers (measurements, the paper's Table 3).  ``None`` entries are
    skipped.  ``budget_gb`` draws the memory of one accelerator as a
    horizontal line.
    """
    fig, ax = subplots(figsize=(MAX_WIDTH_IN, 4.4))
    ax.set_xscale("log")
    ax.set_yscale("log")
    styles = ["-", "--", ":", "-."]
    for k, (label, (cs, ys)) in enumerate(curves.items()):
        ax.plot(cs, ys, ls=styles[k % len(styles)], color=f"C{3 + k}", label=label)
    markers = ["o", "s", "D", "^", "v"]
    for k, (label, (cs, ys)) in enumerate(points.items()):
        pts = [(c, y) for c, y in zip(cs, ys) if y is not None and y > 0]
        if pts:
            ax.plot(*zip(*pts), ls="none", marker=markers[k % len(markers)], ms=7, mfc="none", mew=1.6,
                    color=f"C{k}", label=label)
    if budget_gb:
        ax.axhline(budget_gb * 2 ** 30, color="0.3", lw=1, ls=(0, (1, 2)))
        ax.text(ax.get_xlim()[1] * 0.9, budget_gb * 2 ** 30 * 1.3, f"{budget_gb:g} GiB accelerator",
                fontsize=8, color="0.3", ha="right")
    ax.set_xlabel("number of classes $C$")
    ax.set_ylabel("memory of the layer's backward (bytes)")
    ax.set_title("Memory of the gradient through the nearest ETF")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
