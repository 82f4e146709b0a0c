"""The paper's deep-declarative-node gradient, assembled densely (Prop. 1, Appendix B).

This is the *reference* implementation that the book teaches from: every
matrix of Proposition 1 is built explicitly in row-major vectorisation
(``rvec``), exactly as in the paper, so it can be inspected and checked entry
by entry.  The full Jacobian (:func:`kkt_jacobian`) holds ``(d C)^2`` numbers and
the vector-Jacobian product (:func:`kkt_vjp`) ``~ d C^3`` — use them for small
problems; the closed-form adjoint in :mod:`guiding_nc.core.nearest` is the fast path.

Notation (row-major vectorisation, ``rvec(X) = X.reshape(-1)``):

* ``f(H, U) = ||H - U M||_F^2 + delta/2 ||U - P||_F^2`` (Eq. 7)
* ``J(U) = U^T U - I_C``, of which the ``C(C+1)/2`` lower-triangular entries
  (``rvech``) are the independent constraints
* ``A = L_C (K_CC + I_{C^2}) (U kron I_C)^T``                 (Eq. 29), shape (C(C+1)/2, dC)
* ``B = rvec(D^2_{HU} f) = -2 (I_d kron M)``                  (Eq. 23), shape (dC, dC)
* ``G = rvec(D^2_{UU} f) - I_d kron Sigma(U)``                (Eq. 49), shape (dC, dC)
* ``Sigma(U) = sym(grad_U f^T U)``                           (Eq. 46)
* ``Dy = G^-1 A^T (A G^-1 A^T)^-1 A G^-1 B - G^-1 B``         (Prop. 1), shape (dC, dC)

About constants: the paper's Appendix B writes the unnormalised centring
matrix in places (its Eqs. 19–23 carry factors ``2/sqrt(C-1)`` and ``2/(C-1)``);
with the unit-Frobenius ``M`` used everywhere here, ``D_U f = 2 U M^2 - 2 H M +
delta (U - P)`` and ``B = -2 (I_d kron M)``.  The two agree once the scaling of
``M`` is accounted for; the book's chapter 5 checks each against finite
differences.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..etf import standard_simplex_etf, sym

__all__ = [
    "commutation_matrix",
    "elimination_matrix",
    "constraint_jacobian",
    "objective_gradient",
    "lagrangian_hessian",
    "mixed_hessian",
    "kkt_jacobian",
    "kkt_vjp",
    "kkt_memory_bytes",
]


def commutation_matrix(m: int, n: int, *, dtype=torch.float64, device=None) -> Tensor:
    """``K_mn`` with ``K_mn vec(X) = vec(X^T)`` for ``X`` of shape (m, n) (Eq. 25)."""
    K = torch.zeros(m * n, m * n, dtype=dtype, device=device)
    # Column-major vec: X[i, j] sits at j*m + i in vec(X) and at i*n + j in vec(X^T).
    i = torch.arange(m, device=device).repeat_interleave(n)
    j = torch.arange(n, device=device).repeat(m)
    K[i * n + j, j * m + i] = 1.0
    return K


def elimination_matrix(n: int, *, dtype=torch.float64, device=None) -> Tensor:
    """``L_n`` with ``L_n rvec(X) = rvech(X)``: the entries ``X[i, j]``, ``i >= j``, row by row (Eq. 26)."""
    rows, cols = torch.tril_indices(n, n, device=device)
    L = torch.zeros(rows.numel(), n * n, dtype=dtype, device=device)
    L[torch.arange(rows.numel(), device=device), rows * n + cols] = 1.0
    return L


def constraint_jacobian(U: Tensor, *, formula: bool = False) -> Tensor:
    """``A = L_C (K_CC + I) (U kron I_C)^T``: Jacobian of ``rvech(U^T U - I)`` w.r.t. ``rvec(U)`` (Eq. 29).

    Parameters
    ----------
    U : Tensor, shape (d, C)
    formula : bool
        Build ``A`` literally from the elimination and commutation matrices of
        Eq. 29 (an intermediate of size ``dC x C^2``; for teaching), instead of
        writing its non-zeros directly: row ``(i, j)`` is the derivative of
        ``u_i^T u_j``, i.e. ``u_j`` in column ``i`` plus ``u_i`` in column ``j``.

    Returns
    -------
    Tensor, shape (C(C+1)/2, d C)
    """
    d, C = U.shape
    if formula:
        eye = torch.eye(C, dtype=U.dtype, device=U.device)
        K = commutation_matrix(C, C, dtype=U.dtype, device=U.device)
        L = elimination_matrix(C, dtype=U.dtype, device=U.device)
        return L @ (K + torch.eye(C * C, dtype=U.dtype, device=U.device)) @ torch.kron(U, eye).T
    rows, cols = torch.tril_indices(C, C, device=U.device)
    m = rows.numel()
    A = torch.zeros(m, d, C, dtype=U.dtype, device=U.device)
    r = torch.arange(m, device=U.device)
    # Two separate additions so the diagonal rows (i == j) get 2 u_i.
    A[r, :, rows] += U[:, cols].T
    A[r, :, cols] += U[:, rows].T
    return A.reshape(m, d * C)


def objective_gradient(H: Tensor, U: Tensor, prox: Tensor, delta: float) -> Tensor:
    """Euclidean gradient ``D_U f = 2 U M^2 - 2 H M + delta (U - P)``, shape (d, C) (Eq. 32)."""
    M = standard_simplex_etf(H.shape[1], dtype=H.dtype, device=H.device)
    return 2.0 * U @ (M @ M) - 2.0 * H @ M + delta * (U - prox)


def lagrangian_hessian(H: Tensor, U: Tensor, prox: Tensor, delta: float) -> Tensor:
    """``G = rvec(D^2_UU f) - I_d kron Sigma(U)`` with ``Sigma = sym(D_U f^T U)`` (Eqs. 46–49), shape (dC, dC)."""
    d, C = U.shape
    M = standard_simplex_etf(C, dtype=U.dtype, device=U.device)
    eye_d = torch.eye(d, dtype=U.dtype, device=U.device)
    hess_f = 2.0 * torch.kron(eye_d, M @ M) + delta * torch.eye(d * C, dtype=U.dtype, device=U.device)
    Sigma = sym(objective_gradient(H, U, prox, delta).T @ U)
    return hess_f - torch.kron(eye_d, Sigma)


def mixed_hessian(H: Tensor) -> Tensor:
    """``B = rvec(D^2_{HU} f) = -2 (I_d kron M)``, shape (dC, dC) (Eq. 23, unit-Frobenius M)."""
    d, C = H.shape
    M = standard_simplex_etf(C, dtype=H.dtype, device=H.device)
    return -2.0 * torch.kron(torch.eye(d, dtype=H.dtype, device=H.device), M)


def _check_nonsingular(G_C: Tensor) -> None:
    """Prop. 1 needs G non-singular; G = I_d kron G_C, so it is enough to look at the C x C block."""
    eig = torch.linalg.eigvalsh(sym(G_C))
    scale = float(eig.abs().max())
    if float(eig.abs().min()) <= G_C.shape[0] * torch.finfo(G_C.dtype).eps * max(scale, 1e-300):
        raise ValueError(
            "the Hessian of the Lagrangian G is singular (smallest |eigenvalue| "
            f"{float(eig.abs().min()):.2e}): Proposition 1 does not apply. This happens at delta = 0, "
            "where the minimiser is not unique; use delta > 0"
        )


def _lagrangian_block(H: Tensor, U: Tensor, prox: Tensor, delta: float) -> Tensor:
    """``G_C`` with ``G = I_d kron G_C``: ``2 M^2 + delta I - Sigma(U)``, shape (C, C)."""
    C = U.shape[1]
    M = standard_simplex_etf(C, dtype=U.dtype, device=U.device)
    Sigma = sym(objective_gradient(H, U, prox, delta).T @ U)
    return 2.0 * M @ M + delta * torch.eye(C, dtype=U.dtype, device=U.device) - Sigma


def kkt_jacobian(H: Tensor, U: Tensor, prox: Tensor, delta: float) -> Tensor:
    """The full Jacobian ``Dy = d rvec(U*) / d rvec(H)`` of Proposition 1, shape (dC, dC).

    Parameters
    ----------
    H, U, prox : Tensor, shape (d, C)
        Class means, the solution ``U*`` and the proximal point.

    Book: chapter 5, "Proposition 1, assembled".
    """
    _check_nonsingular(_lagrangian_block(H, U, prox, delta))
    A = constraint_jacobian(U)
    B = mixed_hessian(H)
    G = lagrangian_hessian(H, U, prox, delta)
    GinvB = torch.linalg.solve(G, B)
    GinvAt = torch.linalg.solve(G, A.T)
    inner = torch.linalg.solve(A @ GinvAt, A @ GinvB)
    return GinvAt @ inner - GinvB


def kkt_vjp(H: Tensor, U: Tensor, prox: Tensor, delta: float, grad_U: Tensor):
    """``(dL/dH, dL/dprox)`` from Proposition 1, without forming the (dC, dC) Jacobian.

    Like the paper's implementation it holds the constraint Jacobian ``A``
    densely — ``C(C+1)/2 x dC`` entries, which is what makes its memory grow
    like ``d C^3`` — but it uses that both ``G`` and ``B`` are block diagonal,
    ``G = I_d kron G_C`` with ``G_C = 2 M^2 + delta I - Sigma(U)`` and
    ``B = -2 I_d kron M``, so no ``dC x dC`` matrix is ever built.  The Jacobian
    w.r.t. the proximal point has the same form with ``B_P = -delta I``.

    Shapes: ``H, U, prox, grad_U`` (d, C); returns two (d, C) tensors.
    Book: chapter 5.
    """
    d, C = H.shape
    M = standard_simplex_etf(C, dtype=H.dtype, device=H.device)
    G_C = _lagrangian_block(H, U, prox, delta)
    _check_nonsingular(G_C)
    G_C_inv = torch.linalg.inv(G_C)
    A = constraint_jacobian(U)  # (m, dC)
    m = A.shape[0]
    # G^-1 applied to rvec(X) is rvec(X G_C^-1) (G_C symmetric).
    GinvAt = (A.reshape(m, d, C) @ G_C_inv).reshape(m, d * C).T  # (dC, m)
    u = (grad_U @ G_C_inv).reshape(-1)  # G^-1 g
    # v^T Dy = v^T G^-1 A^T (A G^-1 A^T)^-1 A G^-1 B - v^T G^-1 B, with G symmetric.
    lam = torch.linalg.solve((A @ GinvAt).T, A @ u)
    w = (GinvAt @ lam - u).reshape(d, C)
    grad_H = -2.0 * w @ M  # w^T (-2 I kron M) = rvec(-2 w M), M symmetric
    grad_P = -delta * w
    return grad_H, grad_P


def kkt_memory_bytes(dim: int, num_classes: int, itemsize: int = 8) -> int:
    """Bytes held by :func:`kkt_vjp`'s dense matrices: ``A`` and ``G^-1 A^T`` (each ``C(C+1)/2 x dC``) and ``A G^-1 A^T``.

    The leading term ``2 * itemsize * d C^2 (C+1)/2`` is the cost of holding the
    constraint Jacobian densely, as the paper's implementation does.
    """
    n = dim * num_classes
    m = num_classes * (num_classes + 1) // 2
    return itemsize * (2 * m * n + 2 * m * m)
