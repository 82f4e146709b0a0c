"""Figures for chapter 2, "Simplex ETFs and the neural-collapse metrics".

Every function takes data computed elsewhere (by :mod:`guiding_nc` in the book page) and
returns a :class:`matplotlib.figure.Figure` with titled, labelled axes and legends.  Nothing
here computes a metric; the only arithmetic is the change of coordinates needed to draw
high-dimensional vectors in the plane or in 3-D.

Conventions as in the rest of the package: a matrix of class vectors has one **column** per
class, shape ``(d, C)``; features have one **row** per sample, shape ``(N, d)``; a classifier
``W`` has one row per class, shape ``(C, d)``.
"""
from __future__ import annotations

import math

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ...core import methods
from .style import MAX_WIDTH_IN, panel_grid

__all__ = [
    "span_coordinates",
    "plot_simplex_etfs",
    "plot_equiangular_gram_spectrum",
    "plot_nc_metric_histories",
    "plot_feature_collapse",
    "METRIC_PANELS",
]

# (history key, panel title, y label, log scale)
METRIC_PANELS: tuple[tuple[str, str, str, bool], ...] = (
    ("train_nc1", "NC1: within-class variability (Eq. 11)", r"$\mathrm{tr}(\Sigma_W\Sigma_B^\dagger)/C$", True),
    ("train_nc2", "NC2: classifier vs simplex ETF (Eq. 12)", "Frobenius distance", True),
    ("train_nc3", "NC3: self-duality (Eq. 13)", "Frobenius distance", True),
    ("train_equinorm", r"$W$–$\bar H$ equinorm (Eq. 15)", "|difference of coefficients of variation|", True),
    ("train_ncc_mismatch", "NC4: disagreement with nearest class mean (Eq. 14)", "fraction of samples", False),
    ("train_cosine_margin_mean", "mean cosine margin (Eq. 16)", "cosine margin", False),
)



def _np(x: Any) -> np.ndarray:
    """A float64 NumPy copy of a tensor or array-like (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def span_coordinates(vectors: Any, k: Optional[int] = None) -> np.ndarray:
    """Coordinates of the columns of ``vectors`` ``(d, C)`` in an orthonormal basis of their span.

    The basis is the ``k`` leading left singular vectors (default: the numerical rank), so
    lengths and angles are preserved exactly when ``k`` is the rank.  Returns ``(k, C)``.
    For a simplex ETF of ``C`` vertices the rank is ``C - 1``: a triangle in the plane for
    ``C = 3`` and a tetrahedron in 3-D for ``C = 4``.
    """
    V = _np(vectors)
    if V.ndim != 2:
        raise ValueError(f"vectors must be a (d, C) matrix, got shape {V.shape}")
    U, s, _ = np.linalg.svd(V, full_matrices=False)
    if k is None:
        k = int((s > s.max() * max(V.shape) * np.finfo(float).eps).sum()) if s.size and s.max() > 0 else 0
    if k < 1 or k > U.shape[1]:
        raise ValueError(f"k must be between 1 and {U.shape[1]}, got {k}")
    return U[:, :k].T @ V


def _class_colors(C: int) -> list:
    cmap = matplotlib.colormaps.get_cmap("tab10" if C <= 10 else "tab20")
    return [cmap(c % cmap.N) for c in range(C)]


def plot_simplex_etfs(etf_plane: Any, etf_space: Any) -> Figure:
    """The ``C = 3`` simplex ETF in its plane and the ``C = 4`` one (a regular tetrahedron) in 3-D.

    ``etf_plane``: ``(d, 3)`` simplex ETF (one column per vertex), e.g.
    ``simplex_etf(3, d, "random")``; ``etf_space``: ``(d, 4)``.  Each is drawn in an orthonormal
    basis of its own span (:func:`span_coordinates`), so lengths and angles are exact.
    """
    P = span_coordinates(etf_plane, 2)
    S = span_coordinates(etf_space, 3)
    if P.shape[1] != 3 or S.shape[1] != 4:
        raise ValueError(f"expected a 3-vertex and a 4-vertex ETF, got {P.shape[1]} and {S.shape[1]} columns")
    fig = Figure(figsize=(MAX_WIDTH_IN, 4.9), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    colors = _class_colors(4)
    r = float(np.linalg.norm(P[:, 0]))
    t = np.linspace(0, 2 * np.pi, 200)
    ax.plot(r * np.cos(t), r * np.sin(t), color="0.8", lw=1, label="circle of radius $\\|v_c\\|$")
    tri = np.concatenate([P, P[:, :1]], axis=1)
    ax.plot(tri[0], tri[1], color="0.4", lw=1, ls=":", label="simplex (triangle)")
    for c in range(3):
        ax.annotate("", xy=P[:, c], xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color=colors[c], lw=2))
        ax.scatter(*P[:, c], s=60, color=colors[c], zorder=3, label=f"vertex $v_{c + 1}$")
    cos01 = float(P[:, 0] @ P[:, 1] / (np.linalg.norm(P[:, 0]) * np.linalg.norm(P[:, 1])))
    ax.scatter([0], [0], marker="+", color="k", s=80, zorder=3, label="centroid (origin)")
    ax.text(0.02, 0.02, f"pairwise cosine = {cos01:.4f}\nangle = {np.degrees(np.arccos(cos01)):.1f}°",
            transform=ax.transAxes, fontsize=9, va="bottom")
    lim = 1.25 * r
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("coordinate 1 in the ETF's span")
    ax.set_ylabel("coordinate 2 in the ETF's span")
    ax.set_title("$C = 3$: in its plane\n(rank $C-1 = 2$)", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=7.5)
    ax.grid(alpha=0.3)

    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    for i in range(4):
        for j in range(i + 1, 4):
            ax3.plot(*np.stack([S[:, i], S[:, j]], axis=1), color="0.4", lw=1, ls=":",
                     label="simplex (tetrahedron edges)" if (i, j) == (0, 1) else None)
    for c in range(4):
        ax3.plot(*np.stack([np.zeros(3), S[:, c]], axis=1), color=colors[c], lw=2)
        ax3.scatter(*S[:, c], s=60, color=colors[c], depthshade=False, label=f"vertex $v_{c + 1}$")
    ax3.scatter([0], [0], [0], marker="+", color="k", s=80, label="centroid (origin)")
    cos_s = (S / np.linalg.norm(S, axis=0)).T @ (S / np.linalg.norm(S, axis=0))
    off = cos_s[~np.eye(4, dtype=bool)]
    ax3.set_title(f"$C = 4$: regular tetrahedron in 3-D\n(cosines in [{off.min():.4f}, {off.max():.4f}])",
                  fontsize=10)
    m = 1.1 * float(np.abs(S).max())
    tick = math.floor(10 * float(np.abs(S).max())) / 10  # three ticks per axis: -t, 0, t
    for name, axis, setlim in (("x", ax3.xaxis, ax3.set_xlim), ("y", ax3.yaxis, ax3.set_ylim),
                               ("z", ax3.zaxis, ax3.set_zlim)):
        setlim(-m, m)
        axis.set_ticks([-tick, 0.0, tick])
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.1f}"))
        ax3.tick_params(axis=name, labelsize=7.5, pad=1)
    ax3.set_xlabel("coord. 1", fontsize=8, labelpad=-2)
    ax3.set_ylabel("coord. 2", fontsize=8, labelpad=-2)
    ax3.set_zlabel("coord. 3", fontsize=8, labelpad=-2)
    ax3.set_box_aspect((1, 1, 1))
    ax3.view_init(elev=20, azim=35)
    ax3.legend(loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=2, fontsize=7.5)
    fig.suptitle("Simplex ETFs: equal norms, equal and maximal angles", fontsize=11)
    return fig


def plot_equiangular_gram_spectrum(cosines: Any, smallest_eigenvalues: Mapping[int, Any]) -> Figure:
    """Smallest eigenvalue of the Gram matrix ``(1 - g) I + g 1 1^T`` of ``C`` unit vectors with
    common pairwise cosine ``g``, against ``g``, one curve per ``C``.

    ``cosines``: ``(K,)`` grid of ``g``; ``smallest_eigenvalues``: ``{C: (K,) values}``.  A Gram
    matrix must be positive semi-definite, so vectors exist only where the curve is ``>= 0``; the
    dotted verticals mark ``g = -1/(C-1)``.
    """
    g = _np(cosines)
    fig = Figure(figsize=(MAX_WIDTH_IN, 4.5), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps.get_cmap("viridis")
    n = max(len(smallest_eigenvalues) - 1, 1)
    for i, (C, lam) in enumerate(sorted(smallest_eigenvalues.items())):
        color = cmap(0.85 * i / n)
        ax.plot(g, _np(lam), color=color, lw=2, label=f"$C = {C}$")
        ax.axvline(-1.0 / (C - 1), color=color, ls=":", lw=1.5)
    ax.axhline(0.0, color="k", lw=0.8)
    lo = min(float(np.min(_np(v))) for v in smallest_eigenvalues.values())
    ax.axhspan(min(lo, 0.0) - 0.05, 0.0, color="tab:red", alpha=0.08,
               label="negative: not a Gram matrix (no such vectors)")
    ax.plot([], [], color="0.3", ls=":", label="$\\gamma = -1/(C-1)$")
    ax.set_xlabel("common pairwise cosine $\\gamma$")
    ax.set_ylabel("smallest eigenvalue of the Gram matrix")
    ax.set_title("Equal cosines below $-1/(C-1)$ (dotted lines) are impossible")
    ax.legend(fontsize=9, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def method_style(method: str, i: int = 0) -> dict:
    """Colour and line style of ``method`` in every figure (from :mod:`guiding_nc.core.methods`)."""
    return dict(color=methods.colour(method, i), linestyle=methods.line_style(method))


def plot_nc_metric_histories(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    num_classes: int,
    *,
    x: str = "step",
    floor: float = 1e-12,
    panels: Sequence[tuple[str, str, str, bool]] = METRIC_PANELS,
) -> Figure:
    """Neural-collapse metrics against training progress, one line per method.

    ``histories``: ``{method: rows}`` where ``rows`` is the ``"history"`` list of
    :func:`guiding_nc.training.trainer.train_run` (rows without the metric, i.e. epochs that were not
    evaluated, are skipped).  ``x``: the row key on the horizontal axis (``"step"`` or
    ``"epoch"``).  On log-scale panels values below ``floor`` (e.g. an exact 0 for a classifier
    that is an ETF by construction) are drawn at ``floor``.  The cosine-margin panel shows the
    simplex-ETF maximum ``C/(C-1)``.
    """
    fig, axes = panel_grid(len(panels), panel_height=2.9, extra_height=0.4)
    for k, (key, title, ylabel, log) in enumerate(panels):
        ax = axes[k]
        clipped = False
        for i, (method, rows) in enumerate(histories.items()):
            pts = [(r[x], r[key]) for r in rows if key in r and r[key] is not None and np.isfinite(r[key])]
            if not pts:
                continue
            xs, ys = map(np.asarray, zip(*pts))
            if log:
                clipped |= bool((ys < floor).any())
                ys = np.maximum(ys, floor)
            ax.plot(xs, ys, lw=1.8, label=method, **method_style(method, i))
        if key == "train_cosine_margin_mean":
            ax.axhline(num_classes / (num_classes - 1), color="k", ls=":", lw=1.2,
                       label=f"ETF maximum $C/(C-1)$ = {num_classes / (num_classes - 1):.3f}")
        if log:
            ax.set_yscale("log")
            if clipped:
                title = f"{title}\n(values below {floor:.0e} drawn at {floor:.0e})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step" if x == "step" else x)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.suptitle(f"Neural-collapse metrics on the training set during UFM training ($C = {num_classes}$)",
                 fontsize=11)
    return fig


def _principal_plane(features: np.ndarray, labels: np.ndarray, C: int) -> np.ndarray:
    """Orthonormal ``(d, 2)`` basis of the top-2 principal directions of the centred class means."""
    means = np.stack([features[labels == c].mean(0) for c in range(C)])
    centred = (means - features.mean(0)).T  # (d, C)
    U, _, _ = np.linalg.svd(centred, full_matrices=False)
    return U[:, :2]


def plot_feature_collapse(
    snapshots: Mapping[str, Sequence[tuple[int, Any, Any]]],
    labels: Any,
    *,
    max_points_per_class: int = 60,
) -> Figure:
    """Features of every sample, their class means and the classifier, projected to 2-D, at a few steps.

    ``snapshots``: ``{method: [(step, features (N, d), W (C, d)), ...]}`` -- the features the
    classifier sees (e.g. normalised onto the unit sphere) and the classifier at that step.
    ``labels``: ``(N,)`` integer classes.  One row per method, one column per snapshot.

    Each row is drawn in the plane of the top-2 principal directions of that method's *final*
    centred class means (for ``C = 3`` this plane contains the final class means exactly).  Points
    are centred on the global feature mean of their snapshot.  Class means are circles; the
    classifier rows ``w_c`` (centred on their mean, like the cosine margin of Eq. 16) are stars,
    each scaled to the average length of the centred class means so the two can be compared by
    direction; the dotted polygon joins the stars.
    """
    y = _np(labels).astype(int)
    C = int(y.max()) + 1
    colors = _class_colors(C)
    methods = list(snapshots)
    ncols = max(len(v) for v in snapshots.values())
    # Square panels filling the column width; the shared legend and title take the extra height.
    side = (MAX_WIDTH_IN - 0.5) / max(ncols, 2)
    fig = Figure(figsize=(MAX_WIDTH_IN, side * len(methods) + 1.3), layout="constrained")
    axes = fig.subplots(len(methods), ncols, squeeze=False)
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:max_points_per_class] for c in range(C)])
    for r, method in enumerate(methods):
        snaps = list(snapshots[method])
        final_h = _np(snaps[-1][1])
        B = _principal_plane(final_h, y, C)
        lim = 0.0
        for j in range(ncols):
            ax = axes[r, j]
            if j >= len(snaps):
                ax.set_visible(False)
                continue
            step, h, W = snaps[j]
            h, W = _np(h), _np(W)
            hg = h.mean(0)
            P = (h - hg) @ B  # (N, 2)
            means = np.stack([h[y == c].mean(0) for c in range(C)]) - hg  # (C, d)
            Pm = means @ B
            scale = float(np.linalg.norm(means, axis=1).mean())
            Wc = W - W.mean(0)
            Wn = Wc / np.maximum(np.linalg.norm(Wc, axis=1, keepdims=True), np.finfo(float).tiny)
            Pw = scale * Wn @ B
            for c in range(C):
                pts = P[keep[y[keep] == c]]
                ax.scatter(pts[:, 0], pts[:, 1], s=9, color=colors[c], alpha=0.45, linewidths=0,
                           label=f"class {c + 1} features" if c < 3 else None)
            ax.scatter(Pm[:, 0], Pm[:, 1], s=90, c=colors[:C], edgecolors="k", linewidths=1.2, zorder=4,
                       label="class means")
            ax.scatter(Pw[:, 0], Pw[:, 1], s=170, marker="*", c=colors[:C], edgecolors="k", linewidths=0.8,
                       zorder=5, label="classifier rows $w_c$ (rescaled)")
            poly = np.concatenate([Pw, Pw[:1]], axis=0) if C <= 4 else None
            if poly is not None:
                ax.plot(poly[:, 0], poly[:, 1], color="k", ls=":", lw=1, zorder=3)
            ax.axhline(0, color="0.85", lw=0.8, zorder=0)
            ax.axvline(0, color="0.85", lw=0.8, zorder=0)
            lim = max(lim, float(np.abs(P).max()), float(np.abs(Pw).max()))
            ax.set_title(f"{method}, step {step}", fontsize=9)
            ax.set_xlabel("direction 1", fontsize=8)
            ax.set_ylabel(f"{method}\ndirection 2" if j == 0 else "direction 2", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_aspect("equal")
        for j in range(len(snaps)):
            axes[r, j].set_xlim(-1.1 * lim, 1.1 * lim)
            axes[r, j].set_ylim(-1.1 * lim, 1.1 * lim)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 3), fontsize=8, markerscale=1.2)
    fig.suptitle("Features collapsing onto their class means\n(plane of the final class means; "
                 "unit-sphere feature coordinates)", fontsize=10)
    return fig
