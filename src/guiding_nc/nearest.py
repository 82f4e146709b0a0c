"""The nearest simplex ETF: an exact, differentiable solver (paper §3.2–3.6).

Problem (Eq. 7)::

    U* = argmin_{U in St(d, C)}  ||H - U M||_F^2 + delta/2 ||U - P||_F^2

with ``H`` the centred, unit-Frobenius class-mean matrix (d, C), ``M`` the
standard simplex ETF (C, C) and ``P`` the proximal point (d, C).

Why it has a closed form (book chapter 3).  On the Stiefel manifold
``||U M||_F^2 = tr(M^T U^T U M) = ||M||_F^2`` and ``||U||_F^2 = C`` are constant, so
up to constants the objective is ``-2 tr(U^T H M) - delta tr(U^T P)`` (M is
symmetric), i.e. ``-tr(U^T A)`` with ``A = 2 H M + delta P``.  Maximising
``tr(U^T A)`` over ``St(d, C)`` is the orthogonal Procrustes problem; with the
thin SVD ``A = Y diag(s) V^T`` von Neumann's trace inequality gives
``tr(U^T A) <= sum(s)``, attained by the polar factor ``U* = Y V^T``.  It is the
unique global minimiser whenever ``A`` has full column rank, which ``delta > 0``
ensures for any ``P`` that is not adversarially placed.

Why its gradient has a closed form (book chapter 5).  Stationarity on the
manifold means ``(I - U U^T) A = 0`` and ``S = U^T A`` symmetric.  Differentiating
both conditions and writing ``S = V diag(s) V^T`` gives, for a perturbation ``dA``,

    dU = U V [(X - X^T) / (s_i + s_j)] V^T + (I - U U^T) dA V diag(1/s) V^T,
    X = V^T U^T dA V,

whose adjoint (the vector-Jacobian product for an upstream gradient ``G``) is

    dL/dA = U V [(B - B^T) / (s_i + s_j)] V^T + (I - U U^T) G V diag(1/s) V^T,
    B = V^T U^T G V,

followed by ``dL/dH = 2 (dL/dA) M`` and ``dL/dP = delta dL/dA``.  Only sums of
singular values appear, so it is finite when singular values coincide — the
neural-collapse regime, exactly where differentiating ``torch.linalg.svd``
returns NaN.  It costs O(d C^2) time and O(d C) memory.  The paper's dense
implicit-function (KKT) formula is kept as a reference in
:mod:`guiding_nc.ddn`.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .errors import NonFiniteInputError
from .etf import (
    check_num_classes,
    orthonormality_tolerance,
    canonical_point,
    mul_simplex_etf,
    orthonormality_error,
    sym,
)

__all__ = [
    "nearest_etf",
    "nearest_etf_objective",
    "polar_factor",
    "polar_route",
    "polar_vjp",
    "procrustes_matrix",
    "check_inputs",
    "NearestETF",
    "SOLVERS",
    "BACKWARDS",
]

SOLVERS = ("closed_form", "trust_region")  # how the nearest ETF is found (argument `method`)
BACKWARDS = ("closed_form", "kkt", "none")


# --------------------------------------------------------------------------- checks
def check_inputs(H: Tensor, prox: Optional[Tensor], delta: float, method: str, backward: str, check: bool = True) -> None:
    """The checks :func:`nearest_etf` runs on its inputs (a ``ValueError``/``TypeError`` naming the
    problem); ``check=False`` skips those that read a value back to the host."""
    if not isinstance(H, Tensor):
        raise TypeError(f"H must be a torch.Tensor, got {type(H).__name__}")
    if H.ndim != 2:
        raise ValueError(f"H must be a (d, C) matrix of class means, got shape {tuple(H.shape)}")
    d, C = H.shape
    if C < 2:
        raise ValueError(f"the nearest simplex ETF needs at least 2 classes, got C={C}")
    if C > d:
        raise ValueError(
            f"the nearest simplex ETF needs feature dimension d >= number of classes C, got d={d}, C={C}"
        )
    if not H.is_floating_point():
        raise TypeError(f"H must be a floating-point tensor, got dtype {H.dtype}")
    if (check or method == "trust_region") and not bool(torch.isfinite(H).all()):
        # The trust-region route runs on the host anyway, so it always checks: its solver would
        # otherwise return its starting point for a NaN input without a word.
        raise NonFiniteInputError("H contains non-finite entries (NaN or Inf)")
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; choose one of {SOLVERS}")
    if backward not in BACKWARDS:
        raise ValueError(f"unknown backward {backward!r}; choose one of {BACKWARDS}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta) or delta < 0:
        raise ValueError(f"delta must be a finite number >= 0, got {delta!r}")
    if prox is not None:
        if not isinstance(prox, Tensor):
            raise TypeError(f"prox must be a torch.Tensor or None, got {type(prox).__name__}")
        if prox.shape != H.shape:
            raise ValueError(f"prox has shape {tuple(prox.shape)} but H has shape {tuple(H.shape)}; they must match")
        if prox.device != H.device:
            raise ValueError(f"prox is on {prox.device} but H is on {H.device}")
        if prox.dtype != H.dtype:
            raise ValueError(f"prox has dtype {prox.dtype} but H has dtype {H.dtype}; they must match")
        if not check:
            return
        if not bool(torch.isfinite(prox).all()):
            raise NonFiniteInputError("prox contains non-finite entries (NaN or Inf)")
        err = orthonormality_error(prox.detach())
        tol = orthonormality_tolerance(prox.dtype)
        if err > tol:
            raise ValueError(
                f"prox must be a point of the Stiefel manifold (prox^T prox = I); max |prox^T prox - I| = {err:.3g} > {tol:.1g}"
            )


# --------------------------------------------------------------------- objective
def nearest_etf_objective(U: Tensor, H: Tensor, prox: Optional[Tensor] = None, delta: float = 0.0) -> Tensor:
    """Eq. 7: ``||H - U M||_F^2 + delta/2 ||U - prox||_F^2`` (a scalar tensor).

    Parameters
    ----------
    U, H, prox : Tensor, shape (d, C)
    """
    value = ((H - mul_simplex_etf(U)) ** 2).sum()
    if prox is not None and delta:
        value = value + 0.5 * delta * ((U - prox) ** 2).sum()
    return value


# ------------------------------------------------------------------- polar factor
POLAR_METHODS = ("auto", "svd", "gram")

# The Gram route loses accuracy like eps * kappa(A)^2; it is used only while that
# bound stays below this (about 1e-11 of the polar factor's entries).
_GRAM_ERROR_BOUND = 1e-11


def _polar_svd(A: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Polar factor by the thin SVD, verified: the factor returned is orthonormal or an error is raised.

    At collapse ``A = 2 H M + delta P`` has ``C - 1`` (nearly) equal singular values, and LAPACK's
    float32 divide-and-conquer SVD is unreliable on such a matrix: a UFM-1000 run met it both
    failing to converge (``LinAlgError``) and, a few dozen steps later, returning singular vectors
    so inaccurate that ``max |U^T U - I| = 0.26`` (and later NaN ones). So the factor is checked
    (one ``C x d x C`` product, about a tenth of the SVD's cost; on an accelerator a host sync)
    against the tolerance the layer's own proximal-point check uses, and on failure recomputed in
    float64, then from the float64 eigendecomposition of ``A^T A`` (which clustered eigenvalues do
    not trouble, and which the small ``kappa(A)`` at collapse makes accurate).
    Results are rounded back to ``A``'s dtype.
    """
    tol = orthonormality_tolerance(A.dtype)
    tries = [A] if A.dtype == torch.float64 else [A, A.to(torch.float64)]
    problems = []
    for X in tries:
        try:
            Y, s, Vh = torch.linalg.svd(X, full_matrices=False)
        except torch.linalg.LinAlgError as err:
            problems.append(f"did not converge on the {X.dtype} matrix ({err})")
        else:
            U = Y @ Vh
            err = orthonormality_error(U)
            if err <= tol:
                return U.to(A.dtype), s.to(A.dtype), Vh.transpose(-1, -2).to(A.dtype)
            problems.append(f"returned non-orthonormal singular vectors for the {X.dtype} matrix "
                            f"(max |U^T U - I| = {err:.2g})")
        warnings.warn(
            f"torch.linalg.svd {problems[-1]} of shape {tuple(A.shape)} (clustered singular values, as at "
            f"neural collapse); retrying {'in float64' if X.dtype != torch.float64 else 'by the Gram matrix'}",
            RuntimeWarning,
            stacklevel=4,
        )
    # Last resort, judged by the same orthonormality check rather than the Gram route's own
    # conditioning bound: only a factor that fails the check is refused.
    gram = _polar_gram(A.to(torch.float64), error_bound=None)
    if gram is None:
        raise torch.linalg.LinAlgError(
            f"the polar factor of a {tuple(A.shape)} matrix is undefined: the SVD failed ({'; '.join(problems)}) and "
            "A is rank-deficient (A^T A has an eigenvalue <= 0); with delta > 0 this means non-finite or "
            "degenerate class means"
        )
    U, s64, V = gram
    err = orthonormality_error(U)
    if not err <= tol:
        raise torch.linalg.LinAlgError(
            f"no accurate polar factor for a {tuple(A.shape)} matrix: the SVD failed ({'; '.join(problems)}) and the "
            f"Gram route gives max |U^T U - I| = {err:.2g} (A is too ill-conditioned)"
        )
    return U.to(A.dtype), s64.to(A.dtype), V.to(A.dtype)


def _thin_svd(A: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``torch.linalg.svd(A, full_matrices=False)``, retried in float64 (and rounded back) if it
    does not converge; see :func:`_polar_svd`."""
    try:
        return torch.linalg.svd(A, full_matrices=False)
    except torch.linalg.LinAlgError as err:
        if A.dtype == torch.float64:
            raise
        warnings.warn(f"torch.linalg.svd did not converge on a {tuple(A.shape)} {A.dtype} matrix ({err}); "
                      "retrying in float64", RuntimeWarning, stacklevel=3)
    Y, s, Vh = torch.linalg.svd(A.to(torch.float64), full_matrices=False)
    return Y.to(A.dtype), s.to(A.dtype), Vh.to(A.dtype)


def _polar_gram(A: Tensor, error_bound: Optional[float] = _GRAM_ERROR_BOUND) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """Polar factor from the eigendecomposition of ``A^T A``; ``None`` if ``A`` is rank-deficient
    or, unless ``error_bound`` is ``None``, too ill-conditioned (``eps * kappa^2 > error_bound``)."""
    lam, V = torch.linalg.eigh(A.transpose(-1, -2) @ A)
    lam, V = lam.flip(-1), V.flip(-1)  # descending, as the SVD returns them
    lam_max, lam_min = float(lam[0]), float(lam[-1])
    if not lam_min > 0:
        return None
    if error_bound is not None and torch.finfo(A.dtype).eps * (lam_max / lam_min) > error_bound:
        return None
    s = lam.sqrt()
    # U = A V diag(1/s) V^T; grouping V diag(1/s) V^T first costs C^3 instead of d C^2.
    return A @ ((V / s) @ V.transpose(-1, -2)), s, V


_GRAM_MIN_CLASSES = 32


def _check_polar_method(method: str) -> None:
    if method not in POLAR_METHODS:
        raise ValueError(f"unknown polar method {method!r}; choose one of {POLAR_METHODS}")


def polar_route(A: Tensor, method: str = "auto") -> str:
    """Which algorithm :func:`polar_factor` tries first for ``A`` (before its conditioning is known).

    ``"auto"`` tries the Gram route for float64 on the CPU with ``C >= 32`` columns, where
    it is measured to be about 2x faster than the SVD (``python -m guiding_nc.bench etf``),
    and uses the SVD otherwise: in float32 ``eps * kappa^2`` exceeds the error bound for every
    ``kappa > 1``; below 32 columns the SVD costs well under a millisecond and the nearest-ETF
    matrix is often too ill-conditioned for the Gram route anyway; on accelerators the
    conditioning test would be a host sync (and the choice is not measured here).
    """
    _check_polar_method(method)
    if method == "auto":
        use_gram = A.dtype == torch.float64 and A.device.type == "cpu" and A.shape[-1] >= _GRAM_MIN_CLASSES
        return "gram" if use_gram else "svd"
    return method


def polar_factor(A: Tensor, method: str = "auto", *, return_route: bool = False):
    """Polar factor of a (d, C) matrix, with the spectrum the adjoint needs.

    Returns ``(U, s, V)`` with ``U = Y V^T`` (the Stiefel point maximising
    ``tr(U^T A)``), ``s`` the singular values (C,), descending, and ``V`` (C, C) the
    right singular vectors, so that ``U^T A = V diag(s) V^T``.

    Two routes give the same factor:

    * ``"svd"``: one thin SVD ``A = Y diag(s) V^T``; backward stable in any dtype.
    * ``"gram"``: the eigendecomposition ``A^T A = V diag(s^2) V^T`` and
      ``U = A V diag(1/s) V^T``.  About half the flops of the SVD (one ``d x C x C``
      product to form ``A^T A``, one to apply the result, and a ``C x C``
      eigensolver), but squaring ``A`` squares its condition number: the entries of
      ``U`` are accurate to about ``eps * kappa(A)^2``.  It is used only while that is
      below 1e-11 (checked from the computed eigenvalues); otherwise the SVD is used
      (``"auto"``) or a ``ValueError`` is raised (``"gram"``).

    ``"auto"`` (default) picks the route by :func:`polar_route`.  In the nearest-ETF
    problem ``A = 2 H M + delta P``, ``||M||_2 = 1/sqrt(C-1)`` and ``A 1 = delta P 1``, so
    ``kappa(A) ~ 2 sigma_max(H) / (sqrt(C-1) delta)``; with collapsed unit-Frobenius means
    (``sigma(H) = 1/sqrt(C-1)``) that is ``2 / ((C-1) delta)``: about 2 at ``C = 1000`` and
    20 at ``C = 100`` for ``delta = 1e-3``, where the Gram route is exact to ~1e-14, but
    over 200 at ``C = 10``, where the SVD takes over.

    Parameters
    ----------
    A : Tensor, shape (d, C)
    method : {"auto", "svd", "gram"}
    return_route : bool
        Also return the route actually taken, ``"gram"`` or ``"svd"`` (after any fallback).

    Book: chapter 3, "Speed".
    """
    out = _polar(A, method)
    return out if return_route else out[:3]


def _polar(A: Tensor, method: str = "auto") -> Tuple[Tensor, Tensor, Tensor, str]:
    """:func:`polar_factor` plus the route it actually took (``"gram"`` or ``"svd"``)."""
    if polar_route(A, method) == "gram":
        out = _polar_gram(A)
        if out is not None:
            return (*out, "gram")
        if method == "gram":
            raise ValueError(
                "A is too ill-conditioned for the Gram route of the polar factor "
                f"(eps * kappa(A)^2 > {_GRAM_ERROR_BOUND:g}); use method='svd' or 'auto'"
            )
    return (*_polar_svd(A), "svd")


def polar_vjp(U: Tensor, s: Tensor, V: Tensor, grad_U: Tensor) -> Tensor:
    """Adjoint of ``A -> polar(A)`` at ``U = polar(A)`` applied to ``grad_U``.

    Valid at any stationary point of ``tr(U^T A)`` on ``St(d, C)``, where
    ``U^T A = V diag(s) V^T``; needs ``s_i + s_j != 0`` and ``s > 0``.

    Parameters
    ----------
    U : Tensor, shape (d, C)
    s : Tensor, shape (C,)
    V : Tensor, shape (C, C)
    grad_U : Tensor, shape (d, C)

    Returns
    -------
    grad_A : Tensor, shape (d, C)

    Book: chapter 5, "The closed-form adjoint".
    """
    UtG = U.transpose(-1, -2) @ grad_U
    B = V.transpose(-1, -2) @ UtG @ V
    denom = s.unsqueeze(-1) + s.unsqueeze(-2)
    skew = (B - B.transpose(-1, -2)) / denom
    tangential = (U @ V) @ skew @ V.transpose(-1, -2)
    # (I - U U^T) G S^{-1}, without ever forming a d x d matrix.
    GVs = (grad_U @ V) / s
    normal = GVs @ V.transpose(-1, -2) - U @ ((UtG @ V) / s) @ V.transpose(-1, -2)
    return tangential + normal


def _canonical_limit(HM: Tensor, E: Tensor) -> Tensor:
    """Solution of the delta = 0 problem picked as the delta -> 0 limit with prox ``E``.

    ``HM`` is ``H M`` (d, C) and ``E`` the preferred Stiefel point (d, C).  The
    minimisers of Eq. 6 are the maximisers of ``tr(U^T HM)``; ``HM`` has rank
    ``r <= C - 1`` so ``U`` is fixed on the row space of ``HM`` (``Y_r V_r^T``)
    and free on its null space ``N``.  As ``delta -> 0`` the proximal solution
    ``polar(2 HM + delta E)`` converges to the minimiser whose free part is the
    polar factor of ``E N`` projected away from ``Y_r``: the family member
    closest to ``E``.  Book: chapter 3, "A family of solutions".
    """
    d, C = HM.shape
    Y, s, Vh = _thin_svd(HM)
    V = Vh.transpose(-1, -2)
    eps = torch.finfo(HM.dtype).eps
    tol = max(d, C) * eps * (float(s[0]) if s.numel() else 0.0)
    r = int((s > tol).sum())
    U = Y[:, :r] @ V[:, :r].transpose(-1, -2)
    if r == C:
        return U
    N = V[:, r:]  # (C, C - r) null-space basis
    Yr = Y[:, :r]
    B = E @ N
    B = B - Yr @ (Yr.transpose(-1, -2) @ B)
    Yb, sb, Vbh = _thin_svd(B)
    rb = int((sb > max(d, C) * eps * max(1.0, float(sb[0]))).sum())
    if rb < B.shape[1]:
        # E N meets the fixed part: complete the frame deterministically with
        # the standard basis, orthogonalised against everything fixed so far.
        Q = Yb[:, :rb] @ Vbh[:rb]  # partial polar factor on the usable directions
        fixed = torch.cat([Yr, Yb[:, :rb]], dim=1)
        extra = []
        for k in range(d):
            if len(extra) == B.shape[1] - rb:
                break
            e = torch.zeros(d, dtype=HM.dtype, device=HM.device)
            e[k] = 1.0
            basis = torch.cat([fixed] + [x.unsqueeze(1) for x in extra], dim=1)
            e = e - basis @ (basis.transpose(-1, -2) @ e)
            e = e - basis @ (basis.transpose(-1, -2) @ e)
            n = torch.linalg.vector_norm(e)
            if n > 1e-3:
                extra.append(e / n)
        Z = torch.stack(extra, dim=1)
        Qn = Q + Z @ Vbh[rb:]
        return U + Qn @ N.transpose(-1, -2)
    return U + (Yb @ Vbh) @ N.transpose(-1, -2)


# --------------------------------------------------------------- autograd function
class _NearestETFFunction(torch.autograd.Function):
    """``(H, prox) -> U*`` with a custom backward; ``U*`` is computed outside."""

    @staticmethod
    def forward(ctx, H, prox, U, s, V, delta, backward):
        ctx.delta = delta
        ctx.backward_mode = backward
        ctx.save_for_backward(H, prox, U, s, V)
        return U.clone()

    @staticmethod
    @once_differentiable  # the adjoint treats the SVD factors as constants: no silent wrong Hessians
    def backward(ctx, grad_U):
        H, prox, U, s, V = ctx.saved_tensors
        delta = ctx.delta
        if ctx.backward_mode == "kkt":
            from .ddn import kkt_vjp

            grad_H, grad_P = kkt_vjp(H, U, prox, delta, grad_U)
        else:
            grad_A = polar_vjp(U, s, V, grad_U)
            grad_H = 2.0 * mul_simplex_etf(grad_A)
            grad_P = delta * grad_A
        return (
            grad_H if ctx.needs_input_grad[0] else None,
            grad_P if ctx.needs_input_grad[1] else None,
            None, None, None, None, None,
        )


def procrustes_matrix(H: Tensor, prox: Tensor, delta: float) -> Tensor:
    """``A = 2 H M + delta prox`` (d, C): Eq. 7 is ``const - tr(U^T A)`` on the manifold (chapter 3)."""
    return 2.0 * mul_simplex_etf(H) + delta * prox


def _spectrum_at(U: Tensor, A: Tensor) -> Tuple[Tensor, Tensor]:
    # S = sym(U^T A) is diagonalised by the right singular vectors at the optimum;
    # used when U comes from an iterative solver rather than our own SVD.
    S = sym(U.transpose(-1, -2) @ A)
    s, V = torch.linalg.eigh(S)
    return s, V


def nearest_etf(
    H: Tensor,
    prox: Optional[Tensor] = None,
    delta: float = 1e-3,
    method: str = "closed_form",
    backward: str = "closed_form",
    *,
    max_iterations: int = 30,
    polar: str = "auto",
    return_prox: bool = False,
    check: bool = True,
):
    """The nearest simplex ETF direction ``U*`` to the class means ``H`` (Eq. 7).

    Parameters
    ----------
    H : Tensor, shape (d, C)
        Centred class means, one column per class (the paper scales them to unit
        Frobenius norm; the solver does not require it).  Any device; float32 or
        float64 (float16 / bfloat16 are solved in float32 and returned in their own
        dtype).  Gradients flow to ``H`` (and to ``prox`` if it requires grad).
    prox : Tensor, shape (d, C), optional
        Proximal point on ``St(d, C)``.  ``None`` runs the paper's first-step
        scheme: solve the ``delta = 0`` problem (Eq. 6) from the canonical
        direction ``[I_C; 0]``, then solve Eq. 7 with that solution as both start
        and proximal point.  For the closed form, the ``delta = 0`` problem has a
        family of minimisers; the one returned is the ``delta -> 0`` limit of the
        proximal solution with the canonical direction as proximal point.
    delta : float
        Proximal coefficient (paper: 1e-3).  ``delta = 0`` with an explicit
        ``prox`` solves Eq. 6; it is not differentiable (the minimiser is not
        unique), so it needs ``backward="none"`` when ``H`` requires grad.
    method : {"closed_form", "trust_region"}
        ``closed_form``: the polar factor of ``A = 2 H M + delta prox`` (one thin
        SVD, or one eigendecomposition of ``A^T A``; the global minimiser).  ``trust_region``: pymanopt's Riemannian
        trust-region on ``Stiefel(d, C)`` with the autograd backend, warm-started
        at ``prox`` and capped at ``max_iterations`` (the paper's solver).
    backward : {"closed_form", "kkt", "none"}
        First derivatives only (a second ``grad`` through it is refused rather than wrong).
        ``closed_form``: the polar-factor adjoint, O(d C^2).  ``kkt``: the paper's
        dense implicit-function formula (Prop. 1 with Eq. 49), memory ~ (dC)^2;
        small problems only.  ``none``: no gradient through the solve.
    polar : {"auto", "svd", "gram"}
        How the closed form computes the polar factor of ``A`` (see :func:`polar_factor`):
        the same minimiser either way; ``"auto"`` takes the faster route that stays accurate.
    return_prox : bool
        Also return the proximal point actually used (useful with ``prox=None``).
    check : bool
        Check that ``H`` and ``prox`` are finite and that ``prox`` is orthonormal.  Each
        check reads a value back to the host; on a GPU inside a training loop, where the
        caller detects non-finite losses itself, ``check=False`` avoids those syncs.
        Shape, dtype and option checks always run (they cost nothing).

    Returns
    -------
    U : Tensor, shape (d, C), with ``U^T U = I``.

    Book: chapter 3 (the solution) and chapter 5 (its gradient).
    """
    if isinstance(H, Tensor) and H.dtype in (torch.float16, torch.bfloat16):
        # Half precision (autocast) cannot hold the solve: compute in float32, hand back H's dtype
        # (autograd carries the gradient through both casts).
        if prox is not None and isinstance(prox, Tensor) and prox.dtype != H.dtype:
            raise ValueError(f"prox has dtype {prox.dtype} but H has dtype {H.dtype}; they must match")
        out = nearest_etf(H.float(), None if prox is None else prox.float(), delta, method, backward,
                          max_iterations=max_iterations, polar=polar, return_prox=return_prox, check=check)
        if return_prox:
            return out[0].to(H.dtype), out[1].to(H.dtype)
        return out.to(H.dtype)
    check_inputs(H, prox, delta, method, backward, check)
    _check_polar_method(polar)
    d, C = H.shape
    needs_grad = torch.is_grad_enabled() and (H.requires_grad or (prox is not None and prox.requires_grad))

    if prox is None:
        with torch.no_grad():
            E = canonical_point(d, C, dtype=H.dtype, device=H.device)
            if method == "closed_form":
                prox = _canonical_limit(mul_simplex_etf(H.detach()), E)
            else:
                from .trust_region import trust_region_solve

                prox = trust_region_solve(H.detach(), E, 0.0, initial=E, max_iterations=max_iterations)
    if delta == 0 and needs_grad and backward != "none":
        raise ValueError(
            "delta = 0 has a whole family of minimisers, so U* is not differentiable in H; "
            "use delta > 0 or backward='none'"
        )

    with torch.no_grad():
        Hd, Pd = H.detach(), prox.detach()
        if method == "closed_form":
            if delta == 0:
                U = _canonical_limit(mul_simplex_etf(Hd), Pd)
                s = V = None
            else:
                U, s, V = polar_factor(procrustes_matrix(Hd, Pd, delta), polar)
        else:
            from .trust_region import trust_region_solve

            U = trust_region_solve(Hd, Pd, delta, initial=Pd, max_iterations=max_iterations)
            s = V = None
            if needs_grad and backward == "closed_form":
                s, V = _spectrum_at(U, procrustes_matrix(Hd, Pd, delta))

    if needs_grad and backward != "none":
        if s is None:
            s = torch.empty(0, dtype=H.dtype, device=H.device)
            V = torch.empty(0, dtype=H.dtype, device=H.device)
        out = _NearestETFFunction.apply(H, prox, U, s, V, float(delta), backward)
    else:
        out = U
    return (out, prox) if return_prox else out


# ------------------------------------------------------------------------ module
class NearestETF(nn.Module):
    """Stateful nearest-ETF layer: ``H -> U*`` with the proximal point carried across steps.

    The first call (or the first after :meth:`reset`) uses the paper's
    two-stage initialisation (``prox=None`` in :func:`nearest_etf`); every later
    call uses the previous solution as both warm start and proximal point.  The
    state is a buffer, so it is saved by ``state_dict`` and moves with ``.to()``.

    Parameters
    ----------
    dim, num_classes : int
        ``d >= C >= 2``.
    delta : float
        Proximal coefficient (paper: 1e-3).
    method, backward : str
        As in :func:`nearest_etf`.
    check : bool or None
        Input checks of :func:`nearest_etf`.  ``None`` (default) checks on the CPU and
        skips them on accelerators, where each check is a host sync; the proximal point
        is the layer's own previous solution and is never re-checked.

    Shapes: ``forward(H: (d, C)) -> U: (d, C)``.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        delta: float = 1e-3,
        method: str = "closed_form",
        backward: str = "closed_form",
        max_iterations: int = 30,
        check: Optional[bool] = None,
    ):
        super().__init__()
        C = check_num_classes(num_classes)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < C:
            raise ValueError(f"NearestETF needs an int feature dimension dim >= num_classes={C}, got {dim!r}")
        if method not in SOLVERS:
            raise ValueError(f"unknown method {method!r}; choose one of {SOLVERS}")
        if backward not in BACKWARDS:
            raise ValueError(f"unknown backward {backward!r}; choose one of {BACKWARDS}")
        if not math.isfinite(delta) or delta <= 0:
            raise ValueError(f"NearestETF needs delta > 0 (the proximal term makes U* unique), got {delta!r}")
        self.dim, self.num_classes = dim, C
        self.delta, self.method, self.backward, self.max_iterations = float(delta), method, backward, max_iterations
        self.check = check
        self.register_buffer("prox", torch.zeros(dim, C))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # Host-side mirror of the buffer, so forward never reads a device value back.
        self._initialized = False

    def reset(self) -> None:
        """Forget the proximal state; the next call re-initialises from the canonical direction."""
        self.prox.zero_()
        self.initialized.fill_(False)
        self._initialized = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    def forward(self, H: Tensor) -> Tensor:
        if H.ndim != 2 or H.shape != (self.dim, self.num_classes):
            raise ValueError(
                f"NearestETF expects class means of shape ({self.dim}, {self.num_classes}), got {tuple(H.shape)}"
            )
        prox = self.prox.to(dtype=H.dtype) if self._initialized else None
        check = (H.device.type == "cpu") if self.check is None else self.check
        U = nearest_etf(H, prox, self.delta, self.method, self.backward, max_iterations=self.max_iterations, check=check)
        # Re-assigning (not copy_) keeps the proximal point in the caller's dtype.
        self.prox = U.detach().clone()
        self.initialized.fill_(True)
        self._initialized = True
        return U

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_classes={self.num_classes}, delta={self.delta}, "
            f"method={self.method!r}, backward={self.backward!r}"
        )
