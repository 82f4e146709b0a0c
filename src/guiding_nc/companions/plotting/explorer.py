"""Figures of the interactive UFM explorer (book page 06).

Every function returns a :class:`matplotlib.figure.Figure` with labelled axes, a title and a
legend.  Inputs are the objects of :mod:`guiding_nc.companions.explorer`:
:class:`~guiding_nc.companions.explorer.runs.ExplorerResult` (curves) and
:class:`~guiding_nc.companions.explorer.projection.ProjectionFrames` (class means moving towards the simplex ETF).

* :func:`plot_curves` -- loss, train accuracy, NC1, NC2, NC3 and the distance of the class
  means to their nearest simplex ETF against the optimiser step, one line per run.
* :func:`plot_projection` -- one run at one snapshot in the fixed 2-D basis: the class means
  (dots) with their trails since step 0, the classifier rows (crosses), the ETF nearest to the
  current means (stars) and the reference ETF that defines the basis (dashed simplex).
* :func:`plot_projection_panels` / :func:`plot_projection_grid` -- several runs side by side,
  at one snapshot or at several.
* :func:`plot_projection_3d` / :func:`plot_projection_3d_panels` -- the same in 3-D (C >= 4).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ...core.methods import METHODS, colour
from .style import MAX_WIDTH_IN, subplots

__all__ = [
    "METHOD_COLORS",
    "CURVE_PANELS",
    "class_colors",
    "plot_curves",
    "plot_projection",
    "plot_projection_panels",
    "plot_projection_grid",
    "plot_projection_3d",
    "plot_projection_3d_panels",
]

METHOD_COLORS: Dict[str, str] = {name: m.colour for name, m in METHODS.items()}  # the registry's

# (key, title, y label, log scale)
CURVE_PANELS: Tuple[Tuple[str, str, str, bool], ...] = (
    ("loss", "Training loss", "cross-entropy", True),
    ("top1", "Train accuracy", "top-1 accuracy (%)", False),
    ("nc1", "NC1: within-class variability", r"tr$(\Sigma_W\Sigma_B^\dagger)/C$", True),
    ("nc2", "NC2: classifier vs simplex ETF", r"$\|WW^\top$ − ETF$\|_F$ (normalised)", True),
    ("nc3", "NC3: classifier vs class means", r"$\|W\bar H$ − ETF$\|_F$ (normalised)", True),
    ("etf_distance", "Distance of the means to the nearest ETF", r"$\|\tilde H - U^\star\tilde M\|_F$", True),
)

_LOG_FLOOR = 1e-9


def class_colors(C: int) -> List:
    """One colour per class: tab10 up to 10 classes, then evenly spaced hues."""
    if C <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(C)]
    cmap = plt.get_cmap("hsv")
    return [cmap(i / C) for i in range(C)]


def _method_color(method: str, i: int) -> str:
    return colour(method, i)


def _labels(results: Sequence) -> List[str]:
    """Method labels, made unique with the settings that differ when a method repeats."""
    labels = [r.label for r in results]
    for i, r in enumerate(results):
        if labels.count(r.label) > 1:
            s = r.settings
            labels[i] = f"{r.label} (C={s.C}, d={s.d}, N={s.N}, {s.optimizer}, seed {s.seed})"
    return labels


def _series(result, key: str) -> Tuple[np.ndarray, np.ndarray]:
    if key == "etf_distance":
        return result.snapshot_steps, result.etf_distance
    y = np.asarray(result.metrics[key], dtype=float)
    if key == "top1":
        y = 100.0 * y
    return result.eval_steps, y


def plot_curves(results, *, panels: Sequence[str] = tuple(p[0] for p in CURVE_PANELS), logx: bool = True,
                title: Optional[str] = None) -> Figure:
    """Training curves of one or several explorer runs (an ``ExplorerResult`` or a sequence).

    ``panels``: keys of :data:`CURVE_PANELS`.  With ``logx`` the step axis is symmetric-log
    (linear on [0, 1], logarithmic after), so the fast first steps and the slow tail both show.
    Values below 1e-9 (e.g. NC2 of an exact ETF classifier, zero up to rounding) are drawn at
    1e-9.
    """
    if not isinstance(results, (list, tuple)):
        results = [results]
    if not results:
        raise ValueError("plot_curves needs at least one result")
    spec = {p[0]: p for p in CURVE_PANELS}
    unknown = [k for k in panels if k not in spec]
    if unknown:
        raise ValueError(f"unknown panel(s) {unknown}; choose from {list(spec)}")
    n = len(panels)
    ncols = min(2, n)
    nrows = -(-n // ncols)
    fig, axes = subplots(nrows, ncols, figsize=(MAX_WIDTH_IN, 3.0 * nrows + 0.5), squeeze=False,
                             constrained_layout=True)
    labels = _labels(results)
    for ax, key in zip(axes.flat, panels):
        _, ttl, ylab, logy = spec[key]
        for i, (r, lab) in enumerate(zip(results, labels)):
            x, y = _series(r, key)
            if len(x) == 0:
                continue
            if logy:
                y = np.where(np.isfinite(y), np.maximum(y, _LOG_FLOOR), np.nan)
            ax.plot(x, y, color=_method_color(r.method, i), lw=1.8, label=lab)
        if logy:
            ax.set_yscale("log")
        if logx:
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlim(left=0)
        ax.set_title(ttl, fontsize=10)
        ax.set_xlabel("optimiser step" + (" (symlog)" if logx else ""))
        ax.set_ylabel(ylab)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title is None:
        s = results[0].settings
        title = (f"UFM with C={s.C}, d={s.d}, N={s.N}; {s.optimizer}"
                 + (f" (gain {s.gain:g})" if s.optimizer == "agd" else f" (lr {s.effective_lr:g})")
                 + f", τ={s.tau:g}, seed {s.seed}")
    fig.suptitle(title, fontsize=11)
    return fig


# ------------------------------------------------------------------------------ projections
def _limit(frames, upto: int) -> float:
    pts = [frames.means[: upto + 1], frames.etf[upto], frames.classifier[upto], frames.reference]
    m = max(float(np.abs(p).max()) for p in pts if np.size(p))
    return 1.15 * m if m > 0 else 1.0


def _legend_handles(show_classifier: bool, show_reference: bool) -> List[Line2D]:
    h = [
        Line2D([], [], marker="o", color="0.3", ls="none", ms=7, label="class means (now)"),
        Line2D([], [], marker="o", color="0.3", mfc="none", ls="-", lw=0.8, ms=5, label="trail since step 0"),
        Line2D([], [], marker="*", color="0.3", mfc="none", ls="none", ms=11, label="ETF nearest to the means"),
    ]
    if show_classifier:
        h.append(Line2D([], [], marker="x", color="0.3", ls="none", ms=7, mew=1.8, label="classifier rows"))
    if show_reference:
        h.append(Line2D([], [], color="0.55", ls="--", lw=0.9, label="reference ETF (basis)"))
    return h


def plot_projection(frames, *, step: Optional[int] = None, ax=None, trails: bool = True,
                    show_classifier: bool = True, show_reference: bool = True, legend: bool = True,
                    title: Optional[str] = None) -> Figure:
    """One run at one snapshot (default: the last) in the fixed 2-D basis of ``frames``.

    Colours are classes.  Dots: the centred, normalised class means; thin lines: their path
    from step 0; stars: the simplex ETF nearest to the current means; crosses: the classifier
    rows ``W^T/||W||_F``; dashed: the reference ETF whose vertices define the basis (a regular
    polygon).  Axes are equal; the text box gives the share of ``||H~||^2`` inside the plane.
    """
    if frames.dims != 2:
        raise ValueError("plot_projection draws 2-D frames; use plot_projection_3d for dims=3")
    i = frames.index_of(-1 if step is None else int(step))
    if ax is None:
        fig, ax = subplots(figsize=(4.6, 4.6), constrained_layout=True)
    else:
        fig = ax.figure
    C = frames.num_classes
    cols = class_colors(C)
    if show_reference:
        R = frames.reference
        for a in range(C):
            for b in range(a + 1, C):
                ax.plot(R[[a, b], 0], R[[a, b], 1], color="0.55", ls="--", lw=0.8, zorder=1)
    for c in range(C):
        col = cols[c]
        if trails and i > 0:
            ax.plot(frames.means[: i + 1, c, 0], frames.means[: i + 1, c, 1], color=col, lw=0.9, alpha=0.6, zorder=2)
            ax.plot(frames.means[0, c, 0], frames.means[0, c, 1], "o", mfc="none", color=col, ms=5, zorder=2)
        ax.plot(frames.etf[i, c, 0], frames.etf[i, c, 1], "*", mfc="none", color=col, ms=13, mew=1.3, zorder=3)
        if show_classifier:
            ax.plot(frames.classifier[i, c, 0], frames.classifier[i, c, 1], "x", color=col, ms=8, mew=2, zorder=4)
        ax.plot(frames.means[i, c, 0], frames.means[i, c, 1], "o", color=col, ms=8, mec="k", mew=0.6, zorder=5)
    lim = _limit(frames, i)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.axhline(0, color="0.85", lw=0.6, zorder=0)
    ax.axvline(0, color="0.85", lw=0.6, zorder=0)
    ax.set_xlabel("ETF-plane axis 1")
    ax.set_ylabel("ETF-plane axis 2")
    ax.text(0.02, 0.02, f"{100 * frames.captured[i]:.0f}% of $\\|\\tilde H\\|^2$ in view", transform=ax.transAxes,
            fontsize=7, color="0.35")
    ax.set_title(title if title is not None else f"{frames.label or frames.method}: step {int(frames.steps[i])}",
                 fontsize=10)
    if legend:
        ax.legend(handles=_legend_handles(show_classifier, show_reference), fontsize=7, loc="upper right",
                  title="colour = class", title_fontsize=7)
    return fig


def plot_projection_panels(frames_list, *, step: Optional[int] = None, title: Optional[str] = None) -> Figure:
    """Several runs (one panel each) at the same snapshot, in each run's fixed 2-D basis."""
    if not isinstance(frames_list, (list, tuple)):
        frames_list = [frames_list]
    n = len(frames_list)
    if n == 0:
        raise ValueError("plot_projection_panels needs at least one ProjectionFrames")
    ncols = min(2, n)
    nrows = -(-n // ncols)
    fig, axes = subplots(nrows, ncols, figsize=(MAX_WIDTH_IN if n > 1 else 4.8, 3.9 * nrows + 1.1),
                             squeeze=False, constrained_layout=True)
    for ax, fr in zip(axes.flat, frames_list):
        plot_projection(fr, step=step, ax=ax, legend=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.legend(handles=_legend_handles(True, True), loc="outside lower center", ncol=3, fontsize=8,
               title="colour = class", title_fontsize=8)
    fr0 = frames_list[0]
    i = fr0.index_of(-1 if step is None else int(step))
    fig.suptitle(title or f"Class means in the plane of the final nearest ETF (step {int(fr0.steps[i])})",
                 fontsize=11)
    return fig


def plot_projection_grid(frames_list, steps: Sequence[int], *, title: Optional[str] = None) -> Figure:
    """Rows = runs, columns = snapshots (the nearest recorded step to each of ``steps``)."""
    if not isinstance(frames_list, (list, tuple)):
        frames_list = [frames_list]
    if not frames_list or not len(steps):
        raise ValueError("plot_projection_grid needs at least one run and one step")
    nr, nc = len(frames_list), len(steps)
    side = min(3.4, (MAX_WIDTH_IN - 0.4) / nc)
    fig, axes = subplots(nr, nc, figsize=(min(MAX_WIDTH_IN, side * nc + 0.4), (side + 0.5) * nr + 1.4),
                             squeeze=False, constrained_layout=True)
    for r, fr in enumerate(frames_list):
        lim = _limit(fr, len(fr.steps) - 1)
        lim = max(lim, max(_limit(fr, fr.index_of(int(s))) for s in steps))
        for c, s in enumerate(steps):
            ax = axes[r, c]
            i = fr.index_of(int(s))
            plot_projection(fr, step=int(fr.steps[i]), ax=ax, legend=False,
                            title=f"{fr.label or fr.method}\nstep {int(fr.steps[i])}")
            ax.title.set_fontsize(9)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.tick_params(labelsize=7)
            if c:
                ax.set_ylabel("")
            if r < nr - 1:
                ax.set_xlabel("")
    fig.legend(handles=_legend_handles(True, True), loc="outside lower center", ncol=3, fontsize=8,
               title="colour = class", title_fontsize=8)
    fig.suptitle(title or "Class means moving towards a simplex ETF\n(one fixed basis per run)", fontsize=11)
    return fig


def plot_projection_3d(frames, *, step: Optional[int] = None, ax=None, trails: bool = True,
                       legend: bool = True, title: Optional[str] = None) -> Figure:
    """One run at one snapshot in the fixed 3-D basis (C >= 4; for C = 4 the reference ETF is a
    regular tetrahedron drawn with dashed edges)."""
    if frames.dims != 3:
        raise ValueError("plot_projection_3d needs frames made with dims=3")
    i = frames.index_of(-1 if step is None else int(step))
    if ax is None:
        fig = Figure(figsize=(5.2, 5.0), layout="constrained")
        ax = fig.add_subplot(projection="3d")
    else:
        fig = ax.figure
    C = frames.num_classes
    cols = class_colors(C)
    R = frames.reference
    for a in range(C):
        for b in range(a + 1, C):
            ax.plot(R[[a, b], 0], R[[a, b], 1], R[[a, b], 2], color="0.55", ls="--", lw=0.8)
    for c in range(C):
        col = cols[c]
        if trails and i > 0:
            ax.plot(*(frames.means[: i + 1, c, k] for k in range(3)), color=col, lw=0.9, alpha=0.6)
        ax.scatter(*frames.etf[i, c], marker="*", s=140, facecolors="none", edgecolors=[col], linewidths=1.2)
        ax.scatter(*frames.classifier[i, c], marker="x", s=50, color=[col], linewidths=2)
        ax.scatter(*frames.means[i, c], marker="o", s=55, color=[col], edgecolors="k", linewidths=0.6,
                   depthshade=False)
    lim = _limit(frames, i)
    for set_lim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        set_lim(-lim, lim)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("ETF axis 1", fontsize=8)
    ax.set_ylabel("ETF axis 2", fontsize=8)
    ax.set_zlabel("ETF axis 3", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title if title is not None else f"{frames.label or frames.method}: step {int(frames.steps[i])}",
                 fontsize=10)
    if legend:
        ax.legend(handles=_legend_handles(True, True), fontsize=7, loc="upper left", title="colour = class",
                  title_fontsize=7)
    return fig


def plot_projection_3d_panels(frames_list, *, step: Optional[int] = None, title: Optional[str] = None) -> Figure:
    """Several runs side by side in 3-D at the same snapshot."""
    if not isinstance(frames_list, (list, tuple)):
        frames_list = [frames_list]
    n = len(frames_list)
    if n == 0:
        raise ValueError("plot_projection_3d_panels needs at least one ProjectionFrames")
    ncols = min(2, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(MAX_WIDTH_IN if n > 1 else 5.0, 4.2 * nrows + 1.1), layout="constrained")
    for k, fr in enumerate(frames_list):
        ax = fig.add_subplot(nrows, ncols, k + 1, projection="3d")
        plot_projection_3d(fr, step=step, ax=ax, legend=False)
    fig.legend(handles=_legend_handles(True, True), loc="outside lower center", ncol=3, fontsize=8,
               title="colour = class", title_fontsize=8)
    fr0 = frames_list[0]
    i = fr0.index_of(-1 if step is None else int(step))
    fig.suptitle(title or f"3-D view: class means and the nearest ETF (step {int(fr0.steps[i])})", fontsize=11)
    return fig
