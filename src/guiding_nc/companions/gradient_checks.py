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
from ..core.etf import random_class_means, simplex_etf, standard_simplex_etf
from ..core.nearest import nearest_etf

__all__ = [
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
    H_rand = random_class_means(d, C, seed=seed + 1)
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
    H = random_class_means(d, C, seed=seed)
    prox = nearest_etf(H, None, 1e-3)
    H = H + 0.1 * random_class_means(d, C, seed=seed + 1)
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


def memory_table(bench_json: str):
    """:func:`memory_rows` as the chapter's table, every memory of this package in GiB (the paper's
    Table 3 in its own unit, GB)."""
    from .tables import band, table

    def gib(mb):
        return band("peak_extra_gb", None if mb is None else mb / 1024)

    rows = [[r["name"], r["d"], r["C"], band("peak_extra_gb", r["kkt_need_gb"]), gib(r["cf_mb_float32"]),
             gib(r["cf_mb_float64"]), "–" if r["paper_wo_gb"] is None else f"{r['paper_wo_gb']:g}",
             "not run" if r["paper_w_gb"] is None else f"{r['paper_w_gb']:g}",
             "–" if r["paper_ddn_gb"] is None else f"{r['paper_ddn_gb']:g}"] for r in memory_rows(bench_json)]
    return table(["model", "$d$", "$C$", "dense KKT need, float64 (GiB)", "closed form measured, float32 (GiB)",
                  "closed form measured, float64 (GiB)", "paper: w/o DDN (GB)", "paper: w/ DDN (GB)",
                  "paper: difference (GB)"], rows, align="lrrrrrrrr")


def memory_curves(bench_json: str, measured: Sequence = (), Cs: Sequence[int] = (10, 20, 50, 100, 200, 500, 1000),
                  dims: Sequence[int] = (1024, 2048)):
    """The data of the chapter's memory figure, in bytes: the dense KKT need against ``C`` at the
    feature dimensions ``dims`` (curves), and as points the paper's Table 3 cost of the DDN gradient,
    the closed form measured by the benchmark, and the dense gradient measured by the benchmark and
    in ``measured`` (``(d, C, MiB)`` triples)."""
    bench_rows = json.loads(Path(bench_json).read_text())["rows"]
    table = memory_rows(bench_json)
    curves = {f"dense KKT need, d={d} (float64, kkt_memory_bytes)": (list(Cs), [ddn.kkt_memory_bytes(d, c)
                                                                              for c in Cs]) for d in dims}
    paper = [r for r in table if r["paper_ddn_gb"] is not None]
    dense = [(C, mb) for _, C, mb in measured] + [(r["C"], r["kkt_peak_mb_float64"]) for r in bench_rows
                                                  if r["kkt_peak_mb_float64"] is not None]
    dims_measured = sorted({d for d, _, _ in measured} | {r["d"] for r in bench_rows
                                                          if r["kkt_peak_mb_float64"] is not None})
    points = {
        "paper Table 3: w/ DDN minus w/o (GB → bytes)": ([r["C"] for r in paper],
                                                         [r["paper_ddn_gb"] * 1e9 for r in paper]),
        "closed form, measured (float64)": ([r["C"] for r in table],
                                            [None if r["cf_mb_float64"] is None else r["cf_mb_float64"] * 2 ** 20
                                             for r in table]),
        f"dense KKT, measured (float64, d = {' and '.join(map(str, dims_measured))})":
            ([c for c, _ in dense], [mb * 2 ** 20 for _, mb in dense]),
    }
    return curves, points


def polar_derivative_checks(H: Tensor, U: Tensor, prox: Tensor, delta: float, seed: int = 0, eps: float = 1e-7):
    """The polar factor's derivative at ``A = 2 H M + delta P``: the optimality conditions, the
    skew ``Omega`` of :func:`polar_jvp` and its Sylvester equation, the JVP against central
    differences (``eps`` below the smallest singular value, ``delta``, on which the polar factor
    curves) and the adjoint identity of :func:`~guiding_nc.core.polar.polar_vjp`; a table whose
    ``values`` hold the numbers."""
    from ..core.polar import polar_factor, polar_vjp
    from .tables import table

    d, C = H.shape
    A = 2 * H @ standard_simplex_etf(C, dtype=H.dtype) + delta * prox
    Up, s, V = polar_factor(A)
    S = Up.T @ A
    g = torch.Generator().manual_seed(seed)
    dA, Gbar = (torch.randn(d, C, generator=g, dtype=H.dtype) for _ in range(2))
    dU = polar_jvp(Up, s, V, dA)
    Omega, X = Up.T @ dU, Up.T @ dA
    dU_fd = (polar_factor(A + eps * dA)[0] - polar_factor(A - eps * dA)[0]) / (2 * eps)
    lhs, rhs = float((Gbar * dU).sum()), float((polar_vjp(Up, s, V, Gbar) * dA).sum())
    v = {"polar_vs_nearest": float((Up - U).abs().max()),
         "normal": float(((torch.eye(d, dtype=H.dtype) - U @ U.T) @ A).abs().max()),
         "S_sym": float((S - S.T).abs().max()), "omega_skew": float((Omega + Omega.T).abs().max()),
         "sylvester": float((Omega @ S + S @ Omega - (X - X.T)).abs().max()), "jvp_fd": _rel(dU, dU_fd),
         "adjoint": lhs - rhs}
    rows = [["U from the polar factor − nearest_etf", v["polar_vs_nearest"]], ["(I − UUᵀ) A", v["normal"]],
            ["S − Sᵀ", v["S_sym"]], ["Ω skew: max |Ω + Ωᵀ|", v["omega_skew"]],
            ["Sylvester residual |ΩS + SΩ − (X − Xᵀ)|", v["sylvester"]],
            ["dU vs central differences (relative)", v["jvp_fd"]],
            [f"adjoint identity: ⟨G, dU⟩ − ⟨dL/dA, dA⟩ (⟨G, dU⟩ = {lhs:.12f})", v["adjoint"]]]
    t = table(["check (each should be 0)", "value"], [[a, f"{b:.1e}"] for a, b in rows], align="lr")
    t.values = v
    return t


def delta_zero_checks(d: int = 12, C: int = 5, seed: int = 0) -> Dict[str, object]:
    """What happens at ``delta = 0``: Prop. 1's matrix ``G`` is singular (its zero eigenvalues), the
    pseudo-inverse in its place gives a gradient of the size of the closed form's at a tiny
    ``delta``, and both gradients refuse ``delta = 0`` with an error that says why."""
    H = random_class_means(d, C, seed=seed)
    P = nearest_etf(H, None, 1e-3)
    U = nearest_etf(H, P, 0.0)
    Gz = torch.randn(d, C, generator=torch.Generator().manual_seed(seed + 4), dtype=torch.float64)
    G0, A0, g0 = ddn.lagrangian_hessian(H, U, P, 0.0), ddn.constraint_jacobian(U), Gz.reshape(-1)
    G0p = torch.linalg.pinv(G0)
    w0 = G0p @ A0.T @ torch.linalg.solve(A0 @ G0p @ A0.T, A0 @ G0p @ g0) - G0p @ g0
    g_kkt0 = -2.0 * w0.reshape(d, C) @ standard_simplex_etf(C, dtype=torch.float64)
    h = H.clone().requires_grad_()
    (nearest_etf(h, P, 1e-10) * Gz).sum().backward()
    errors = {}
    for name, call in (("kkt_vjp(..., delta=0)", lambda: ddn.kkt_vjp(H, U, P, 0.0, Gz)),
                       ("nearest_etf(..., delta=0) with gradients",
                        lambda: nearest_etf(H.clone().requires_grad_(), P, 0.0))):
        try:
            call()
            errors[name] = None
        except ValueError as err:
            errors[name] = str(err)
    return {"zero_eigenvalues": int((torch.linalg.eigvalsh(G0).abs() < 1e-12).sum()),
            "pinv_norm": float(g_kkt0.norm()), "closed_norm": float(h.grad.norm()), "errors": errors}


def collapse_checks(d: int, C: int, delta: float, seed: int = 0) -> Dict[str, object]:
    """At collapse ``A`` has ``C - 1`` equal singular values, ``2/(C-1) + delta``: autograd
    through the SVD returns non-finite gradients there, the closed-form adjoint does not, and
    agrees with central differences."""
    H_etf, _, P_etf = collapse_path(d, C, seed)
    s_etf = torch.linalg.svdvals(2 * H_etf @ standard_simplex_etf(C, dtype=torch.float64) + delta * P_etf)
    Gc = torch.randn(d, C, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    h_svd, h_cf = H_etf.clone().requires_grad_(), H_etf.clone().requires_grad_()
    (svd_autograd_polar(h_svd, P_etf, delta) * Gc).sum().backward()
    (nearest_etf(h_cf, P_etf, delta) * Gc).sum().backward()
    fd = central_difference_gradient(
        lambda x: (nearest_etf(x, P_etf, delta, backward="none") * Gc).sum(), H_etf, 1e-5)
    return {"singular_values": s_etf.tolist(), "expected": 2 / (C - 1) + delta, "entries": h_cf.grad.numel(),
            "svd_finite": int(torch.isfinite(h_svd.grad).sum()), "closed_finite": int(torch.isfinite(h_cf.grad).sum()),
            "closed_vs_fd": _rel(h_cf.grad, fd)}
