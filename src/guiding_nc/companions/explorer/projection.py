"""Projecting the explorer's snapshots to 2-D or 3-D: :func:`projection_frames` in one fixed basis
(:func:`projection_basis`), so frames are comparable (book page 06).

The projection basis.  Take the reference frame's nearest ETF ``E = U* M~`` (by default the
last snapshot).  For real Fourier vectors ``f_k`` of length ``C`` (orthogonal to the ones
vector) the vectors ``E f_k`` are orthogonal in ``R^d``; normalised, they form the basis.  In
it the reference ETF's vertices lie on a regular C-gon (2-D; for C = 4 in 3-D a regular
tetrahedron), so "the class means reached the ETF" reads as "the dots sit on the polygon's
corners".  With C = 2 (a 1-D ETF) or C = 3 in 3-D the remaining axes are the directions in
which the class means vary most, orthogonal to the ETF.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .runs import ExplorerResult

__all__ = [
    "ProjectionFrames",
    "projection_frames",
    "projection_basis",
]


@dataclass
class ProjectionFrames:
    """Low-dimensional coordinates of one run, all in the same basis.

    ``means``, ``etf``, ``classifier``: ``(S, C, k)`` (one row per class, ``k`` = 2 or 3);
    ``reference`` ``(C, k)``: the vertices of the ETF that defined the basis; ``basis``
    ``(d, k)`` orthonormal columns; ``etf_norms`` ``(S, C)``: full-dimensional norms of the
    nearest-ETF vertices (all ``1/sqrt(C)``); ``captured`` ``(S,)``: the fraction of
    ``||H~||_F^2`` (= 1) that lies in the projection plane/space.
    """

    steps: np.ndarray
    means: np.ndarray
    etf: np.ndarray
    classifier: np.ndarray
    reference: np.ndarray
    basis: np.ndarray
    etf_norms: np.ndarray
    captured: np.ndarray
    reference_step: int
    dims: int
    method: str = ""
    label: str = ""

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[1])

    def index_of(self, step: int) -> int:
        """The snapshot closest to ``step`` (negative = from the end, like a list index)."""
        if step < 0:
            return int(len(self.steps) + step)
        return int(np.argmin(np.abs(self.steps - step)))


def _fourier_vectors(C: int) -> List[np.ndarray]:
    """Real Fourier vectors of length C orthogonal to the ones vector, lowest frequency first."""
    c = np.arange(C)
    out = []
    for j in range(1, C // 2 + 1):
        for fn in (np.cos, np.sin):
            v = fn(2 * np.pi * j * c / C)
            if np.linalg.norm(v) > 1e-8:
                out.append(v / np.linalg.norm(v))
    return out[: C - 1]


def projection_basis(etf: np.ndarray, dims: int = 2, extra: Optional[np.ndarray] = None) -> np.ndarray:
    """An orthonormal ``(d, dims)`` basis in which the ETF ``etf`` ``(d, C)`` is a regular polygon.

    Columns: ``etf @ f_k`` normalised, for the lowest-frequency Fourier vectors ``f_k``; if the
    ETF spans fewer than ``dims`` directions (C = 2, or C = 3 in 3-D) the basis is completed
    with the principal directions of ``extra`` (``(n, d)`` points, e.g. all class-mean
    snapshots) orthogonal to it, then with coordinate axes.
    """
    E = np.asarray(etf, dtype=np.float64)
    d, C = E.shape
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if d < dims:
        raise ValueError(f"a {dims}-D projection needs d >= {dims}, got d={d}")
    cols: List[np.ndarray] = []

    def add(v: np.ndarray) -> bool:
        for b in cols:
            v = v - (b @ v) * b
        n = np.linalg.norm(v)
        if n > 1e-6:
            cols.append(v / n)
            return True
        return False

    for f in _fourier_vectors(C):
        if len(cols) == dims:
            break
        add(E @ f)
    if len(cols) < dims and extra is not None and len(extra):
        X = np.asarray(extra, dtype=np.float64)
        X = X - X.mean(0)
        for b in cols:
            X = X - np.outer(X @ b, b)
        _, _, Vt = np.linalg.svd(X, full_matrices=False)
        for v in Vt:
            if len(cols) == dims:
                break
            add(v)
    for i in range(d):
        if len(cols) == dims:
            break
        add(np.eye(d)[i])
    return np.stack(cols, axis=1)


def projection_frames(result: ExplorerResult, dims: int = 2, *, reference: int = -1) -> ProjectionFrames:
    """Coordinates of the class means, classifier rows and nearest-ETF vertices over time.

    One basis for all frames, built from the nearest ETF of snapshot ``reference`` (default:
    the last one, where the means are closest to collapse; see :func:`projection_basis`).
    ``dims`` = 2, or 3 (needs C >= 4 so that the ETF itself is 3-D).
    """
    if not isinstance(result, ExplorerResult):
        raise TypeError(f"projection_frames expects an ExplorerResult, got {type(result).__name__}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    S, d, C = result.means.shape
    if S == 0:
        raise ValueError("the result holds no snapshots")
    if dims == 3 and C < 4:
        raise ValueError(f"a 3-D projection needs C >= 4 classes (the ETF of C={C} classes spans only "
                         f"{C - 1} dimension{'s' if C > 2 else ''}); use dims=2")
    r = reference if reference >= 0 else S + reference
    if not 0 <= r < S:
        raise IndexError(f"reference snapshot {reference} out of range for {S} snapshots")
    extra = result.means.transpose(0, 2, 1).reshape(-1, d)  # every class mean of every frame
    B = projection_basis(result.etf[r], dims, extra=extra)  # (d, k)
    proj = lambda X: np.einsum("sdc,dk->sck", X.astype(np.float64), B)
    means = proj(result.means)
    return ProjectionFrames(
        steps=result.snapshot_steps.copy(), means=means, etf=proj(result.etf), classifier=proj(result.classifier),
        reference=result.etf[r].astype(np.float64).T @ B, basis=B,
        etf_norms=np.linalg.norm(result.etf.astype(np.float64), axis=1),
        captured=(means ** 2).sum(axis=(1, 2)) / np.maximum((result.means.astype(np.float64) ** 2).sum(axis=(1, 2)),
                                                            1e-300),
        reference_step=int(result.snapshot_steps[r]), dims=dims, method=result.method, label=result.label,
    )
