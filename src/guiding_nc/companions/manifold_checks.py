"""Small, independent tools for checking the Stiefel-manifold mathematics of chapters 3 and 4.

Nothing here is needed to *use* :func:`guiding_nc.nearest_etf`; these functions exist so the
book can test the closed form and the paper's Appendix B against independent computations:

* :func:`objective_derivatives` — ``f`` of Eq. 7 with its Euclidean gradient and Hessian.
* :func:`riemannian_gradient_descent` — Armijo-backtracking Riemannian descent (a solver that
  shares no code with the closed form), and :func:`trust_region_history` — the objective
  after each iteration of the paper's trust-region solver.
* :func:`null_space_family` — the one-parameter family of minimisers of Eq. 6.
* :func:`constraint_gradients`, :func:`gram_matrix`, :func:`lagrange_multipliers_cramer`,
  :func:`lagrange_multipliers_prop2`, :func:`embedded_gradient` — Eqs. 35–46 of Appendix B.1,
  computed literally from the constraint functions.
* :func:`qr_retraction`, :func:`taylor_remainders`, :func:`loglog_slope` — Taylor checks of
  the Riemannian gradient and Hessian along a retraction curve.
* :func:`tangent_hessian_matrix` — the Riemannian Hessian as a matrix in an orthonormal basis
  of the tangent space.

Shapes: ``U``, ``H``, ``prox``, tangent vectors ``(d, C)``; ``M`` is the unit-Frobenius
standard simplex ETF.  Book: chapters 3 and 4.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..core.etf import (euclidean_to_riemannian_gradient, euclidean_to_riemannian_hessian, projection, retraction,
                        standard_simplex_etf, sym)
from ..core.nearest import nearest_etf_objective

__all__ = [
    "tangent_pieces",
    "objective_derivatives",
    "riemannian_gradient_descent",
    "trust_region_history",
    "null_space_family",
    "qr_retraction",
    "constraint_labels",
    "constraint_gradients",
    "gram_matrix",
    "lagrange_multipliers_cramer",
    "lagrange_multipliers_prop2",
    "multipliers_to_matrix",
    "embedded_gradient",
    "taylor_remainders",
    "loglog_slope",
    "tangent_hessian_matrix",
]


# ----------------------------------------------------------------- the objective
def objective_derivatives(H: Tensor, prox: Optional[Tensor] = None, delta: float = 0.0):
    """``(f, egrad, ehess)`` for Eq. 7 as functions of ``U``.

    ``f(U) = ||H - U M||_F^2 + delta/2 ||U - prox||_F^2`` extended to all of ``R^{d x C}``;
    ``egrad(U) = 2 U M^2 - 2 H M + delta (U - prox)``;
    ``ehess(U, Z) = 2 Z M^2 + delta Z`` (the Euclidean Hessian applied to ``Z``).
    """
    M = standard_simplex_etf(H.shape[1], dtype=H.dtype, device=H.device)
    M2 = M @ M
    P = prox if (prox is not None and delta) else torch.zeros_like(H)
    dlt = float(delta) if prox is not None else 0.0

    def f(U: Tensor) -> float:
        return float(nearest_etf_objective(U, H, prox, delta))

    def egrad(U: Tensor) -> Tensor:
        return 2.0 * U @ M2 - 2.0 * H @ M + dlt * (U - P)

    def ehess(U: Tensor, Z: Tensor) -> Tensor:
        return 2.0 * Z @ M2 + dlt * Z

    return f, egrad, ehess


# -------------------------------------------------------------------- solvers
def riemannian_gradient_descent(
    H: Tensor,
    prox: Optional[Tensor],
    delta: float,
    initial: Tensor,
    *,
    max_iterations: int = 500,
    min_gradient_norm: float = 1e-12,
    initial_step: float = 1.0,
    armijo: float = 1e-4,
) -> Tuple[Tensor, List[float]]:
    """Riemannian gradient descent on ``St(d, C)`` with Armijo backtracking and the polar retraction.

    An independent solver for Eq. 7 (it never forms ``A`` or an SVD of it).  Each
    iteration tries the step ``2 t_prev`` and halves it until the Armijo condition
    ``f(R_U(-t g)) <= f(U) - armijo * t * ||g||^2`` holds.

    Returns ``(U, history)`` with ``history[k]`` the objective after ``k`` iterations.
    """
    f, egrad, _ = objective_derivatives(H, prox, delta)
    U = initial.clone()
    fU = f(U)
    history = [fU]
    step = initial_step
    for _ in range(max_iterations):
        g = projection(U, egrad(U))
        gnorm2 = float((g * g).sum())
        if math.sqrt(gnorm2) < min_gradient_norm:
            break
        step = min(2.0 * step, 1e3)
        while True:
            U_new = retraction(U, -step * g)
            f_new = f(U_new)
            if f_new <= fU - armijo * step * gnorm2 or step < 1e-20:
                break
            step *= 0.5
        if step < 1e-20:
            break
        U, fU = U_new, f_new
        history.append(fU)
    return U, history


def trust_region_history(
    H: Tensor, prox: Tensor, delta: float, initial: Tensor, max_iterations: int = 15
) -> List[float]:
    """Objective value after ``k = 0, 1, ..., max_iterations`` iterations of the paper's solver.

    Calls :func:`guiding_nc.core.reference.trust_region.trust_region_solve` with ``max_iterations = k``
    for each ``k`` (pymanopt's trust-region is deterministic, so run ``k`` is the first
    ``k`` iterations of run ``k + 1``).  Once the solver stops on its gradient tolerance
    the later entries repeat the last value.
    """
    from ..core.reference.trust_region import trust_region_solve

    values = [float(nearest_etf_objective(initial, H, prox, delta))]
    for k in range(1, max_iterations + 1):
        U, res = trust_region_solve(H, prox, delta, initial=initial, max_iterations=k, return_result=True)
        values.append(float(nearest_etf_objective(U, H, prox, delta)))
        if res.iterations < k:  # converged before the cap: later runs are identical
            values.extend([values[-1]] * (max_iterations - k))
            break
    return values


# --------------------------------------------------- the family of minimisers of Eq. 6
def null_space_family(
    U: Tensor, thetas: Sequence[float], toward: Optional[Tensor] = None, generator: Optional[torch.Generator] = None
) -> Tuple[List[Tensor], float]:
    """Rotate the image of the all-ones direction: ``U(theta) = U + ((cos theta - 1) w + sin theta z) n^T``.

    ``n = 1/sqrt(C)`` spans the null space of ``M``, ``w = U n`` is its image and ``z`` is a
    unit vector orthogonal to the columns of ``U`` (needs ``d > C``).  Every ``U(theta)`` is a
    Stiefel point with ``U(theta) M = U M``.  With ``toward`` (a Stiefel point ``E``), ``z``
    is chosen in the plane of ``w`` and ``E n`` so that the circle passes through the member
    closest to ``E``; its angle ``theta_E`` is returned (``nan`` without ``toward``).

    Returns ``(points, theta_E)``.
    """
    d, C = U.shape
    if d <= C:
        raise ValueError(f"the null-space family is a circle only when d > C; got d={d}, C={C}")
    n = torch.full((C, 1), 1.0 / math.sqrt(C), dtype=U.dtype, device=U.device)
    w = U @ n
    if toward is not None:
        v = toward @ n
    else:
        v = torch.randn(d, 1, generator=generator, dtype=torch.float64).to(U.dtype)
    z = v - U @ (U.T @ v)
    z = z - U @ (U.T @ z)
    z = z / z.norm()
    theta_E = float(math.atan2(float(z.T @ v), float(w.T @ v))) if toward is not None else float("nan")
    points = [U + ((math.cos(t) - 1.0) * w + math.sin(t) * z) @ n.T for t in thetas]
    return points, theta_E


# --------------------------------------------------------------------- retraction
def qr_retraction(U: Tensor, Z: Tensor) -> Tensor:
    """QR retraction ``R_U(Z) = qf(U + Z)`` (Q factor with positive ``diag(R)``): pymanopt's default.

    A first-order retraction only (compare :func:`guiding_nc.retraction`, the polar one).
    """
    Q, R = torch.linalg.qr(U + Z)
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1.0
    return Q * signs


# ------------------------------------------------- constraint functions (Appendix B.1)
def constraint_labels(C: int) -> List[str]:
    """Names of the constraints in the order used here: ``j_1 .. j_C`` then ``j_pq``, ``p < q`` (Eq. 35)."""
    return [f"j_{s + 1}" for s in range(C)] + [f"j_{p + 1},{q + 1}" for p in range(C) for q in range(p + 1, C)]


def constraint_gradients(U: Tensor) -> Tensor:
    """Euclidean gradients of the constraint functions of Eq. 35, shape ``(C(C+1)/2, d, C)``.

    ``j_s(U) = ||u_s||^2 / 2`` has gradient ``u_s`` in column ``s``; ``j_pq(U) = <u_p, u_q>``
    has ``u_q`` in column ``p`` and ``u_p`` in column ``q``.  Order as in :func:`constraint_labels`.
    """
    d, C = U.shape
    grads = []
    for s in range(C):
        G = torch.zeros_like(U)
        G[:, s] = U[:, s]
        grads.append(G)
    for p in range(C):
        for q in range(p + 1, C):
            G = torch.zeros_like(U)
            G[:, p] = U[:, q]
            G[:, q] = U[:, p]
            grads.append(G)
    return torch.stack(grads)


def gram_matrix(rows: Tensor, cols: Optional[Tensor] = None) -> Tensor:
    """Gram matrix ``[<cols_k, rows_i>]_{i,k}`` of two stacks of ``(d, C)`` gradients (Eq. 34)."""
    cols = rows if cols is None else cols
    return rows.reshape(rows.shape[0], -1) @ cols.reshape(cols.shape[0], -1).T


def lagrange_multipliers_cramer(U: Tensor, egrad: Tensor) -> Tensor:
    """The Lagrange multiplier functions by the determinant ratios of Eq. 37 (Cramer's rule).

    ``sigma_k = det(Gram_k) / det(Gram)``, where ``Gram_k`` is the Gram matrix of the
    constraint gradients with column ``k`` replaced by ``[<grad f, grad j_i>]_i``.  Valid at any
    regular point (not only on the manifold).  Returns a vector ordered as
    :func:`constraint_labels`.
    """
    J = constraint_gradients(U)
    G = gram_matrix(J)
    b = J.reshape(J.shape[0], -1) @ egrad.reshape(-1)
    det = torch.linalg.det(G)
    sig = torch.empty(J.shape[0], dtype=U.dtype, device=U.device)
    for k in range(J.shape[0]):
        Gk = G.clone()
        Gk[:, k] = b
        sig[k] = torch.linalg.det(Gk) / det
    return sig


def lagrange_multipliers_prop2(U: Tensor, egrad: Tensor) -> Tensor:
    """The Lagrange multiplier functions by Proposition 2 (Eq. 39), valid on ``St(d, C)``.

    ``sigma_s = <grad f, grad j_s>`` and ``sigma_pq = <grad f, grad j_pq> / 2``.  Ordered as
    :func:`constraint_labels`.
    """
    J = constraint_gradients(U)
    C = U.shape[1]
    inner = J.reshape(J.shape[0], -1) @ egrad.reshape(-1)
    scale = torch.ones_like(inner)
    scale[C:] = 0.5
    return inner * scale


def multipliers_to_matrix(sigma: Tensor, C: int) -> Tensor:
    """The symmetric ``Sigma`` with ``Sigma_ss = sigma_s`` and ``Sigma_pq = Sigma_qp = sigma_pq`` (Eq. 46)."""
    S = torch.diag(sigma[:C])
    k = C
    for p in range(C):
        for q in range(p + 1, C):
            S[p, q] = S[q, p] = sigma[k]
            k += 1
    return S


def embedded_gradient(U: Tensor, egrad: Tensor, sigma: Optional[Tensor] = None) -> Tensor:
    """Embedded gradient vector field ``grad f - sum_k sigma_k grad j_k`` (Eq. 36), shape ``(d, C)``.

    ``sigma`` defaults to :func:`lagrange_multipliers_cramer`.
    """
    if sigma is None:
        sigma = lagrange_multipliers_cramer(U, egrad)
    J = constraint_gradients(U)
    return egrad - torch.einsum("k,kdc->dc", sigma, J)


# ------------------------------------------------------------------ Taylor checks
def taylor_remainders(
    f: Callable[[Tensor], float],
    U: Tensor,
    xi: Tensor,
    ts: Sequence[float],
    rgrad: Tensor,
    hess_xi: Tensor,
    retract: Callable[[Tensor, Tensor], Tensor] = retraction,
) -> Tuple[List[float], List[float]]:
    """First- and second-order Taylor remainders of ``t -> f(R_U(t xi))``.

    ``r1(t) = |f(R_U(t xi)) - f(U) - t <rgrad, xi>|`` and
    ``r2(t) = |r1-part - t^2/2 <hess_xi, xi>|`` (signed before the absolute value).
    ``r1 = O(t^2)`` whenever ``rgrad`` is right; ``r2 = O(t^3)`` when moreover ``hess_xi`` is
    right *and* the retraction is second order (or ``U`` is a critical point).
    """
    f0 = f(U)
    g = float((rgrad * xi).sum())
    h = float((hess_xi * xi).sum())
    r1, r2 = [], []
    for t in ts:
        e = f(retract(U, t * xi)) - f0 - t * g
        r1.append(abs(e))
        r2.append(abs(e - 0.5 * t * t * h))
    return r1, r2


def loglog_slope(ts: Sequence[float], rs: Sequence[float], t_min: float = 0.0, t_max: float = math.inf) -> float:
    """Least-squares slope of ``log r`` against ``log t`` over ``t_min <= t <= t_max`` (``r > 0``)."""
    pts = [(math.log(t), math.log(r)) for t, r in zip(ts, rs) if t_min <= t <= t_max and r > 0]
    if len(pts) < 2:
        raise ValueError("need at least two positive remainders in the fitting range")
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx


def tangent_hessian_matrix(U: Tensor, egrad: Tensor, ehess: Callable[[Tensor, Tensor], Tensor]) -> Tuple[Tensor, Tensor]:
    """The Riemannian Hessian at ``U`` as a matrix in an orthonormal basis of ``T_U St(d, C)``.

    The basis is the eigenvectors (eigenvalue 1) of the tangent projection ``P_U``; the
    tangent space has dimension ``dC - C(C+1)/2``.  Returns ``(Hmat, basis)`` with ``basis``
    of shape ``(k, d, C)``; ``Hmat[i, j] = <basis_i, Hess f(U)[basis_j]>`` (``euclidean_to_riemannian_hessian``).
    """
    d, C = U.shape
    n = d * C
    eye = torch.eye(n, dtype=U.dtype, device=U.device).reshape(n, d, C)
    Pmat = torch.stack([projection(U, E).reshape(-1) for E in eye], dim=1)
    evals, evecs = torch.linalg.eigh(sym(Pmat))
    basis = evecs[:, evals > 0.5].T.reshape(-1, d, C)
    cols = [euclidean_to_riemannian_hessian(U, egrad, ehess(U, B), B).reshape(-1) for B in basis]
    Hmat = basis.reshape(basis.shape[0], -1) @ torch.stack(cols, dim=1)
    return Hmat, basis




def tangent_pieces(V: Tensor, egrad: Callable[[Tensor], Tensor], ehess: Callable[[Tensor, Tensor], Tensor],
                   generator: torch.Generator) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """What a Taylor check along a curve through ``V`` needs: a random unit tangent vector ``xi``,
    the Riemannian gradient, the Riemannian Hessian applied to ``xi``, and the same Hessian
    without its multiplier term ``-xi Sigma(V)`` (a deliberately wrong one)."""
    xi = projection(V, torch.randn(V.shape, generator=generator, dtype=V.dtype))
    xi = xi / xi.norm()
    g = euclidean_to_riemannian_gradient(V, egrad(V))
    hx = euclidean_to_riemannian_hessian(V, egrad(V), ehess(V, xi), xi)
    return xi, g, hx, projection(V, ehess(V, xi))
