"""Numerical checks behind the book's chapter 5, "Differentiating through the nearest ETF".

Everything here is a *check*, not a training path: finite differences, the
gradient a naive implementation would get from autograd through
``torch.linalg.svd``, the paper's Appendix B formulas written literally (with
its unnormalised centring matrix), and the memory table of Table 3.

Conventions as in :mod:`guiding_nc.core.reference.kkt_gradient`: ``rvec(X) = X.reshape(-1)``; ``H``, ``U``,
``P`` have shape (d, C); ``M`` is the unit-Frobenius simplex ETF.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import Tensor

from ..core.reference import kkt_gradient as ddn
from ..experiments.paper import TABLE3
from ..core.etf import simplex_etf, standard_simplex_etf
from ..core.nearest import nearest_etf

__all__ = [
    "class_means",
    "central_difference_gradient",
    "central_difference_jacobian",
    "svd_autograd_polar",
    "polar_jvp",
    "gradients_three_ways",
    "collapse_path",
    "collapse_sweep",
    "delta_sweep",
    "lagrange_multipliers",
    "constraint_hessian_contraction",
    "PAPER_TABLE3_GB",
    "PAPER_SIZES",
    "memory_rows",
]


# ------------------------------------------------------------------ problems
def class_means(d: int, C: int, seed: int = 0, dtype=torch.float64) -> Tensor:
    """Random centred, unit-Frobenius class means (Eq. 5), shape (d, C)."""
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(d, C, generator=g, dtype=torch.float64)
    H = H - H.mean(1, keepdim=True)
    return (H / H.norm()).to(dtype)


def central_difference_gradient(fn: Callable[[Tensor], Tensor], H: Tensor, eps: float = 1e-6) -> Tensor:
    """Gradient of the scalar ``fn`` at ``H`` by central differences, one entry at a time (2 dC calls)."""
    # Fresh contiguous buffers: H may be a transposed view.
    grad = torch.zeros(H.shape, dtype=H.dtype, device=H.device)
    flat = grad.view(-1)
    with torch.no_grad():
        for k in range(H.numel()):
            E = torch.zeros(H.numel(), dtype=H.dtype, device=H.device)
            E[k] = eps
            E = E.view(H.shape)
            flat[k] = (float(fn(H + E)) - float(fn(H - E))) / (2 * eps)
    return grad


def central_difference_jacobian(fn: Callable[[Tensor], Tensor], X: Tensor, eps: float = 1e-6) -> Tensor:
    """``d rvec(fn(X)) / d rvec(X)`` by central differences, shape (out.numel(), X.numel())."""
    cols = []
    with torch.no_grad():
        for k in range(X.numel()):
            E = torch.zeros(X.numel(), dtype=X.dtype, device=X.device)
            E[k] = eps
            E = E.view(X.shape)  # row-major, whatever X's strides: the rvec order
            cols.append(((fn(X + E) - fn(X - E)) / (2 * eps)).reshape(-1))
    return torch.stack(cols, dim=1)


def svd_autograd_polar(H: Tensor, prox: Tensor, delta: float) -> Tensor:
    """The nearest ETF as a naive implementation writes it: ``Y V^T`` from ``torch.linalg.svd``, plain autograd.

    Same forward value as :func:`guiding_nc.nearest_etf`; its backward is
    PyTorch's SVD derivative, which divides by ``s_i^2 - s_j^2``.
    """
    M = standard_simplex_etf(H.shape[1], dtype=H.dtype, device=H.device)
    Y, _, Vh = torch.linalg.svd(2.0 * H @ M + delta * prox, full_matrices=False)
    return Y @ Vh


def polar_jvp(U: Tensor, s: Tensor, V: Tensor, dA: Tensor) -> Tensor:
    """Forward-mode derivative of ``A -> polar(A)``: ``dU = U Omega + (I - U U^T) dA S^-1``.

    ``Omega = V [(X - X^T) / (s_i + s_j)] V^T`` with ``X = V^T U^T dA V`` solves the
    Sylvester equation ``Omega S + S Omega = U^T dA - dA^T U``, ``S = U^T A = V diag(s) V^T``.
    :func:`guiding_nc.polar_vjp` is its adjoint.  Shapes as in ``polar_vjp``.
    """
    UtdA = U.transpose(-1, -2) @ dA
    X = V.transpose(-1, -2) @ UtdA @ V
    Omega = V @ ((X - X.transpose(-1, -2)) / (s.unsqueeze(-1) + s.unsqueeze(-2))) @ V.transpose(-1, -2)
    Sinv = V @ torch.diag_embed(1.0 / s) @ V.transpose(-1, -2)
    return U @ Omega + (dA - U @ UtdA) @ Sinv


def gradients_three_ways(H: Tensor, prox: Tensor, delta: float, G: Tensor, eps: float = 1e-5) -> Dict[str, Tensor]:
    """``dL/dH`` for ``L = <U*(H), G>`` by the closed-form adjoint, the dense KKT formula and central differences."""
    out = {}
    for backward in ("closed_form", "kkt"):
        h = H.clone().requires_grad_()
        (nearest_etf(h, prox, delta, backward=backward) * G).sum().backward()
        out[backward] = h.grad
    out["finite_differences"] = central_difference_gradient(
        lambda h: (nearest_etf(h, prox, delta, backward="none") * G).sum(), H, eps
    )
    return out


# ------------------------------------------------------------ collapse sweep
def collapse_path(d: int, C: int, seed: int = 0, dtype=torch.float64):
    """A collapsed point and a direction away from it.

    Returns ``(H_etf, H_rand, prox)``: ``H_etf`` is exactly a unit-Frobenius simplex
    ETF with a Haar-random rotation, ``H_rand`` random centred unit-norm means,
    and ``prox`` the paper's first-step proximal point at ``H_etf``.
    """
    g = torch.Generator().manual_seed(seed)
    H_etf = simplex_etf(C, d, "random", generator=g, dtype=torch.float64)
    H_rand = class_means(d, C, seed + 1)
    prox = nearest_etf(H_etf, None, 1e-3)
    return H_etf.to(dtype), H_rand.to(dtype), prox.to(dtype)


def _rel(a: Tensor, b: Tensor) -> float:
    a, b = a.double(), b.double()
    if not bool(torch.isfinite(a).all()):
        return math.inf
    return float((a - b).norm() / b.norm())


def collapse_sweep(
    d: int = 12,
    C: int = 5,
    distances: Sequence[float] = tuple(10.0 ** k for k in range(-14, 1)),
    delta: float = 1e-3,
    seed: int = 0,
    eps: float = 1e-5,
) -> Dict[str, list]:
    """Relative gradient errors against central differences along ``H = H_etf + t (H_rand - H_etf)``.

    For each ``t`` in ``distances`` (scaled so ``||H - H_etf||_F = t``) compares
    with float64 central differences: autograd through ``torch.linalg.svd`` in
    float64 and float32, and the closed-form adjoint in float64 and float32.
    Also returns the relative gap between the two largest singular values of
    ``A`` (zero at collapse).  Non-finite gradients are reported as ``inf``.
    """
    H_etf, H_rand, prox = collapse_path(d, C, seed)
    direction = H_rand - H_etf
    direction = direction / direction.norm()
    G = torch.randn(d, C, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    M = standard_simplex_etf(C, dtype=torch.float64)
    res = {k: [] for k in ("distance", "gap", "svd_float64", "svd_float32", "closed_float64", "closed_float32")}
    for t in distances:
        H = H_etf + t * direction
        s = torch.linalg.svdvals(2 * H @ M + delta * prox)
        ref = central_difference_gradient(lambda h: (nearest_etf(h, prox, delta, backward="none") * G).sum(), H, eps)
        res["distance"].append(float(t))
        res["gap"].append(float((s[0] - s[1]) / s[0]))
        for dtype, name in ((torch.float64, "float64"), (torch.float32, "float32")):
            h = H.detach().to(dtype).clone().requires_grad_()
            (svd_autograd_polar(h, prox.to(dtype), delta) * G.to(dtype)).sum().backward()
            res[f"svd_{name}"].append(_rel(h.grad, ref))
            h = H.detach().to(dtype).clone().requires_grad_()
            (nearest_etf(h, prox.to(dtype), delta) * G.to(dtype)).sum().backward()
            res[f"closed_{name}"].append(_rel(h.grad, ref))
    return res


def delta_sweep(
    d: int = 12, C: int = 5, deltas: Sequence[float] = tuple(10.0 ** k for k in range(-12, 1)), seed: int = 0
) -> Dict[str, list]:
    """How Prop. 1's matrix ``G`` and the gradient behave as ``delta -> 0``.

    For each ``delta`` (prox fixed at the paper's first-step point): the smallest
    eigenvalue of ``G`` (``= s_min(A)`` at the polar solution), the norms of
    ``dL/dH`` and of ``dL/dprox`` (closed form) for a fixed random ``dL/dU``, and
    the relative distance between the dense KKT and closed-form ``dL/dH``.
    """
    H = class_means(d, C, seed)
    prox = nearest_etf(H, None, 1e-3)
    H = H + 0.1 * class_means(d, C, seed + 1)
    H = H / H.norm()
    Gu = torch.randn(d, C, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    res = {k: [] for k in ("delta", "g_min", "grad_H_norm", "grad_P_norm", "kkt_vs_closed")}
    for delta in deltas:
        U = nearest_etf(H, prox, delta)
        g_min = float(torch.linalg.eigvalsh(ddn.lagrangian_hessian(H, U, prox, delta)).min())
        h, p = H.clone().requires_grad_(), prox.clone().requires_grad_()
        (nearest_etf(h, p, delta) * Gu).sum().backward()
        gH_kkt, _ = ddn.kkt_vjp(H, U, prox, delta, Gu)
        res["delta"].append(float(delta))
        res["g_min"].append(g_min)
        res["grad_H_norm"].append(float(h.grad.norm()))
        res["grad_P_norm"].append(float(p.grad.norm()))
        res["kkt_vs_closed"].append(_rel(gH_kkt, h.grad))
    return res


def lagrange_multipliers(H: Tensor, U: Tensor, prox: Tensor, delta: float) -> Tensor:
    """Solve ``lambda^T A = rvec(D_U f)`` (least squares; exact at a stationary point), shape (C(C+1)/2,)."""
    A = ddn.constraint_jacobian(U)
    g = ddn.objective_gradient(H, U, prox, delta).reshape(-1)
    return torch.linalg.lstsq(A.T, g.unsqueeze(1)).solution.squeeze(1)


def constraint_hessian_contraction(lam: Tensor, d: int, C: int) -> Tensor:
    """``Lambda : rvec(D^2_UU J)`` of Eq. 33 from Eq. 31, summing over the rvech entries ``i >= j``."""
    rows, cols = torch.tril_indices(C, C)
    out = torch.zeros(d * C, d * C, dtype=lam.dtype)
    eye = torch.eye(d, dtype=lam.dtype)
    for k, (i, j) in enumerate(zip(rows.tolist(), cols.tolist())):
        E = torch.zeros(C, C, dtype=lam.dtype)
        E[i, j] += 1.0
        E[j, i] += 1.0
        out += lam[k] * torch.kron(eye, E)
    return out


# ----------------------------------------------------------------- Table 3
PAPER_SIZES = {
    "UFM-10": (512, 10),
    "UFM-100": (1024, 100),
    "UFM-200": (1024, 200),
    "UFM-1000": (1024, 1000),
    "ResNet50-CIFAR100": (2048, 100),
    "ResNet50-ImageNet": (2048, 1000),
}
"""Feature dimension and classes of the paper's Table 3 rows (ResNet50's penultimate width is 2048)."""

# The paper's Table 3 (GPU memory during training, GB), the two implicit-ETF columns (quoted once, in
# experiments.paper).
PAPER_TABLE3_GB = {name: (row["implicit, DDN off"], row["implicit, DDN on"]) for name, row in TABLE3.items()}


def memory_rows(bench_json: Optional[str] = None) -> list:
    """One row per Table 3 size: dense-KKT need, closed-form measured (from the bench JSON) and the paper.

    Keys: ``name, d, C, kkt_need_gb`` (float64, :func:`guiding_nc.core.reference.kkt_gradient.kkt_memory_bytes`),
    ``cf_mb_float32, cf_mb_float64`` (measured extra peak, MB, ``None`` if not in the JSON),
    ``kkt_mb_measured`` (MB or ``None``), ``paper_wo_gb, paper_w_gb`` and
    ``paper_ddn_gb`` (the difference, the paper's cost of the DDN backward; ``None`` if N/A).
    """
    bench = {}
    if bench_json is not None:
        for r in json.loads(Path(bench_json).read_text())["rows"]:
            bench[(r["d"], r["C"])] = r
    rows = []
    for name, (d, C) in PAPER_SIZES.items():
        wo, w = PAPER_TABLE3_GB[name]
        b = bench.get((d, C), {})
        rows.append(
            {
                "name": name,
                "d": d,
                "C": C,
                "kkt_need_gb": ddn.kkt_memory_bytes(d, C, 8) / 2 ** 30,  # GiB, as every memory figure here
                "cf_mb_float32": b.get("cf_peak_mb_float32"),
                "cf_mb_float64": b.get("cf_peak_mb_float64"),
                "kkt_mb_measured": b.get("kkt_peak_mb_float64"),
                "paper_wo_gb": wo,
                "paper_w_gb": w,
                "paper_ddn_gb": None if w is None else round(w - wo, 3),
            }
        )
    return rows
