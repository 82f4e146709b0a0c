"""The polar factor of a (d, C) matrix: the routes that compute it and the adjoint of the map.

For ``A`` (d, C) of full column rank, ``polar(A) = A (A^T A)^{-1/2} = Y V^T`` (thin SVD
``A = Y diag(s) V^T``) is the point of ``St(d, C)`` that maximises ``tr(U^T A)``; the nearest
simplex ETF is the polar factor of ``A = 2 H M + delta P`` (:mod:`guiding_nc.core.nearest`).  Every
route below returns the same factor up to rounding:

* ``"svd"``: one thin SVD, checked (:func:`_polar_svd`); backward stable in any dtype.
* ``"gram"``: the eigendecomposition of ``A^T A``; half the flops of the SVD, accurate to about
  ``eps * kappa(A)^2`` and so used only while that is small (float64).
* ``"gesvda"``: the SVD by cuSOLVER's ``gesvda`` driver (CUDA tensors only), about 5x faster on an
  H200 than torch's default CUDA driver (``gesvdj``), whose float32 factor at ``C = 1000`` is only
  orthonormal to 3e-4.
* ``"newton_schulz"``: the iteration ``X <- X (3 I - X^T X) / 2`` from a scaled ``A`` (only matrix
  products), stopped by a bound on its residual (:func:`newton_schulz_polar`).

:func:`polar_route` says which one ``"auto"`` takes: on the CPU the Gram route for float64 with
``C >= 32`` and the SVD otherwise (as measured by ``python -m guiding_nc.bench etf``); on CUDA
Newton–Schulz, where the SVD is slow and, in float32, inaccurate; the SVD on other devices.

The adjoint of ``A -> polar(A)`` has a closed form in the eigenbasis of ``P = U^T A`` (:func:`polar_vjp`);
the Newton–Schulz route evaluates the same formula without an eigendecomposition
(:func:`polar_vjp_newton_schulz`). Forward mode and second derivatives: :mod:`guiding_nc.core.polar_derivatives`.

Host reads (a GPU waits for the host at each): the Newton–Schulz route reads its residual bounds
once per convergence check, so once per call when it is told how many iterations to expect (a
layer's :class:`NewtonSchulzState`), and its adjoint reads nothing; the SVD routes read at least
twice (the solver's own convergence flag and the orthonormality check of :func:`_polar_svd`), the
Gram route once (its conditioning test).  Book: chapter 3 ("Speed") and chapter 5.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .errors import NonFiniteInputError
from .etf import orthonormality_error, orthonormality_tolerance, sym

__all__ = [
    "POLAR_METHODS",
    "check_polar_method",
    "polar_route",
    "polar_factor",
    "polar_solve",
    "PolarSolution",
    "polar_spectrum",
    "polar_vjp",
    "polar_vjp_newton_schulz",
    "newton_schulz_polar",
    "NewtonSchulzRun",
    "NewtonSchulzState",
]

POLAR_METHODS = ("auto", "svd", "gram", "newton_schulz", "gesvda")

# The Gram route loses accuracy like eps * kappa(A)^2; it is used only while that
# bound stays below this (about 1e-11 of the polar factor's entries).
_GRAM_ERROR_BOUND = 1e-11
_GRAM_MIN_CLASSES = 32


# ------------------------------------------------------------------------ exact routes
def _polar_svd(A: Tensor, driver: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Polar factor by the thin SVD, verified: the factor returned is orthonormal or an error is raised.

    At collapse ``A = 2 H M + delta P`` has ``C - 1`` (nearly) equal singular values, and LAPACK's
    float32 divide-and-conquer SVD is unreliable on such a matrix: a UFM-1000 run met it both
    failing to converge (``LinAlgError``) and, a few dozen steps later, returning singular vectors
    so inaccurate that ``max |U^T U - I| = 0.26`` (and later NaN ones). So the factor is checked
    (one ``C x d x C`` product, about a tenth of the SVD's cost; on an accelerator a host sync)
    against the tolerance the layer's own proximal-point check uses, and on failure recomputed in
    float64, then from the float64 eigendecomposition of ``A^T A`` (which clustered eigenvalues do
    not trouble, and which the small ``kappa(A)`` at collapse makes accurate).
    Results are rounded back to ``A``'s dtype.  ``driver`` names a cuSOLVER SVD driver (CUDA only).
    """
    tol = orthonormality_tolerance(A.dtype)
    tries = [A] if A.dtype == torch.float64 else [A, A.to(torch.float64)]
    problems = []
    for X in tries:
        try:
            if driver is None:
                Y, s, Vh = torch.linalg.svd(X, full_matrices=False)
            else:
                Y, s, Vh = torch.linalg.svd(X, full_matrices=False, driver=driver)
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


# --------------------------------------------------------------------- Newton–Schulz
#: Truncation tolerance of the Newton–Schulz route: it stops at an iterate ``X`` with
#: ``||X - polar(A)||_2 <= tol`` in exact arithmetic.  Rounding adds its own floor (measured on the
#: CPU: max |X^T X - I| about 3e-7 in float32, 1e-15 in float64, C up to 1000).
NS_TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-14}
#: Iterations before the first convergence check when nothing better is known (near collapse the
#: iteration needs 8 at C = 1000, 12 at C = 100, 18 at C = 10: kappa(A) is 3, 21, 223).
NS_FIRST_CHECK = 8
#: Iterations after which the route gives up and computes the factor exactly.
NS_MAX_ITERATIONS = 50

_NS_FALLBACK_WARNED = False  # the fallback is announced once per process


class NewtonSchulzRun(NamedTuple):
    """What one Newton–Schulz solve leaves for its adjoint and its caller.

    ``scale`` (0-dim tensor on ``A``'s device): the ``c`` with ``X_0 = A / c``; ``converged_at``: the
    first iterate certified within the tolerance (``None`` if none was); ``iterations``: iterations
    run; ``host_reads``: device-to-host reads (one per convergence check).
    """

    scale: Tensor
    converged_at: Optional[int]
    iterations: int
    host_reads: int


@dataclass
class NewtonSchulzState:
    """Host-side memory of the Newton–Schulz route across calls (a layer keeps one; no device values).

    Each training step's matrix is close to the last one, so it needs about as many iterations:
    ``first_check`` (iterations before the first convergence check) is the larger of the last two
    solves' counts, and a step usually costs one check, i.e. one host read.  The counters say what
    the route did: ``calls``, ``fallbacks`` (solves handed to the exact route), ``host_reads``
    (all checks) and ``last_iterations``.
    """

    first_check: int = NS_FIRST_CHECK
    calls: int = 0
    fallbacks: int = 0
    host_reads: int = 0
    last_iterations: Optional[int] = None
    _previous: Optional[int] = None

    def record(self, run: NewtonSchulzRun) -> None:
        self.calls += 1
        self.host_reads += run.host_reads
        self.last_iterations = run.iterations
        if run.converged_at is None:
            self.fallbacks += 1
            return
        self.first_check = max(run.converged_at, self._previous or 0)
        self._previous = run.converged_at

    def metrics(self) -> Dict[str, float]:
        """Numbers for a per-epoch row (empty until the route has run)."""
        if not self.calls:
            return {}
        return {"polar_ns_iterations": float(self.last_iterations), "polar_ns_fallbacks": float(self.fallbacks),
                "polar_ns_host_reads_per_call": self.host_reads / self.calls}


@contextmanager
def _full_precision_matmul():
    # TF32 (torch.set_float32_matmul_precision("high")) rounds products to ~1e-3: the iteration
    # would stall far above its tolerance.  A host-side switch, restored on exit.
    before = torch.get_float32_matmul_precision()
    if before == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _ns_threshold(tol: float) -> float:
    """Largest ``rho`` with ``0.75 rho^2 + 0.25 rho^3 <= tol``: a residual bound after which one more
    iteration is certified within ``tol``."""
    rho = math.sqrt(tol / 0.75)
    while 0.75 * rho ** 2 + 0.25 * rho ** 3 > tol:
        rho *= 0.999
    return rho


def _ns_more_iterations(rho: float, tau: float) -> Optional[int]:
    """Iterations after an iterate with ``||E||_2 <= rho`` until one with ``||E||_2 <= tau`` (exact
    arithmetic), or ``None`` when ``rho >= 1`` bounds nothing.

    ``||E||_2 <= rho`` puts every singular value of the iterate in ``[sqrt(1 - rho), 1]``, and the
    iteration maps each by ``f(x) = x (3 - x^2) / 2``, increasing on ``[0, 1]``: the smallest
    bounds them all.
    """
    if not rho < 1.0:
        return None
    x, m = math.sqrt(1.0 - rho), 0
    while 1.0 - x * x > tau:
        x, m = 0.5 * x * (3.0 - x * x), m + 1
        if m > 1000:
            return None
    return m


def _residual_bound(E: Tensor) -> Tensor:
    # ||E||_2 <= min(max row sum, Frobenius) for symmetric E: the first is tight for the near-diagonal
    # E of a collapsed problem, the second for a spread spectrum.
    return torch.minimum(torch.linalg.matrix_norm(E, ord=math.inf), torch.linalg.vector_norm(E))


def newton_schulz_polar(
    A: Tensor,
    *,
    first_check: Optional[int] = None,
    max_iterations: int = NS_MAX_ITERATIONS,
    tol: Optional[float] = None,
) -> Tuple[Optional[Tensor], NewtonSchulzRun]:
    """Polar factor of ``A`` by the Newton–Schulz iteration, stopped by a bound on its residual.

    The iteration ``X_{k+1} = X_k + X_k E_k / 2`` with ``E_k = I - X_k^T X_k`` (i.e.
    ``X_k (3 I - X_k^T X_k) / 2``) keeps ``A``'s singular vectors and maps each singular value by
    ``f(x) = x (3 - x^2) / 2``, which drives every ``x`` in ``(0, sqrt 3)`` to 1, quadratically
    near it.  It starts from ``X_0 = A / c`` with ``c^2 = ||A^T A||_inf >= ||A||_2^2`` (every ``x <= 1``).

    Stopping rule.  ``||X_k - polar(A)||_2 <= ||E_k||_2`` (``|x - 1| <= |1 - x^2|``) and
    ``E_{k+1} = 3/4 E_k^2 + 1/4 E_k^3``, so once a computable bound ``rho_k >= ||E_k||_2``
    (``min(||E_k||_inf, ||E_k||_F)``, from the product every iteration forms anyway) satisfies
    ``3/4 rho^2 + 1/4 rho^3 <= tol``, every later iterate is within ``tol`` of the polar factor.
    The bounds are kept on the device and read back in one transfer per check (a host sync): the
    first after ``first_check`` iterations, the next after exactly as many more as ``f`` needs to
    carry the smallest singular value the last bound allows to the tolerance (plus one), or
    ``first_check`` more when the bound is ``>= 1``.  With a good ``first_check`` (a layer passes its
    last count, :class:`NewtonSchulzState`) one check, so one host read, per call.

    What carries over between training steps is that count, not the previous factor: the iterates
    stay on ``A``'s singular vectors only from ``A`` times a function of ``A^T A``, and an orthonormal
    start is already a fixed point of the iteration, so starting from the previous ``U*`` would
    return it unchanged.  The count is what a warm start can save: near collapse ``kappa(A)`` and so
    the count change little from step to step.

    Parameters
    ----------
    A : Tensor, shape (d, C), float32 or float64, ``d >= C``
    first_check : int, optional
        Iterations before the first check (default :data:`NS_FIRST_CHECK`).
    max_iterations : int
        Beyond this (or as soon as the bound shows it cannot converge within it) the route gives up.
    tol : float, optional
        Truncation tolerance (default :data:`NS_TOLERANCE` of ``A``'s dtype).

    Returns
    -------
    U : Tensor, shape (d, C), or ``None`` if it did not converge within ``max_iterations``
    run : NewtonSchulzRun
        The scale and iteration counts (its adjoint, :func:`polar_vjp_newton_schulz`, needs them).

    Raises ``NonFiniteInputError`` if ``A`` holds NaN or Inf (seen in the bounds: no extra sync).
    """
    if A.ndim != 2 or A.shape[0] < A.shape[1]:
        raise ValueError(f"the polar factor needs a (d, C) matrix with d >= C, got shape {tuple(A.shape)}")
    if A.dtype not in NS_TOLERANCE:
        raise TypeError(f"the Newton–Schulz route runs in float32 or float64, got {A.dtype}")
    tau = _ns_threshold(NS_TOLERANCE[A.dtype] if tol is None else float(tol))
    first = max(1, min(int(first_check or NS_FIRST_CHECK), max_iterations))
    C = A.shape[1]
    eye = torch.eye(C, dtype=A.dtype, device=A.device)
    with _full_precision_matmul():
        gram = A.transpose(-1, -2) @ A
        c2 = torch.linalg.matrix_norm(gram, ord=math.inf).clamp_min(torch.finfo(A.dtype).tiny)
        scale = c2.sqrt()
        X = A / scale
        E: Optional[Tensor] = eye - gram / c2  # E_0 from the product already formed
        bounds: List[Tensor] = []
        done = reads = 0
        todo = first
        while True:
            for _ in range(todo):
                if E is None:
                    E = torch.addmm(eye, X.transpose(-1, -2), X, alpha=-1.0)
                bounds.append(_residual_bound(E))
                X = torch.addmm(X, X, E, alpha=0.5)
                E = None
                done += 1
            values = torch.stack(bounds).tolist()  # the one host read of this check
            reads += 1
            if not all(math.isfinite(v) for v in values):
                raise NonFiniteInputError("the matrix whose polar factor is sought holds non-finite entries (NaN or Inf)")
            hit = next((j for j, v in enumerate(values) if v <= tau), None)
            if hit is not None:
                return X, NewtonSchulzRun(scale, hit + 1, done, reads)
            more = _ns_more_iterations(values[-1], tau)
            left = max_iterations - done
            if left <= 0 or (more is not None and more > left):
                return None, NewtonSchulzRun(scale, None, done, reads)
            todo = min(left, first if more is None else more + 1)


def _warn_fallback_once(A: Tensor, run: NewtonSchulzRun, route: str, max_iterations: int) -> None:
    global _NS_FALLBACK_WARNED
    if _NS_FALLBACK_WARNED:
        return
    _NS_FALLBACK_WARNED = True
    warnings.warn(
        f"the Newton–Schulz polar iteration cannot reach its tolerance within {max_iterations} iterations on a "
        f"{tuple(A.shape)} {A.dtype} matrix (stopped after {run.iterations}; A is ill-conditioned); this factor and "
        f"any later such one are computed by the {route!r} route (warned once per process)",
        RuntimeWarning,
        stacklevel=4,
    )


# ------------------------------------------------------------------------ the routes
def check_polar_method(method: str) -> None:
    if method not in POLAR_METHODS:
        raise ValueError(f"unknown polar method {method!r}; choose one of {POLAR_METHODS}")


def polar_route(A: Tensor, method: str = "auto") -> str:
    """Which algorithm :func:`polar_factor` tries first for ``A`` (before its conditioning is known).

    ``"auto"`` on the CPU tries the Gram route for float64 with ``C >= 32`` columns, where it is
    measured to be about 2x faster than the SVD (``python -m guiding_nc.bench etf``), and uses the
    SVD otherwise: in float32 ``eps * kappa^2`` exceeds the error bound for every ``kappa > 1``;
    below 32 columns the SVD costs well under a millisecond and the nearest-ETF matrix is often too
    ill-conditioned for the Gram route anyway.  On CUDA it takes Newton–Schulz: only matrix products
    and one host read, where torch's default CUDA SVD (gesvdj) took 55 ms and left
    ``max |U^T U - I| = 3e-4`` on a 1024 x 1000 float32 matrix (H200).  Other devices: the SVD.
    """
    check_polar_method(method)
    if method == "auto":
        if A.device.type == "cuda":
            return "newton_schulz"
        use_gram = A.dtype == torch.float64 and A.device.type == "cpu" and A.shape[-1] >= _GRAM_MIN_CLASSES
        return "gram" if use_gram else "svd"
    return method


def _exact_route(A: Tensor) -> str:
    """Where the Newton–Schulz route falls back: gesvda on CUDA, the CPU's own choice elsewhere."""
    return "gesvda" if A.device.type == "cuda" else polar_route(A, "auto")


def polar_spectrum(U: Tensor, A: Tensor) -> Tuple[Tensor, Tensor]:
    """``(s, V)`` with ``U^T A = V diag(s) V^T`` (s descending) for a polar factor ``U`` of ``A``.

    From the eigendecomposition of ``P = sym(U^T A)`` in float64 (clustered eigenvalues, as at
    collapse, do not trouble it), rounded back to ``U``'s dtype.  Shapes: ``U, A`` (d, C); ``s``
    (C,); ``V`` (C, C).
    """
    P = sym(U.transpose(-1, -2).to(torch.float64) @ A.to(torch.float64))
    lam, V = torch.linalg.eigh(P)
    return lam.flip(-1).to(U.dtype), V.flip(-1).to(U.dtype)


class PolarSolution(NamedTuple):
    """What :func:`polar_solve` returns."""

    U: Tensor
    s: Optional[Tensor]  # None: not computed (the Newton–Schulz route, unless asked for)
    V: Optional[Tensor]
    route: str
    newton_schulz: Optional[NewtonSchulzRun]  # set when the Newton–Schulz route produced U


def polar_solve(A: Tensor, method: str = "auto", *, spectrum: bool = True,
                state: Optional[NewtonSchulzState] = None) -> PolarSolution:
    """:func:`polar_factor` with everything a caller may need: the route actually taken and, from the
    Newton–Schulz route, its :class:`NewtonSchulzRun` (for :func:`polar_vjp_newton_schulz`).

    ``spectrum=False`` leaves ``s, V`` as ``None`` on the Newton–Schulz route (its adjoint does not
    need them, and their eigendecomposition would cost more than the factor); ``state`` is a layer's
    :class:`NewtonSchulzState`, read and updated.  Shapes as in :func:`polar_factor`.
    """
    if A.dtype in (torch.float16, torch.bfloat16):
        # Half precision cannot hold the factor: compute in float32, hand back A's dtype.
        out = polar_solve(A.float(), method, spectrum=spectrum, state=state)
        cast = (lambda t: None if t is None else t.to(A.dtype))
        return PolarSolution(out.U.to(A.dtype), cast(out.s), cast(out.V), out.route, out.newton_schulz)
    route = polar_route(A, method)
    if route == "newton_schulz":
        first = None if state is None else state.first_check
        U, run = newton_schulz_polar(A, first_check=first, max_iterations=NS_MAX_ITERATIONS)
        if state is not None:
            state.record(run)
        if U is not None:
            s, V = polar_spectrum(U, A) if spectrum else (None, None)
            return PolarSolution(U, s, V, route, run)
        route = _exact_route(A)
        _warn_fallback_once(A, run, route, NS_MAX_ITERATIONS)
    if route == "gesvda":
        if A.device.type != "cuda":
            raise ValueError(f"the 'gesvda' route is a cuSOLVER SVD driver and needs a CUDA tensor; A is on {A.device}")
        return PolarSolution(*_polar_svd(A, driver="gesvda"), "gesvda", None)
    if route == "gram":
        out = _polar_gram(A)
        if out is not None:
            return PolarSolution(*out, "gram", None)
        if method == "gram":
            raise ValueError(
                "A is too ill-conditioned for the Gram route of the polar factor "
                f"(eps * kappa(A)^2 > {_GRAM_ERROR_BOUND:g}); use method='svd' or 'auto'"
            )
    return PolarSolution(*_polar_svd(A), "svd", None)


def polar_factor(A: Tensor, method: str = "auto", *, return_route: bool = False):
    """Polar factor of a (d, C) matrix, with the spectrum the adjoint needs.

    Returns ``(U, s, V)`` with ``U = Y V^T`` (the Stiefel point maximising
    ``tr(U^T A)``), ``s`` the singular values (C,), descending, and ``V`` (C, C) the
    right singular vectors, so that ``U^T A = V diag(s) V^T``.

    The routes give the same factor:

    * ``"svd"``: one thin SVD ``A = Y diag(s) V^T``; backward stable in any dtype.
    * ``"gram"``: the eigendecomposition ``A^T A = V diag(s^2) V^T`` and
      ``U = A V diag(1/s) V^T``.  About half the flops of the SVD (one ``d x C x C``
      product to form ``A^T A``, one to apply the result, and a ``C x C``
      eigensolver), but squaring ``A`` squares its condition number: the entries of
      ``U`` are accurate to about ``eps * kappa(A)^2``.  It is used only while that is
      below 1e-11 (checked from the computed eigenvalues); otherwise the SVD is used
      (``"auto"``) or a ``ValueError`` is raised (``"gram"``).
    * ``"gesvda"``: the SVD route with cuSOLVER's ``gesvda`` driver (CUDA tensors only).
    * ``"newton_schulz"``: :func:`newton_schulz_polar`, then ``(s, V)`` from the float64
      eigendecomposition of ``U^T A`` (:func:`polar_spectrum`; :func:`guiding_nc.nearest_etf`
      skips it: its adjoint needs no spectrum).  If the iteration cannot converge within
      :data:`NS_MAX_ITERATIONS` the factor comes from the exact route (gesvda on CUDA, as
      ``"auto"`` on the CPU) with a warning, once per process.

    ``"auto"`` (default) picks the route by :func:`polar_route`.  In the nearest-ETF
    problem ``A = 2 H M + delta P``, ``||M||_2 = 1/sqrt(C-1)`` and ``A 1 = delta P 1``, so
    ``kappa(A) ~ 2 sigma_max(H) / (sqrt(C-1) delta)``; with collapsed unit-Frobenius means
    (``sigma(H) = 1/sqrt(C-1)``) that is ``2 / ((C-1) delta)``: about 2 at ``C = 1000`` and
    20 at ``C = 100`` for ``delta = 1e-3``, where the Gram route is exact to ~1e-14, but
    over 200 at ``C = 10``, where the SVD takes over.  Half-precision input is solved in
    float32 and returned in its own dtype.

    Parameters
    ----------
    A : Tensor, shape (d, C)
    method : {"auto", "svd", "gram", "newton_schulz", "gesvda"}
    return_route : bool
        Also return the route actually taken (after any fallback).

    Book: chapter 3, "Speed".
    """
    out = polar_solve(A, method)
    return (out.U, out.s, out.V, out.route) if return_route else (out.U, out.s, out.V)


# ---------------------------------------------------------------------------- adjoint
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


def polar_vjp_newton_schulz(U: Tensor, A: Tensor, grad_U: Tensor, *, scale: Tensor, iterations: int) -> Tensor:
    """The adjoint of :func:`polar_vjp` without an eigendecomposition: matrix products only, no host read.

    With ``P = U^T A`` (symmetric positive definite) and ``G = grad_U`` the adjoint is

        grad_A = (I - U U^T) G P^{-1} + U Z,    P Z + Z P = K = U^T G - G^T U,

    (:func:`polar_vjp` evaluates it in ``P``'s eigenbasis).  Both unknowns solve Lyapunov
    equations, ``L(2 Z) = 2 K`` and ``L(P^{-1}) = 2 I`` with ``L(X) = P X + X P``, and the sign
    function of the block matrix ``[[P, B], [0, -P]]`` is ``[[I, 2 L^{-1}(B)], [0, -I]]``.  Its
    Newton–Schulz iteration keeps the block structure (``S`` on the diagonal, ``Y`` above)::

        Y <- (3 Y - S^2 Y - Y S^2 + S Y S) / 2,    S <- S (3 I - S^2) / 2,

    run from ``S_0 = P / c`` on ``Y_0 = K / c`` and ``Y_0 = I / c`` together (a batch of two):
    the first tends to ``2 Z``, the second to ``P^{-1}``.  ``P``'s eigenvalues are ``A``'s
    singular values and the iteration maps them by the very ``f`` the forward applied, from the
    same ``scale`` ``c``: after the forward's certified ``iterations``, ``S`` is within the
    forward's tolerance of ``I`` and ``Y`` of its limit (a relative error of the same size).  The
    iteration corrects its own rounding, and the first ``Y`` is exactly zero when ``G`` is.  Ten
    ``C x C`` products per iteration (the batch of two counted twice), all on the device.

    Parameters
    ----------
    U, A, grad_U : Tensor, shape (d, C)
    scale : Tensor, 0-dim (the forward's :attr:`NewtonSchulzRun.scale`)
    iterations : int (the forward's :attr:`NewtonSchulzRun.converged_at`)

    Returns
    -------
    grad_A : Tensor, shape (d, C)
    """
    C = U.shape[-1]
    eye = torch.eye(C, dtype=U.dtype, device=U.device)
    with _full_precision_matmul():
        UtG = U.transpose(-1, -2) @ grad_U
        S = sym(U.transpose(-1, -2) @ A) / scale
        Y = torch.stack([UtG - UtG.transpose(-1, -2), eye]) / scale  # (2, C, C): skew K, symmetric I
        for _ in range(int(iterations)):
            # Y S^2 equals +-(S^2 Y)^T in exact arithmetic, but forming it keeps the iteration's
            # self-correction (ten times more accurate in float32).
            S2 = S @ S
            SY = S @ Y
            Y = 1.5 * Y - 0.5 * (S @ SY + Y @ S2 - SY @ S)
            S = torch.addmm(S, S2, S, beta=1.5, alpha=-0.5)  # S (3 I - S^2) / 2
        Z = 0.5 * Y[0]
        P_inv = sym(Y[1])
        # (I - U U^T) G P^{-1} + U Z, without a d x d matrix.
        return grad_U @ P_inv + U @ (Z - UtG @ P_inv)
