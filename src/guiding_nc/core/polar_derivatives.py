"""Forward-mode and second derivatives of the polar factor ``U = polar(A)`` (d, C).

With ``P = U^T A`` (symmetric positive definite at the polar factor) the derivative is

    dU = (I - U U^T) dA P^{-1} + U Omega,     P Omega + Omega P = U^T dA - dA^T U

(:func:`polar_jvp`; its adjoint is :func:`guiding_nc.core.polar.polar_vjp`).  Both unknowns solve
a Lyapunov equation in ``P``; :func:`lyapunov_solve` solves it in ``P``'s eigenbasis, dividing by
sums of eigenvalues only (finite at neural collapse, where they cluster), and is itself
differentiable to any order, forward and reverse.  :func:`polar_vjp_differentiable` writes the
adjoint with it, so that differentiating the adjoint -- a Hessian, ``gradgradcheck``, a gradient
penalty -- differentiates ``U`` and ``P`` too, instead of holding the factors constant.
Book: chapter 5.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .etf import sym

__all__ = ["polar_jvp", "lyapunov_solve", "polar_vjp_differentiable"]


def polar_jvp(U: Tensor, s: Tensor, V: Tensor, dA: Tensor) -> Tensor:
    """Forward-mode derivative of ``A -> polar(A)`` at ``U = polar(A)`` in the direction ``dA``.

    ``dU = U Omega + (I - U U^T) dA S^{-1}`` with ``S = U^T A = V diag(s) V^T`` and
    ``Omega = V [(X - X^T) / (s_i + s_j)] V^T``, ``X = V^T U^T dA V`` (the solution of
    ``Omega S + S Omega = U^T dA - dA^T U``).  Shapes: ``U, dA`` (d, C), ``s`` (C,), ``V`` (C, C).
    """
    UtdA = U.transpose(-1, -2) @ dA
    X = V.transpose(-1, -2) @ UtdA @ V
    Omega = V @ ((X - X.transpose(-1, -2)) / (s.unsqueeze(-1) + s.unsqueeze(-2))) @ V.transpose(-1, -2)
    Sinv = (V / s.unsqueeze(-2)) @ V.transpose(-1, -2)
    return U @ Omega + (dA - U @ UtdA) @ Sinv


def _solve_in_eigenbasis(P: Tensor, K: Tensor) -> Tensor:
    lam, Q = torch.linalg.eigh(sym(P))
    return Q @ ((Q.transpose(-1, -2) @ K @ Q) / (lam.unsqueeze(-1) + lam.unsqueeze(-2))) @ Q.transpose(-1, -2)


class _Lyapunov(torch.autograd.Function):
    """``X`` with ``P X + X P = K`` for a symmetric positive definite ``P`` (C, C).

    Derivatives: ``L(dX) = dK - dP X - X dP`` forward; ``gK = L^{-1}(gX)`` and
    ``gP = -(gK X^T + X^T gK)`` in reverse (``L(Y) = P Y + Y P`` is self-adjoint).  Both are
    written with this function again, so every order is exact.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(P: Tensor, K: Tensor) -> Tensor:
        return _solve_in_eigenbasis(P, K)

    @staticmethod
    def setup_context(ctx, inputs, output):
        P, _ = inputs
        ctx.save_for_backward(P, output)
        ctx.save_for_forward(P, output)

    @staticmethod
    def backward(ctx, grad_X: Tensor):
        P, X = ctx.saved_tensors
        grad_K = _Lyapunov.apply(P, grad_X)
        grad_P = -(grad_K @ X.transpose(-1, -2) + X.transpose(-1, -2) @ grad_K)
        return grad_P, grad_K

    @staticmethod
    def jvp(ctx, dP, dK):
        P, X = ctx.saved_tensors
        rhs = torch.zeros_like(X) if dK is None else dK
        if dP is not None:
            rhs = rhs - dP @ X - X @ dP
        return _Lyapunov.apply(P, rhs)


def lyapunov_solve(P: Tensor, K: Tensor) -> Tensor:
    """``X`` with ``P X + X P = K``, ``P`` (C, C) symmetric positive definite; differentiable to
    any order in ``P`` and ``K`` (forward and reverse mode)."""
    if P.ndim != 2 or P.shape[0] != P.shape[1] or K.shape != P.shape:
        raise ValueError(f"lyapunov_solve needs square P and K of one shape, got {tuple(P.shape)} and {tuple(K.shape)}")
    return _Lyapunov.apply(P, K)


def polar_vjp_differentiable(U: Tensor, A: Tensor, grad_U: Tensor) -> Tensor:
    """:func:`guiding_nc.core.polar.polar_vjp` written so that it can be differentiated again.

    ``grad_A = (I - U U^T) G P^{-1} + U Z`` with ``P = sym(U^T A)``, ``P Z + Z P = U^T G - G^T U``
    and ``P^{-1}`` from ``P X + X P = 2 I``; every factor is a differentiable function of ``U``,
    ``A`` and ``G = grad_U``, so when ``U`` is itself a differentiable function of ``A`` the
    derivative of the result is the second derivative of the polar factor.
    """
    C = U.shape[-1]
    P = sym(U.transpose(-1, -2) @ A)
    UtG = U.transpose(-1, -2) @ grad_U
    Z = lyapunov_solve(P, UtG - UtG.transpose(-1, -2))
    P_inv = lyapunov_solve(P, 2.0 * torch.eye(C, dtype=P.dtype, device=P.device))
    return grad_U @ P_inv - U @ (UtG @ P_inv) + U @ Z
