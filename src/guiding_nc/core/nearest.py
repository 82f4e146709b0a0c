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
:mod:`guiding_nc.core.reference.kkt_gradient`.

The polar factor's routes (SVD, Gram matrix, cuSOLVER's gesvda, Newton–Schulz) and its adjoint live
in :mod:`guiding_nc.core.polar`; their public names are importable from here too.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .checks import DELTA, PROX_DELTA, Choice, Flag, Integer, Maybe
from .errors import NonFiniteInputError
from .etf import (
    check_num_classes,
    orthonormality_tolerance,
    canonical_point,
    mul_simplex_etf,
    orthonormality_error,
)
from .polar import (
    NewtonSchulzState,
    check_polar_method,
    polar_solve,
    polar_spectrum,
    polar_vjp,
    polar_vjp_newton_schulz,
)
from .polar_derivatives import polar_jvp, polar_vjp_differentiable

__all__ = [
    "nearest_etf",
    "nearest_etf_objective",
    "procrustes_matrix",
    "check_inputs",
    "NearestETF",
    "SOLVERS",
    "BACKWARDS",
]

SOLVERS = ("closed_form", "trust_region")  # how the nearest ETF is found (argument `method`)
BACKWARDS = ("closed_form", "kkt", "none")
_METHOD = Choice(SOLVERS, style="unknown", label="method")
_BACKWARD = Choice(BACKWARDS, style="unknown", label="backward")
_ITERATIONS = Integer(1, 10_000)


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
    _METHOD("method", method)
    _BACKWARD("backward", backward)
    PROX_DELTA("delta", delta)
    Flag()("check", check)
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


def _thin_svd(A: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``torch.linalg.svd(A, full_matrices=False)``, retried in float64 (and rounded back) if it
    does not converge (as the SVD route of :mod:`guiding_nc.core.polar` does)."""
    try:
        return torch.linalg.svd(A, full_matrices=False)
    except torch.linalg.LinAlgError as err:
        if A.dtype == torch.float64:
            raise
        warnings.warn(f"torch.linalg.svd did not converge on a {tuple(A.shape)} {A.dtype} matrix ({err}); "
                      "retrying in float64", RuntimeWarning, stacklevel=3)
    Y, s, Vh = torch.linalg.svd(A.to(torch.float64), full_matrices=False)
    return Y.to(A.dtype), s.to(A.dtype), Vh.to(A.dtype)


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
def _refuse_kkt(what: str) -> None:
    raise RuntimeError(f"{what} through nearest_etf(backward='kkt') are not implemented (the KKT formula is a "
                       "reference for the first-order backward only); use backward='closed_form', the same "
                       "derivative in closed form")


class _NearestETFFunction(torch.autograd.Function):
    """``(H, prox) -> U*`` with closed-form derivatives; ``U*`` is computed outside.

    * reverse mode (:meth:`backward`): the polar adjoint (:func:`polar_vjp`, or
      :func:`polar_vjp_newton_schulz` when ``U`` came from that route) with the SVD factors held
      constant -- exact for a first derivative.  When the backward itself is recorded
      (``create_graph=True``, ``torch.func.grad``, a Hessian), it is computed by
      :func:`polar_vjp_differentiable` from a ``U`` that depends on ``(H, prox)`` through this
      function again, so second (and higher) derivatives are exact too;
    * forward mode (:meth:`jvp`: ``torch.func.jvp``, ``torch.autograd.forward_ad``):
      :func:`polar_jvp` in the spectrum of ``U^T A``.

    ``backward='kkt'`` implements the first-order backward only: forward mode and second
    derivatives through it raise.  ``delta = 0`` is not differentiable: derivatives raise.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(H, prox, U, s, V, delta, backward, newton_schulz=None):
        return U.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        H, prox, U, s, V, delta, backward, newton_schulz = inputs
        ctx.delta = delta
        ctx.backward_mode = backward
        # Set when U came from the Newton–Schulz route: its adjoint needs the iteration's scale and
        # count instead of (s, V) (host int and a 0-dim tensor outside the graph).
        ctx.newton_schulz = newton_schulz
        ctx.save_for_backward(H, prox, U, s, V)
        ctx.save_for_forward(H, prox, U, s, V)

    @staticmethod
    def backward(ctx, grad_U):
        H, prox, U, s, V = ctx.saved_tensors
        delta = ctx.delta
        ns = ctx.newton_schulz
        if delta == 0:
            raise ValueError(_DELTA_ZERO)
        if torch.is_grad_enabled() and (H.requires_grad or prox.requires_grad or grad_U.requires_grad):
            # The backward is being differentiated: its factors must depend on (H, prox) too.
            if ctx.backward_mode == "kkt":
                _refuse_kkt("second derivatives")
            U_of_H = _NearestETFFunction.apply(H, prox, U, s, V, delta, ctx.backward_mode, ns)
            grad_A = polar_vjp_differentiable(U_of_H, procrustes_matrix(H, prox, delta), grad_U)
            grad_H = 2.0 * mul_simplex_etf(grad_A)
            grad_P = delta * grad_A
        else:
            with torch.no_grad():
                if ctx.backward_mode == "kkt":
                    from .reference.kkt_gradient import kkt_vjp

                    grad_H, grad_P = kkt_vjp(H, U, prox, delta, grad_U)
                else:
                    if ns is not None:
                        grad_A = polar_vjp_newton_schulz(U, procrustes_matrix(H, prox, delta), grad_U,
                                                         scale=ns.scale, iterations=ns.converged_at)
                    else:
                        if s.numel() == 0:
                            s, V = polar_spectrum(U, procrustes_matrix(H, prox, delta))
                        grad_A = polar_vjp(U, s, V, grad_U)
                    grad_H = 2.0 * mul_simplex_etf(grad_A)
                    grad_P = delta * grad_A
        return (
            grad_H if ctx.needs_input_grad[0] else None,
            grad_P if ctx.needs_input_grad[1] else None,
            None, None, None, None, None, None,
        )

    @staticmethod
    def jvp(ctx, dH, dP, *_):
        H, prox, U, s, V = ctx.saved_tensors
        delta = ctx.delta
        if dH is None and dP is None:
            return torch.zeros_like(U)
        if delta == 0:
            raise ValueError(_DELTA_ZERO)
        if ctx.backward_mode == "kkt":
            _refuse_kkt("forward-mode derivatives")
        dA = torch.zeros_like(U)
        if dH is not None:
            dA = dA + 2.0 * mul_simplex_etf(dH)
        if dP is not None:
            dA = dA + delta * dP
        if s.numel() == 0:
            s, V = polar_spectrum(U, procrustes_matrix(H, prox, delta))
        return polar_jvp(U, s, V, dA)


_DELTA_ZERO = ("delta = 0 has a whole family of minimisers, so U* is not differentiable in H; "
               "use delta > 0 or backward='none'")


def procrustes_matrix(H: Tensor, prox: Tensor, delta: float) -> Tensor:
    """``A = 2 H M + delta prox`` (d, C): Eq. 7 is ``const - tr(U^T A)`` on the manifold (chapter 3)."""
    return 2.0 * mul_simplex_etf(H) + delta * prox


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
    polar_state: Optional[NewtonSchulzState] = None,
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
        Proximal coefficient (paper: 1e-3), a number in ``[0, 1e6]`` (not a bool:
        :data:`guiding_nc.core.checks.PROX_DELTA`).  ``delta = 0`` with an explicit
        ``prox`` solves Eq. 6; it is not differentiable (the minimiser is not
        unique), so it needs ``backward="none"`` when ``H`` requires grad.
    method : {"closed_form", "trust_region"}
        ``closed_form``: the polar factor of ``A = 2 H M + delta prox`` (one thin SVD, one
        eigendecomposition of ``A^T A`` or a Newton–Schulz iteration: ``polar``; the global
        minimiser).  ``trust_region``: pymanopt's Riemannian
        trust-region on ``Stiefel(d, C)`` with the autograd backend, warm-started
        at ``prox`` and capped at ``max_iterations`` (the paper's solver).
    backward : {"closed_form", "kkt", "none"}
        ``closed_form``: the polar-factor adjoint, O(d C^2); forward mode (``torch.func.jvp``,
        ``torch.autograd.forward_ad``) and second derivatives (a ``grad`` of a ``grad``, Hessians,
        ``gradgradcheck``) are exact too (:mod:`guiding_nc.core.polar_derivatives`).  ``kkt``: the
        paper's dense implicit-function formula (Prop. 1 with Eq. 49), memory ~ (dC)^2; small
        problems only, first-order reverse mode only (forward mode and second derivatives raise).
        ``none``: no derivative through the solve (``U`` is a constant, as if detached).
        ``method="trust_region"`` solves in NumPy, which ``torch.func`` transforms cannot enter
        (``torch.autograd`` can).
    polar : {"auto", "svd", "gram", "newton_schulz", "gesvda"}
        How the closed form computes the polar factor of ``A`` (see :func:`polar_factor`):
        the same minimiser either way; ``"auto"`` takes the faster route that stays accurate
        (Newton–Schulz on CUDA, the Gram matrix or the SVD on the CPU: :func:`polar_route`).
        On the Newton–Schulz route the gradient is :func:`polar_vjp_newton_schulz`, matrix
        products only; the route reads one bound back to the host per convergence check.
    return_prox : bool
        Also return the proximal point actually used (useful with ``prox=None``).
    check : bool
        Check that ``H`` and ``prox`` are finite and that ``prox`` is orthonormal.  Each
        check reads a value back to the host; on a GPU inside a training loop, where the
        caller detects non-finite losses itself, ``check=False`` avoids those syncs.
        Shape, dtype and option checks always run (they cost nothing).
    polar_state : NewtonSchulzState, optional
        Memory of the Newton–Schulz route across calls (how many iterations to run before
        its first convergence check); :class:`NearestETF` keeps one.

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
                          max_iterations=max_iterations, polar=polar, return_prox=return_prox, check=check,
                          polar_state=polar_state)
        if return_prox:
            return out[0].to(H.dtype), out[1].to(H.dtype)
        return out.to(H.dtype)
    check_inputs(H, prox, delta, method, backward, check)
    check_polar_method(polar)
    _ITERATIONS("max_iterations", max_iterations)
    Flag()("return_prox", return_prox)
    if polar_state is not None and not isinstance(polar_state, NewtonSchulzState):
        raise TypeError(f"polar_state must be a NewtonSchulzState or None, got {type(polar_state).__name__}")
    d, C = H.shape
    needs_grad = torch.is_grad_enabled() and (H.requires_grad or (prox is not None and prox.requires_grad))

    if prox is None:
        with torch.no_grad():
            E = canonical_point(d, C, dtype=H.dtype, device=H.device)
            if method == "closed_form":
                prox = _canonical_limit(mul_simplex_etf(H.detach()), E)
            else:
                from .reference.trust_region import trust_region_solve

                prox = trust_region_solve(H.detach(), E, 0.0, initial=E, max_iterations=max_iterations)
    if delta == 0 and needs_grad and backward != "none":
        raise ValueError(_DELTA_ZERO)

    with torch.no_grad():
        Hd, Pd = H.detach(), prox.detach()
        ns = None
        if method == "closed_form":
            if delta == 0:
                U = _canonical_limit(mul_simplex_etf(Hd), Pd)
                s = V = None
            else:
                # The Newton–Schulz route leaves (s, V) out: its adjoint does not need them.
                U, s, V, _, ns = polar_solve(procrustes_matrix(Hd, Pd, delta), polar, spectrum=False, state=polar_state)
        else:
            from .reference.trust_region import trust_region_solve

            U = trust_region_solve(Hd, Pd, delta, initial=Pd, max_iterations=max_iterations)
            s = V = None
            if needs_grad and backward == "closed_form":
                # U comes from an iterative solver: (s, V) from the stationarity condition
                s, V = polar_spectrum(U, procrustes_matrix(Hd, Pd, delta))

    if backward != "none":
        # Through the autograd function even when no gradient is recorded: a forward-mode tangent
        # (torch.func.jvp, forward_ad) is invisible to requires_grad, and must not be lost.
        if s is None:
            s = torch.empty(0, dtype=H.dtype, device=H.device)
            V = torch.empty(0, dtype=H.dtype, device=H.device)
        out = _NearestETFFunction.apply(H, prox, U, s, V, float(delta), backward, ns)
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
        Proximal coefficient (paper: 1e-3), a number in ``(0, 1e6]`` (:data:`guiding_nc.core.checks.DELTA`).
    method, backward : str
        As in :func:`nearest_etf`.
    check : bool or None
        Input checks of :func:`nearest_etf`.  ``None`` (default) checks on the CPU and
        skips them on accelerators, where each check is a host sync; the proximal point
        is the layer's own previous solution and is never re-checked.
    polar : str
        Route of the polar factor (:func:`polar_factor`; default ``"auto"``).  On the
        Newton–Schulz route the layer remembers how many iterations the last solves
        needed (:attr:`polar_state`), so a step usually takes one convergence check.

    Half-precision input (autocast) is solved in float32, the proximal point is kept in
    float32, and ``U`` comes back in the input's dtype.

    Derivatives as in :func:`nearest_etf`: reverse mode, second derivatives and
    ``torch.autograd.forward_ad`` go through the layer.  ``torch.func`` transforms refuse a module
    that updates its own state (the proximal point): under them call :func:`nearest_etf` with an
    explicit ``prox``.

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
        polar: str = "auto",
    ):
        super().__init__()
        C = check_num_classes(num_classes)
        Integer(C, why=f"NearestETF needs an int feature dimension dim >= num_classes={C}")("dim", dim)
        _METHOD("method", method)
        _BACKWARD("backward", backward)
        DELTA("delta", delta)
        _ITERATIONS("max_iterations", max_iterations)
        Maybe(Flag(), "None", "check on the CPU only")("check", check)
        self.dim, self.num_classes = dim, C
        self.delta, self.method, self.backward, self.max_iterations = float(delta), method, backward, max_iterations
        check_polar_method(polar)
        self.check, self.polar = check, polar
        self.polar_state = NewtonSchulzState()  # host-side only: not part of the state dict
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
        # Half precision cannot hold a Stiefel point to the checks' tolerance: solve and keep the
        # proximal point in float32 (the cast is differentiable), return the input's dtype.
        work = torch.float32 if H.dtype in (torch.float16, torch.bfloat16) else H.dtype
        Hw = H if H.dtype == work else H.to(work)
        prox = self.prox.to(dtype=work) if self._initialized else None
        check = (H.device.type == "cpu") if self.check is None else self.check
        U = nearest_etf(Hw, prox, self.delta, self.method, self.backward, max_iterations=self.max_iterations,
                        check=check, polar=self.polar, polar_state=self.polar_state)
        # Re-assigning (not copy_) keeps the proximal point in the solve's dtype.
        self.prox = U.detach().clone()
        self.initialized.fill_(True)
        self._initialized = True
        return U if U.dtype == H.dtype else U.to(H.dtype)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_classes={self.num_classes}, delta={self.delta}, "
            f"method={self.method!r}, backward={self.backward!r}, polar={self.polar!r}"
        )
