"""Figures and tables for chapters 3 ("The nearest simplex ETF") and 4 ("Lagrange multipliers").

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` with labelled axes and a
title or legend; it computes nothing about the problem itself, only draws the numbers it is given.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from .style import MAX_WIDTH_IN, panel_grid, subplots
from ..tables import Table

__all__ = [
    "plot_null_space_family",
    "plot_delta_path",
    "plot_convergence",
    "plot_benchmark",
    "benchmark_markdown",
    "provenance_lines",
    "plot_gram_matrix",
    "plot_taylor_remainders",
]

_TINY = 1e-300


def _floor(values, floor: float = 1e-17):
    """Values for a log axis: exact zeros are drawn at ``floor``."""
    return np.maximum(np.abs(np.asarray(values, dtype=float)), floor)


def plot_null_space_family(
    thetas: Sequence[float],
    objective_change: Sequence[float],
    orthonormality: Sequence[float],
    prox_distance: Sequence[float],
    theta_closest: Optional[float] = None,
) -> Figure:
    """Eq. 6 along the family ``U(theta)`` (left) and the proximal term along it (right).

    ``objective_change[i] = |f_6(U(theta_i)) - f_6(U(0))|``, ``orthonormality[i] = max|U^T U - I|``,
    ``prox_distance[i] = ||U(theta_i) - U_prox||_F^2 / 2``.
    """
    th = np.asarray(thetas, dtype=float)
    fig, (a, b) = subplots(1, 2, figsize=(MAX_WIDTH_IN, 4.2))
    a.semilogy(th, _floor(objective_change), "o-", ms=3, label=r"$|f_6(U(\theta)) - f_6(U(0))|$")
    a.semilogy(th, _floor(orthonormality), "s--", ms=3, label=r"$\max|U(\theta)^\top U(\theta) - I|$")
    a.axhline(np.finfo(float).eps, color="grey", lw=0.8, ls=":", label="float64 machine epsilon\n(exact zeros drawn at 1e-17)")
    a.set_xlabel(r"rotation angle $\theta$ (rad)")
    a.set_ylabel("absolute value (log scale)")
    a.set_ylim(1e-18, 1e-10)
    a.set_title("Eq. 6 is flat along the family", fontsize=10)
    a.legend(fontsize=7.5, loc="upper right")
    b.plot(th, prox_distance, "-", color="C2", label=r"$\frac{1}{2}\|U(\theta) - U_{\mathrm{prox}}\|_F^2$")
    if theta_closest is not None and math.isfinite(theta_closest):
        b.axvline(theta_closest, color="C3", ls="--", label=r"member picked as $\delta \to 0$")
    b.set_xlabel(r"rotation angle $\theta$ (rad)")
    b.set_ylabel("proximal term (dimensionless)")
    b.set_title("the proximal term picks one member", fontsize=10)
    b.legend(fontsize=7.5)
    fig.tight_layout()
    return fig


def plot_delta_path(deltas: Sequence[float], to_limit: Sequence[float], to_prox: Sequence[float]) -> Figure:
    """Distance of ``U*(delta)`` to the ``delta -> 0`` limit and to the proximal point, against ``delta``."""
    fig, ax = subplots(figsize=(6, 4))
    ax.loglog(deltas, _floor(to_limit), "o-", ms=4, label=r"$\|U^\star(\delta) - U^\star_{0}\|_F$ (to the $\delta\to 0$ limit)")
    ax.loglog(deltas, _floor(to_prox), "s-", ms=4, label=r"$\|U^\star(\delta) - U_{\mathrm{prox}}\|_F$ (to the proximal point)")
    d = np.asarray(deltas, dtype=float)
    ref = np.asarray(to_limit, dtype=float)
    i = len(d) // 4
    ax.loglog(d, ref[i] * d / d[i], ":", color="grey", label=r"reference slope 1")
    ax.set_xlabel(r"proximal coefficient $\delta$")
    ax.set_ylabel("Frobenius distance")
    ax.set_title(r"Eq. 7 interpolates between Eq. 6 and $U_{\mathrm{prox}}$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_convergence(histories: Mapping[str, Sequence[float]], optimum: float) -> Figure:
    """Objective value per iteration (left) and its gap to the closed-form optimum (right, log scale)."""
    fig, (a, b) = subplots(1, 2, figsize=(MAX_WIDTH_IN, 3.8))
    for k, (name, hist) in enumerate(histories.items()):
        it = np.arange(len(hist))
        a.plot(it, hist, "-", color=f"C{k}", label=name)
        b.semilogy(it, _floor(np.asarray(hist, dtype=float) - optimum), "-", color=f"C{k}", label=name)
    a.axhline(optimum, color="k", ls="--", lw=1, label="closed-form optimum")
    a.set_xscale("symlog", linthresh=10)
    a.set_xlim(left=0)
    a.set_xlabel("iteration")
    a.set_ylabel("objective of Eq. 7")
    a.set_title("objective value", fontsize=10)
    a.legend(fontsize=8)
    b.axhline(np.finfo(float).eps * max(abs(optimum), 1.0), color="grey", ls=":", lw=0.8, label="machine precision")
    b.set_xscale("symlog", linthresh=10)
    b.set_xlim(left=0)
    b.set_xlabel("iteration")
    b.set_ylabel(r"$f(U_k) - f(U^\star_{\mathrm{closed}})$")
    b.set_title("gap to the closed-form optimum", fontsize=10)
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_benchmark(result: Mapping) -> Figure:
    """Forward time of the closed form and the trust-region solver against ``C`` (log-log).

    ``result`` is the JSON written by ``python -m guiding_nc.bench etf``; each point is
    labelled with its feature dimension ``d``.
    """
    rows = sorted(result["rows"], key=lambda r: (r["C"], r["d"]))
    fig, ax = subplots(figsize=(6.5, 4.2))
    C = [r["C"] for r in rows]
    cf = [r["cf_forward_ms"] for r in rows]
    tr = [r["tr_forward_ms"] for r in rows]
    ax.loglog(C, tr, "s-", color="C1", label="Riemannian trust-region (pymanopt, paper)")
    ax.loglog(C, cf, "o-", color="C0", label="closed form (polar='auto')")
    if all("cf_svd_forward_ms" in r for r in rows):
        ax.loglog(C, [r["cf_svd_forward_ms"] for r in rows], "o--", color="C2", alpha=0.8,
                  label="closed form, SVD route")
    for r in rows:
        mark = "*" if r.get("tr_stopped_by_time") else ""
        ax.annotate(f"d={r['d']}{mark}", (r["C"], r["tr_forward_ms"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.annotate(f"d={r['d']}", (r["C"], r["cf_forward_ms"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if any(r.get("tr_stopped_by_time") for r in rows):
        ax.plot([], [], " ", label="* trust-region stopped by its time cap")
    ax.set_xlabel("number of classes $C$")
    ax.set_ylabel("forward time (ms, log scale)")
    device = result.get("provenance", {}).get("device", "")
    ax.set_title(f"nearest simplex ETF, forward only\n{device}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def benchmark_markdown(result: Mapping) -> str:
    """The forward columns of the benchmark as a Markdown table.

    Files written before the two polar routes existed have no route, SVD-route or checks
    columns; those cells show a dash.
    """
    head = (
        "| $d$ | $C$ | closed form (ms) | route | SVD route (ms) | input checks (ms) | trust-region (ms) | "
        "TR iterations | speed-up | $f_{\\mathrm{TR}} - f_{\\mathrm{closed}}$ |\n"
        "|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    fmt = lambda r, key: f"{r[key]:.2f}" if r.get(key) is not None else "–"
    for r in sorted(result["rows"], key=lambda r: (r["C"], r["d"])):
        star = " (time cap)" if r.get("tr_stopped_by_time") else ""
        lines.append(
            f"| {r['d']} | {r['C']} | {r['cf_forward_ms']:.2f} | {r.get('cf_polar_route', '–')} | "
            f"{fmt(r, 'cf_svd_forward_ms')} | {fmt(r, 'checks_ms')} | {r['tr_forward_ms']:.0f}{star} | "
            f"{r['tr_iterations']} | {r['speedup']:.0f}× | {r['objective_gap']:.1e} |"
        )
    return Table("\n".join(lines))


def provenance_lines(result: Mapping) -> str:
    """The benchmark's provenance (command, commit, date, device, versions) as plain text."""
    p = result.get("provenance", {})
    keys = ["command", "git_commit", "date", "device", "threads", "thread_pools", "torch", "python", "pymanopt", "repeats",
            "tr_repeats", "tr_cap_s", "notes"]
    return "\n".join(f"{k:>10}: {p[k]}" for k in keys if k in p)


def plot_gram_matrix(G, labels: Sequence[str]) -> Figure:
    """Heat map of a Gram matrix of constraint gradients (Eq. 38), with its block structure."""
    G = np.asarray(G, dtype=float)
    n = G.shape[0]
    fig, ax = subplots(figsize=(5.6, 4.8))
    vmax = max(float(np.abs(G).max()), _TINY)
    im = ax.imshow(G, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    for i in range(n):
        for j in range(n):
            if abs(G[i, j]) > 1e-12 * vmax:
                colour = "white" if abs(G[i, j]) > 0.6 * vmax else "black"
                ax.text(j, i, f"{G[i, j]:.0f}", ha="center", va="center", fontsize=7, color=colour)
    tick = []
    for lab in labels:
        name, _, sub = lab.partition("_")
        tick.append(f"${name}_{{{sub}}}$" if sub else f"${name}$")
    ax.set_xticks(range(n), tick, rotation=90, fontsize=7)
    ax.set_yticks(range(n), tick, fontsize=7)
    C = sum(1 for lab in labels if "," not in lab)
    ax.axhline(C - 0.5, color="k", lw=0.8)
    ax.axvline(C - 0.5, color="k", lw=0.8)
    ax.set_xlabel(r"constraint $h_k$ (column)")
    ax.set_ylabel(r"constraint $f_i$ (row)")
    ax.set_title(r"Gram matrix $\langle \nabla h_k, \nabla f_i\rangle$ at a Stiefel point")
    fig.colorbar(im, ax=ax, shrink=0.8, label="inner product")
    fig.tight_layout()
    return fig


def plot_taylor_remainders(ts: Sequence[float], panels: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Log-log Taylor remainders against the step ``t``, one panel per entry of ``panels``.

    ``panels`` maps a panel title to ``{curve label: remainders}``.  Reference lines of
    slope 2 and 3 are drawn in every panel.
    """
    t = np.asarray(ts, dtype=float)
    fig, axes = panel_grid(len(panels), panel_height=3.6)
    for ax, (title, curves) in zip(axes, panels.items()):
        markers = "os^vD"
        for k, (label, r) in enumerate(curves.items()):
            ax.loglog(t, _floor(r, 1e-18), markers[k % len(markers)] + "-", ms=3, label=label)
        tm = t[len(t) // 2]
        for slope, style in ((2, "--"), (3, ":")):
            ax.loglog(t, 1e-1 * (t / tm) ** slope * tm**slope, style, color="grey", lw=1, label=f"slope {slope}")
        ax.set_ylim(1e-18, 10)
        ax.set_xlabel("step $t$ along the retraction curve")
        ax.set_ylabel("Taylor remainder (absolute)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    return fig
