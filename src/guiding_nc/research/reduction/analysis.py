"""Reduction-mapping analysis: a reduced UFM objective ``F(H) = f(H, Psi(H))`` against the base
problem ``f`` it comes from, at corresponding points ``x`` and ``Phi(x) = (x, Psi(x))``.

* :func:`matched_weight_decay` — the ``lambda_W`` that gives all four parametrisations one optimum;
* :func:`base_objective`, :func:`reduction_map`, :func:`lift`, :func:`reduction_jacobian`,
  :func:`pullback_metric` — the full problem ``f``, ``Psi``, ``Phi = (id, Psi)``, ``DPsi`` and ``Jᵀ J``;
* :func:`generalized_eigenvalues` — a Hessian's spectrum in a metric ``G``;
* :func:`morse_bott_constant` — kernel and smallest normal curvature at a minimiser;
* :func:`optimal_value`, :func:`curvature_at` — ``f*`` and all local landscape numbers at one point
  (the recorded gradient-descent runs are in :mod:`guiding_nc.research.reduction.descent`).

Used by the book chapter "Why the implicit ETF speeds training: reduction mappings, measured"
(``book/13_reduction_mappings.md``) and by :mod:`guiding_nc.research.reduction_mappings`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..curvature import (
    as_float64_vector,
    condition_number,
    hessian_extremal_eigenvalues,
    hessian_matrix,
    scalar_output,
)
from .objective import UFMObjective

__all__ = [
    "matched_weight_decay",
    "base_objective",
    "reduction_map",
    "lift",
    "reduction_jacobian",
    "pullback_metric",
    "generalized_eigenvalues",
    "morse_bott_constant",
    "optimal_value",
    "curvature_at",
]


def matched_weight_decay(num_classes: int, tau: float = 5.0) -> float:
    """The classifier weight decay ``lambda_W`` whose free-UFM optimum has unit-norm classifier rows.

    With normalised features and ``W = r · W_ETF`` (unit rows) aligned with collapsed features,
    the free objective is ``g(r) = log(1 + (C-1) exp(-a r)) + lambda_W C r² / 2`` with
    ``a = tau C / (C-1)``.  Setting ``g'(1) = 0`` gives

        lambda_W = a (C-1) e^{-a} / (C (1 + (C-1) e^{-a})),

    so the free problem's collapsed minimiser has *exactly* the classifier that the fixed and
    implicit ETF reductions produce: all four parametrisations then share one optimal value
    and their graphs meet the free problem's solution set (the setting of
    book/13_reduction_mappings.md).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")
    C = num_classes
    a = tau * C / (C - 1)
    e = math.exp(-a)
    return a * (C - 1) * e / (C * (1.0 + (C - 1) * e))


def _check_objective(obj) -> None:
    if not isinstance(obj, UFMObjective):
        raise ValueError(f"obj must be a UFMObjective, got {type(obj).__name__}")


def base_objective(obj: UFMObjective) -> UFMObjective:
    """The free problem ``f(H, W, b)`` of which ``obj`` is a reduction (same data and constants).

    It is the ``free`` objective with a learned bias (the implicit reduction sets
    ``b = -W h_G``; fixed and affine set ``b = 0``) and the same ``tau``, normalisation and
    weight decays.  For a ``free`` objective with a bias, ``obj`` itself is returned.
    """
    _check_objective(obj)
    if obj.parametrisation == "free" and obj.bias:
        return obj
    return UFMObjective("free", obj.labels, obj.num_classes, obj.dim, tau=obj.tau, normalize=obj.normalize,
                        weight_decay_H=obj.weight_decay_H, weight_decay_W=obj.weight_decay_W, bias=True,
                        eps=obj.eps, dtype=obj.dtype)


def reduction_map(obj: UFMObjective, x: Tensor) -> Tensor:
    """``Psi(H)``: the classifier ``[vec(W); b]`` (C d + C,) the reduction assigns to the flat ``x`` (N d,).

    ``fixed``: the constant ETF and ``b = 0``; ``affine``: ``gamma Π H`` and ``b = 0``;
    ``implicit``: the nearest-ETF classifier and ``b = -W h_G``.  Raises ``ValueError`` for ``free``
    (it has no reduction: ``W`` is a variable).
    """
    _check_objective(obj)
    if obj.parametrisation == "free":
        raise ValueError("the free parametrisation has no reduction mapping (W and b are variables)")
    W, b = obj.classifier(x)
    if b is None:
        b = torch.zeros(obj.num_classes, dtype=W.dtype, device=W.device)
    return torch.cat([W.reshape(-1), b.reshape(-1)])


def lift(obj: UFMObjective, x: Tensor) -> Tensor:
    """``Phi(x) = (x, Psi(x))``: the point of :func:`base_objective` (N d + C d + C,) that ``x`` represents.

    For ``free`` with a bias this is ``x``; for ``free`` without a bias, ``b = 0`` is appended.
    ``base_objective(obj)(lift(obj, x)) == obj(x)`` up to rounding.
    """
    _check_objective(obj)
    obj.check_x(x)
    if obj.parametrisation == "free":
        if obj.bias:
            return x
        return torch.cat([x, torch.zeros(obj.num_classes, dtype=x.dtype, device=x.device)])
    return torch.cat([x, reduction_map(obj, x)])


def reduction_jacobian(obj: UFMObjective, x: Tensor, *, max_numel: int = 4096) -> Tensor:
    """Dense Jacobian ``DPsi(x)`` of :func:`reduction_map`, shape ``(C d + C, N d)`` (small sizes only)."""
    _check_objective(obj)
    obj.check_x(x)
    if obj.numel > max_numel:
        raise ValueError(f"reduction_jacobian forms a dense matrix; numel = {obj.numel} exceeds max_numel = {max_numel}")
    return torch.func.jacrev(lambda z: reduction_map(obj, z))(x.detach())


def pullback_metric(obj: UFMObjective, x: Tensor, *, max_numel: int = 4096) -> Tensor:
    """The pullback metric ``G = Jᵀ J = I + DPsiᵀ DPsi`` of the reduction at ``x``, shape ``(N d, N d)``.

    ``J = DPhi = [I; DPsi]``; lengths of steps in the reduced variable measured by ``G`` equal the
    lengths of the steps they cause in the full space.  ``free``: the identity.
    """
    _check_objective(obj)
    obj.check_x(x)
    n = obj.numel
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    if obj.parametrisation == "free":
        return eye
    D = reduction_jacobian(obj, x, max_numel=max_numel)
    return eye + D.T @ D


def generalized_eigenvalues(A: Tensor, G: Tensor) -> Tensor:
    """Eigenvalues (ascending, float64) of the pencil ``A v = lambda G v``, ``A`` symmetric, ``G`` SPD, both (n, n).

    Computed as ``eigvalsh(L⁻¹ A L⁻ᵀ)`` with the Cholesky factor ``G = L Lᵀ``: the spectrum of the
    Hessian ``A`` measured in the metric ``G`` (the Rayleigh quotients ``vᵀAv / vᵀGv``).
    """
    if not isinstance(A, Tensor) or not isinstance(G, Tensor):
        raise ValueError("A and G must be tensors")
    if A.ndim != 2 or A.shape[0] != A.shape[1] or G.shape != A.shape:
        raise ValueError(f"A and G must be square of the same shape, got {tuple(A.shape)} and {tuple(G.shape)}")
    A = A.to(torch.float64)
    G = G.to(torch.float64)
    L, info = torch.linalg.cholesky_ex(0.5 * (G + G.T))
    if int(info) != 0:
        raise ValueError("G must be symmetric positive definite (its Cholesky factorisation failed)")
    B = torch.linalg.solve_triangular(L, 0.5 * (A + A.T), upper=False)
    B = torch.linalg.solve_triangular(L, B.T, upper=False)
    return torch.linalg.eigvalsh(0.5 * (B + B.T))


def morse_bott_constant(eigenvalues, *, rel_tol: float = 1e-7) -> dict:
    """Split a Hessian spectrum at a minimiser into its kernel and the smallest curvature normal to it.

    At a Morse–Bott minimiser the Hessian is zero along the solution manifold and positive
    definite across it; the *Morse–Bott constant* is the smallest of the positive eigenvalues.
    Eigenvalues with ``|lambda| <= rel_tol * max|lambda|`` count as the kernel.

    Returns ``{"constant": float, "kernel_dim": int, "most_negative": float, "max": float,
    "next_above_kernel": float}`` (``constant`` is NaN if no eigenvalue is above the tolerance;
    ``most_negative`` < -tol would mean the point is not a minimiser).
    """
    ev = as_float64_vector(eigenvalues, "eigenvalues")
    if ev.numel() == 0:
        raise ValueError("eigenvalues is empty")
    if not (isinstance(rel_tol, (int, float)) and not isinstance(rel_tol, bool) and 0 < rel_tol < 1):
        raise ValueError(f"rel_tol must be a number in (0, 1), got {rel_tol!r}")
    ev = torch.sort(ev).values
    scale = float(ev.abs().max())
    tol = rel_tol * scale
    kernel = ev.abs() <= tol
    pos = ev[ev > tol]
    return {"constant": float(pos.min()) if pos.numel() else float("nan"),
            "kernel_dim": int(kernel.sum()), "most_negative": float(ev.min()), "max": float(ev.max()),
            "next_above_kernel": float(pos[1]) if pos.numel() > 1 else float("nan")}


def optimal_value(obj: UFMObjective) -> float:
    """``f*``: the objective at the collapsed point ``collapsed_point(scale=1)``.

    This is the minimum of all four parametrisations when features are normalised and, for
    ``free`` and ``affine``, ``weight_decay_W = matched_weight_decay(C, tau)`` (for ``fixed`` and
    ``implicit`` the W term is a constant).
    :func:`~guiding_nc.research.reduction.descent.gradient_descent` records how far below it a run
    ever gets, so a wrong ``f*`` shows up in the numbers.
    """
    _check_objective(obj)
    with torch.no_grad():
        return float(obj(obj.collapsed_point()))


def curvature_at(obj: UFMObjective, x: Tensor, f_star: float, *, method: str = "exact", k_iter: int = 30,
                 pullback: bool = True, seed: int = 0) -> dict:
    """Local landscape numbers of ``obj`` at the flat point ``x`` and of its base problem at ``Phi(x)``.

    Returns a dict of floats:

    ``value``, ``grad_norm_sq``, ``pl`` = ``||∇F||² / (2 (F - f*))`` (NaN at or below ``f*``),
    ``lambda_max``, ``lambda_min`` — extremes of ``∇²F(x)`` (Euclidean);
    ``kappa`` = ``lambda_max / pl``;
    ``base_lambda_max``, ``base_lambda_min``, ``base_pl`` — the same for the base problem
    (:func:`base_objective`) at ``lift(obj, x)`` (equal to the reduced ones for ``free`` with a bias);
    with ``method="exact"`` also ``correction_norm`` = ``||∇²F - Jᵀ ∇²f J||_2`` (the second-order
    term of the chain rule, zero for affine reductions; absent for ``free``) and, with ``pullback=True``,
    ``pb_lambda_max``, ``pb_lambda_min`` (the spectrum
    of ``∇²F`` in the pullback metric ``G``, :func:`generalized_eigenvalues`) and ``pb_pl``
    (``∇Fᵀ G⁻¹ ∇F / (2 (F - f*))``).

    ``method="exact"`` forms dense Hessians (``numel`` up to 4096); ``"lanczos"`` uses ``k_iter``
    Lanczos steps on double-backward HVPs (start vector from ``seed``).
    """
    _check_objective(obj)
    obj.check_x(x)
    if method not in ("exact", "lanczos"):
        raise ValueError(f"method must be 'exact' or 'lanczos', got {method!r}")
    x = x.detach()
    base = base_objective(obj)
    xb = lift(obj, x).detach()
    out = {}
    g = torch.func.grad(scalar_output(obj))(x)
    gb = torch.func.grad(scalar_output(base))(xb)
    val = float(obj(x))
    gap = val - f_star
    out["value"] = val
    out["grad_norm_sq"] = float((g ** 2).sum())
    out["pl"] = out["grad_norm_sq"] / (2 * gap) if gap > 0 else float("nan")
    out["base_grad_norm_sq"] = float((gb ** 2).sum())
    out["base_pl"] = out["base_grad_norm_sq"] / (2 * gap) if gap > 0 else float("nan")
    if method == "exact":
        Hm = hessian_matrix(obj, x)
        ev = torch.linalg.eigvalsh(0.5 * (Hm + Hm.T))
        out["lambda_max"], out["lambda_min"] = float(ev[-1]), float(ev[0])
        if base is obj:
            out["base_lambda_max"], out["base_lambda_min"] = out["lambda_max"], out["lambda_min"]
        else:
            Hb = hessian_matrix(base, xb)
            evb = torch.linalg.eigvalsh(0.5 * (Hb + Hb.T))
            out["base_lambda_max"], out["base_lambda_min"] = float(evb[-1]), float(evb[0])
            # Correction term of the chain rule: ∇²F - Jᵀ ∇²f J (zero for affine reductions).
            D = reduction_jacobian(obj, x)
            J = torch.cat([torch.eye(obj.numel, dtype=D.dtype, device=D.device), D])
            corr = Hm - J.T @ Hb @ J
            out["correction_norm"] = float(torch.linalg.matrix_norm(0.5 * (corr + corr.T), ord=2))
        if pullback:
            if obj.parametrisation == "free":
                out["pb_lambda_max"], out["pb_lambda_min"], out["pb_pl"] = out["lambda_max"], out["lambda_min"], out["pl"]
            else:
                G = pullback_metric(obj, x)
                evg = generalized_eigenvalues(Hm, G)
                out["pb_lambda_max"], out["pb_lambda_min"] = float(evg[-1]), float(evg[0])
                gG = float(g @ torch.linalg.solve(G, g))
                out["pb_pl"] = gG / (2 * gap) if gap > 0 else float("nan")
    else:
        gen = torch.Generator().manual_seed(int(seed))
        r = hessian_extremal_eigenvalues(obj, x, k_iter, generator=gen, mode="double_backward")
        out["lambda_max"], out["lambda_min"] = r.max, r.min
        if base is obj:
            out["base_lambda_max"], out["base_lambda_min"] = r.max, r.min
        else:
            gen = torch.Generator().manual_seed(int(seed))
            rb = hessian_extremal_eigenvalues(base, xb, k_iter, generator=gen, mode="double_backward")
            out["base_lambda_max"], out["base_lambda_min"] = rb.max, rb.min
    out["kappa"] = condition_number(max(out["lambda_max"], 0.0), out["pl"]) if math.isfinite(out["pl"]) else float("nan")
    return out
