"""Figures for the chapter "Why the implicit ETF speeds training: reduction mappings, measured"
(``book/13_reduction_mappings.md``).

Every function takes the plain rows written by :mod:`guiding_nc.research.reduction_mappings`
(dicts of numbers) and returns a :class:`matplotlib.figure.Figure` with labelled axes.  Nothing
is computed here beyond medians and ratios.

Units: the objective is a mean cross-entropy in nats; the variables are feature (and
classifier) entries, so Hessian eigenvalues, PL ratios and the smoothness constant are in
nats per squared unit of those entries; the condition-number proxy is dimensionless.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

from matplotlib.figure import Figure

from ...core import methods
from .style import MAX_WIDTH_IN, panel_grid, subplots

__all__ = ["METHOD_STYLE", "plot_trajectory_panels", "plot_reduction_vs_full", "plot_collapse_spectra",
           "plot_kappa_vs_steps"]

#: Colour and label of each parametrisation (shared by every figure of the chapter): the
#: registry's colours for the three that are the paper's methods (free W is the standard one).
METHOD_STYLE = {
    "free": (methods.colour("standard"), "free W, b (learned)"),
    "fixed": (methods.colour("fixed"), "fixed ETF"),
    "implicit": (methods.colour("implicit"), "implicit nearest ETF"),
    "affine": ("C4", "affine: W = centred means"),
}
_CURV_UNIT = "nats / unit²"


def _check_rows(rows, name="rows"):
    if not isinstance(rows, (list, tuple)) or not rows:
        raise ValueError(f"{name} must be a non-empty list of dicts")
    if not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(f"every entry of {name} must be a dict")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _series(rows, config, method, seed, key):
    pts = [(r["step"], r[key]) for r in rows
           if r["config"] == config and r["method"] == method and r["seed"] == seed and _finite(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_trajectory_panels(rows: Sequence[Mapping], convergence: Mapping[str, Mapping], config: str,
                           *, methods: Sequence[str] = tuple(METHOD_STYLE)) -> Figure:
    """Six panels against the gradient step for one configuration, one line per (method, seed).

    Top: objective gap ``F - f*`` (every step, from ``convergence``), top Hessian eigenvalue
    ``lambda_max``, bottom eigenvalue ``lambda_min`` (symmetric-log axis).  Bottom: PL ratio
    ``||∇F||² / (2 (F - f*))``, condition-number proxy ``lambda_max / PL``, step size ``1/lambda_max``.
    The first seed is drawn solid, other seeds thin.
    ``rows``: recorded points (``config, method, seed, step, lambda_max, ...``); ``convergence``:
    ``{"config/method/seed": {"gap": [...], "lr": [...]}}``.
    """
    _check_rows(rows)
    if not isinstance(convergence, Mapping):
        raise ValueError("convergence must be a dict {'config/method/seed': {'gap': [...]}}")
    mine = [r for r in rows if r["config"] == config]
    if not mine:
        raise ValueError(f"no rows for configuration {config!r}; have {sorted({r['config'] for r in rows})}")
    seeds = sorted({r["seed"] for r in mine})
    fig, axes = panel_grid(6, panel_height=2.7, extra_height=0.7)
    r0 = mine[0]
    for m in methods:
        color, label = METHOD_STYLE[m]
        for i, s in enumerate(seeds):
            kw = dict(color=color, lw=1.8 if i == 0 else 0.8, alpha=1.0 if i == 0 else 0.45,
                      label=label if i == 0 else None)
            c = convergence.get(f"{config}/{m}/{s}")
            if c is not None:
                pts = [(t, g) for t, g in enumerate(c["gap"]) if _finite(g) and g > 0]
                if pts:
                    axes[0].plot(*zip(*pts), **kw)
            for ax, key in zip(axes[1:], ("lambda_max", "lambda_min", "pl", "kappa", "lr")):
                x, y = _series(mine, config, m, s, key)
                if x:
                    ax.plot(x, y, marker="o", ms=2.5, **kw)
    titles = [("$F - f^\\star$ (nats)", "log", "objective gap"),
              (f"$\\lambda_{{\\max}}(\\nabla^2 F)$ ({_CURV_UNIT})", "log", "smoothness (top eigenvalue)"),
              (f"$\\lambda_{{\\min}}(\\nabla^2 F)$ ({_CURV_UNIT})", "symlog", "bottom eigenvalue"),
              (f"$\\|\\nabla F\\|^2 / 2(F-f^\\star)$\n({_CURV_UNIT})", "log", "PL ratio"),
              ("$\\lambda_{\\max}$ / PL ratio (dimensionless)", "log", "condition-number proxy $\\kappa$"),
              ("$1/\\lambda_{\\max}$ (unit² / nat)", "log", "step size used")]
    for ax, (ylabel, scale, title) in zip(axes, titles):
        if scale == "symlog":
            ax.set_yscale("symlog", linthresh=1e-6)
        else:
            ax.set_yscale(scale)
        ax.set_xlabel("gradient step")
        ax.set_ylabel(ylabel, fontsize=8.5)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7.5)
    fig.suptitle(f"{config}: C = {r0['num_classes']}, n = {r0['n_per_class']} per class, d = {r0['dim']}\n"
                 f"({r0['measure']} Hessians; {len(seeds)} seed(s), first solid)", fontsize=11)
    return fig


def plot_reduction_vs_full(rows: Sequence[Mapping]) -> Figure:
    """Each reduction against the full (free) problem at the lifted point ``Phi(H)``, per recorded step.

    Left: ``lambda_max`` of ``∇²F`` in the pullback metric divided by ``lambda_max`` of the free
    problem's Hessian at ``Phi(H)`` (below 1: the reduction is smoother).  Right: the chain-rule
    correction ``||∇²F - Jᵀ ∇²f J||_2`` relative to ``lambda_max(∇²F)`` (zero for affine maps).
    Only rows with exact Hessians carry these numbers.
    """
    _check_rows(rows)
    exact = [r for r in rows if _finite(r.get("pb_lambda_max")) and _finite(r.get("base_lambda_max"))]
    if not exact:
        raise ValueError("no rows with exact (pullback-metric) Hessian measurements")
    fig, (a1, a2) = panel_grid(2, ncols=1, panel_height=3.0, extra_height=1.4)
    configs = sorted({r["config"] for r in exact}, key=lambda c: [r["num_classes"] for r in exact if r["config"] == c][0])
    styles = ["-", "--", ":", "-."]
    for m in ("fixed", "affine", "implicit"):
        color, label = METHOD_STYLE[m]
        for ci, cfg in enumerate(configs):
            for si, s in enumerate(sorted({r["seed"] for r in exact if r["config"] == cfg})):
                pts = [(r["step"], r["pb_lambda_max"] / r["base_lambda_max"], r.get("correction_norm"), r["lambda_max"])
                       for r in exact if r["config"] == cfg and r["method"] == m and r["seed"] == s
                       and r["base_lambda_max"] > 0]
                if not pts:
                    continue
                lab = f"{label}, {cfg}" if si == 0 else None
                kw = dict(color=color, ls=styles[ci % len(styles)], lw=1.2 if si == 0 else 0.6,
                          alpha=1.0 if si == 0 else 0.5)
                a1.plot([p[0] for p in pts], [p[1] for p in pts], label=lab, **kw)
                corr = [(p[0], max(p[2] / p[3], 1e-18)) for p in pts if _finite(p[2]) and p[3] > 0]
                if corr:
                    a2.plot(*zip(*corr), label=lab, **kw)
    a1.axhline(1.0, color="k", lw=0.8)
    a1.text(0.01, 1.0, " equal smoothness", transform=a1.get_yaxis_transform(), va="bottom", fontsize=8)
    a1.set_yscale("log")
    a1.set_xlabel("gradient step")
    a1.set_ylabel("$\\lambda_{\\max}$ reduced (pullback)\n/ $\\lambda_{\\max}$ full at $\\Phi(H)$",
                  fontsize=9)
    a1.set_title("Smoothness of each reduction relative to the full problem", fontsize=10)
    a2.set_yscale("log")
    a2.set_xlabel("gradient step")
    a2.set_ylabel("$\\|\\nabla^2F - J^\\top\\nabla^2 f J\\|_2$\n$/ \\lambda_{\\max}(\\nabla^2 F)$", fontsize=9)
    a2.set_title("Second-order correction term of the reduction", fontsize=10)
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
    handles, names = a1.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=2, fontsize=7.5)
    return fig


def plot_collapse_spectra(spectra: Mapping[str, Mapping], *, rel_tol: float = 1e-7, title: Optional[str] = None) -> Figure:
    """Sorted Hessian eigenvalues at the collapsed minimiser, one line per parametrisation.

    ``spectra``: ``{method: {"euclidean": [eigenvalues], "pullback": [...] or None}}`` (as in
    ``spectra.json["<config>"]["collapse"]``).  Positive eigenvalues are drawn in decreasing order on
    a log axis (the pullback-metric spectrum dashed); eigenvalues with ``|lambda| <= rel_tol max|lambda|``
    form the kernel (the solution manifold's tangent directions) and are counted in the legend.
    """
    if not isinstance(spectra, Mapping) or not spectra:
        raise ValueError("spectra must be a non-empty dict {method: {'euclidean': [...], 'pullback': [...]}}")
    fig, ax = subplots(figsize=(MAX_WIDTH_IN, 6.4), layout="constrained")
    for m, e in spectra.items():
        if m not in METHOD_STYLE:
            raise ValueError(f"unknown method {m!r} in spectra")
        color, label = METHOD_STYLE[m]
        for key, ls in (("euclidean", "-"), ("pullback", "--")):
            ev = e.get(key)
            if not ev or (key == "pullback" and m == "free"):
                continue
            scale = max(abs(v) for v in ev)
            pos = sorted((v for v in ev if v > rel_tol * scale), reverse=True)
            kern = sum(1 for v in ev if abs(v) <= rel_tol * scale)
            name = f"{label}{' (pullback metric)' if key == 'pullback' else ''}: {len(ev)} eigenvalues, kernel {kern}"
            ax.plot(range(1, len(pos) + 1), pos, ls=ls, color=color, marker="." if key == "euclidean" else None,
                    ms=3, label=name)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("index of the positive eigenvalue (decreasing order)")
    ax.set_ylabel(f"Hessian eigenvalue at the minimiser ({_CURV_UNIT})")
    ax.set_title(title or "Spectra at neural collapse: top = smoothness, last = Morse–Bott constant", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    # One column below the axes: the entries are long, and two columns ran past the figure's edge.
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=1, fontsize=7.5)
    return fig


def plot_kappa_vs_steps(runs: Sequence[Mapping], *, tolerance: float = 1e-8) -> Figure:
    """Late-phase condition-number proxy against the steps each run needed to reach the tolerance.

    ``runs``: per-run summaries with ``config, method, late_kappa, steps_to_tol`` and the step budget
    implied by ``steps_budget`` (if absent, the largest ``steps_to_tol`` seen).  Runs that never reached
    the tolerance sit on the right edge (open markers); runs without a late-phase kappa sit on the top edge.
    """
    _check_rows(runs, "runs")
    fig, ax = subplots(figsize=(MAX_WIDTH_IN, 4.5))
    reached = [r["steps_to_tol"] for r in runs if r.get("steps_to_tol") is not None]
    budget = max([r.get("steps_budget") or 0 for r in runs] + reached + [1])
    kappas = [r["late_kappa"] for r in runs if _finite(r.get("late_kappa"))]
    ktop = max(kappas) * 2 if kappas else 10.0
    markers = ["o", "s", "^", "D", "v", "P"]
    configs = sorted({r["config"] for r in runs})
    for m, (color, label) in METHOD_STYLE.items():
        for ci, cfg in enumerate(configs):
            sel = [r for r in runs if r["method"] == m and r["config"] == cfg]
            if not sel:
                continue
            for j, r in enumerate(sel):
                x = r["steps_to_tol"] if r.get("steps_to_tol") is not None else budget * 1.05
                y = r["late_kappa"] if _finite(r.get("late_kappa")) else ktop
                open_marker = r.get("steps_to_tol") is None or not _finite(r.get("late_kappa"))
                ax.plot([x], [y], ls="none", marker=markers[ci % len(markers)], ms=7,
                        mfc="none" if open_marker else color, mec=color,
                        label=f"{label}, {cfg}" if j == 0 else None)
    ax.axvline(budget * 1.025, color="0.6", lw=0.8)
    ax.text(budget * 1.03, ax.get_ylim()[0] if kappas else 1, "not reached", rotation=90, fontsize=7, va="bottom")
    ax.set_yscale("log")
    ax.set_xlabel(f"gradient steps to reach $F - f^\\star \\leq$ {tolerance:g} (nats)")
    ax.set_ylabel("late-phase $\\kappa$ = median $\\lambda_{\\max}$ / PL (dimensionless)")
    ax.set_title("Better conditioning, fewer steps?", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig
