"""Second-order tools for any scalar function of one tensor, and the landscape constants built
on them (book chapter 13, where they measure the UFM under four classifier parametrisations;
the parametrisations themselves are in :mod:`guiding_nc.research.reduction.objective`).

* :func:`hvp` — Hessian–vector product, forward-over-reverse (``jvp`` of ``grad``);
* :func:`make_hvp` — the operator ``v -> ∇²f(x) v`` at a fixed ``x`` (torch.func forward-over-reverse,
  or a cached torch.autograd double backward, faster for many products);
* :func:`hessian_matrix` — the exact dense Hessian (``torch.func.hessian``), small sizes only;
* :func:`lanczos_extremal_eigenvalues` — extremal eigenvalues of a symmetric operator known
  only through matrix–vector products (float64, optional full re-orthogonalisation);
* :func:`hessian_extremal_eigenvalues` — the two combined;
* :func:`pl_constant_estimate` — ``mu(x) = ||∇f(x)||² / (2 (f(x) - f*))``;
* :func:`gradient_statistics` — ``f`` and ``||∇f||²`` along a trajectory;
* :func:`smoothness_estimate` / :func:`secant_smoothness` — ``L`` from the Hessian spectrum or
  from gradient secants;
* :func:`condition_number` — ``L / mu``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..core.forward_mode import jvp, load as load_forward_mode


__all__ = [
    "ScalarFn",
    "check_point",
    "scalar_output",
    "as_float64_vector",
    "hvp",
    "make_hvp",
    "hessian_matrix",
    "LanczosResult",
    "lanczos_extremal_eigenvalues",
    "hessian_extremal_eigenvalues",
    "pl_constant_estimate",
    "gradient_statistics",
    "SmoothnessEstimate",
    "smoothness_estimate",
    "secant_smoothness",
    "condition_number",
]

ScalarFn = Callable[[Tensor], Tensor]


# =============================================================================== HVPs
def check_point(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def scalar_output(f: ScalarFn) -> ScalarFn:
    """Wrap ``f`` so a non-scalar output raises a clear error."""

    def wrapped(x):
        out = f(x)
        if not isinstance(out, Tensor) or out.numel() != 1:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"f must return a scalar tensor (one element), got {shape}")
        return out.reshape(())

    return wrapped


def hvp(f: ScalarFn, x: Tensor, v: Tensor) -> Tensor:
    """Hessian–vector product ``∇²f(x) v`` by forward-over-reverse differentiation.

    Computes ``jvp(grad(f), (x,), (v,))`` with :mod:`torch.func`: one reverse pass inside one
    forward-mode pass, ``O(cost of f)`` time, no Hessian is formed.

    Parameters
    ----------
    f : callable
        ``f(x) -> Tensor`` with a single element; must be composed of ``torch`` operations
        that ``torch.func`` can transform (custom ``autograd.Function``\\ s need
        ``setup_context`` and a ``jvp``; :func:`guiding_nc.core.nearest.nearest_etf` has both, with
        its closed-form ``method``).
    x : Tensor, any shape ``S``, floating point
    v : Tensor, shape ``S`` (same dtype and device as ``x``)

    Returns
    -------
    Tensor, shape ``S``: ``∇²f(x) v``.
    """
    check_point(x)
    check_point(v, "v")
    if v.shape != x.shape:
        raise ValueError(f"v has shape {tuple(v.shape)} but x has shape {tuple(x.shape)}; they must match")
    if v.dtype != x.dtype or v.device != x.device:
        raise ValueError(f"v ({v.dtype}, {v.device}) must have the dtype and device of x ({x.dtype}, {x.device})")
    g = torch.func.grad(scalar_output(f))
    return jvp(g, (x,), (v,))[1]


def make_hvp(f: ScalarFn, x: Tensor, *, mode: str = "forward_over_reverse") -> Callable[[Tensor], Tensor]:
    """The operator ``v -> ∇²f(x) v`` at a fixed point ``x``.

    ``v`` may be given flat (``x.numel()``,) or in the shape of ``x``; the result has the
    shape of ``v``.  ``x`` is detached and cloned, so later in-place changes do not leak in.

    Modes
    -----
    ``"forward_over_reverse"`` (default)
        :func:`hvp` on every call (``torch.func``; recomputes ``f`` and its gradient each time).
    ``"double_backward"``
        Reverse-over-reverse with ``torch.autograd``: the gradient graph ``∇f(x)`` is built
        once (``create_graph=True``) and every call is one extra backward pass through it —
        several times faster for the many products of :func:`lanczos_extremal_eigenvalues`.
        ``f`` must be twice differentiable by ``torch.autograd`` (all UFM objectives with the
        default Newton–Schulz implicit backend are, and so is the ``nearest_etf`` backend).
    """
    check_point(x)
    if mode not in ("forward_over_reverse", "double_backward"):
        raise ValueError(f"mode must be 'forward_over_reverse' or 'double_backward', got {mode!r}")
    x0 = x.detach().clone()

    def _check_v(v: Tensor) -> Tensor:
        if not isinstance(v, Tensor) or v.numel() != x0.numel():
            raise ValueError(f"v must be a tensor with {x0.numel()} elements (the size of x)")
        return v.detach().reshape(x0.shape).to(dtype=x0.dtype, device=x0.device)

    if mode == "forward_over_reverse":
        def op(v: Tensor) -> Tensor:
            return hvp(f, x0, _check_v(v)).reshape(v.shape)

        return op

    xg = x0.clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(scalar_output(f)(xg), xg, create_graph=True)
    if not g.requires_grad:  # f is at most linear in x: the Hessian is zero
        return lambda v: torch.zeros_like(_check_v(v)).reshape(v.shape)

    def op_db(v: Tensor) -> Tensor:
        (hv,) = torch.autograd.grad(g, xg, _check_v(v), retain_graph=True, allow_unused=True)
        if hv is None:
            hv = torch.zeros_like(x0)
        return hv.detach().reshape(v.shape)

    return op_db


def hessian_matrix(f: ScalarFn, x: Tensor, *, max_numel: int = 4096) -> Tensor:
    """Exact dense Hessian of a scalar ``f`` at ``x`` via ``torch.func.hessian``.

    Parameters
    ----------
    x : Tensor, any shape with ``n = x.numel() <= max_numel`` elements.

    Returns
    -------
    Tensor, shape ``(n, n)``: ``H[i, j] = ∂²f / ∂x_i ∂x_j`` in the flattening order of ``x``
    (row-major).  Forward-over-reverse, so it costs ``n`` Hessian–vector products and
    ``n²`` memory; ``max_numel`` guards against accidental huge sizes.
    """
    check_point(x)
    n = x.numel()
    if n > max_numel:
        raise ValueError(
            f"hessian_matrix forms an (n, n) matrix; n = {n} exceeds max_numel = {max_numel} "
            "(raise max_numel or use hvp / lanczos_extremal_eigenvalues)"
        )
    load_forward_mode()  # torch.func.hessian is forward-over-reverse
    Hm = torch.func.hessian(scalar_output(f))(x.detach())
    return Hm.reshape(n, n)


# ============================================================================= Lanczos
@dataclass
class LanczosResult:
    """Output of :func:`lanczos_extremal_eigenvalues`.

    Attributes
    ----------
    max, min : float
        Largest and smallest Ritz values (estimates of ``lambda_max``, ``lambda_min``).
    ritz_values : Tensor, shape (m,), float64, ascending
        Eigenvalues of the tridiagonal matrix ``T_m`` (``m <= k_iter`` iterations run).
    residuals : Tensor, shape (m,), float64
        ``|beta_m s_{m,i}|``: ``||A y_i - theta_i y_i||`` for each Ritz pair ``(theta_i, y_i)``
        (exact in exact arithmetic; zero after an invariant subspace was found).
    alphas : Tensor, shape (m,), float64 — diagonal of ``T_m``.
    betas : Tensor, shape (m - 1,), float64 — off-diagonal of ``T_m``.
    iterations : int — ``m``.
    invariant : bool — the Krylov space became invariant (``beta`` hit zero), so the Ritz
        values are exact eigenvalues of the operator.
    """

    max: float
    min: float
    ritz_values: Tensor
    residuals: Tensor
    alphas: Tensor
    betas: Tensor
    iterations: int
    invariant: bool


def _operator_size(dim_or_example: Union[int, Tensor]):
    if isinstance(dim_or_example, Tensor):
        if not dim_or_example.is_floating_point():
            raise TypeError(f"the example tensor must be floating point, got {dim_or_example.dtype}")
        return dim_or_example.numel(), tuple(dim_or_example.shape), dim_or_example.dtype, dim_or_example.device
    if isinstance(dim_or_example, bool) or not isinstance(dim_or_example, int):
        raise TypeError(f"dim must be an int or an example tensor, got {type(dim_or_example).__name__}")
    if dim_or_example < 1:
        raise ValueError(f"dim must be >= 1, got {dim_or_example}")
    return dim_or_example, (dim_or_example,), torch.float64, torch.device("cpu")


def lanczos_extremal_eigenvalues(
    hvp_fn: Callable[[Tensor], Tensor],
    dim: Union[int, Tensor],
    k_iter: int,
    *,
    generator: Optional[torch.Generator] = None,
    reorthogonalize: bool = True,
    v0: Optional[Tensor] = None,
) -> LanczosResult:
    """Extremal eigenvalues of a symmetric operator given only its matrix–vector products.

    Runs ``m = min(k_iter, n)`` Lanczos steps from a random unit vector and returns the
    extreme eigenvalues of the tridiagonal ``T_m = Q_mᵀ A Q_m``.  All Lanczos arithmetic is
    float64; ``hvp_fn`` is called with vectors in the example's shape, dtype and device and
    its output is promoted to float64.  With ``reorthogonalize=True`` every new vector is
    orthogonalised (twice, classical Gram–Schmidt) against all previous ones, which removes
    ghost eigenvalues and makes ``m = n`` steps exact up to rounding.  Without it the three-
    term recurrence is used as is (``O(n)`` memory for the basis is still kept for simplicity).

    Parameters
    ----------
    hvp_fn : callable
        ``v -> A v`` for a symmetric ``A`` (e.g. :func:`make_hvp`); ``v`` has the shape of
        the example tensor (or ``(dim,)``).
    dim : int or Tensor
        The operator size ``n``, or an example tensor whose shape/dtype/device the vectors
        passed to ``hvp_fn`` take (``n = example.numel()``).
    k_iter : int
        Maximum number of Lanczos steps (``>= 1``).
    generator : torch.Generator, optional
        CPU generator for the random start vector (``None``: the global RNG).
    reorthogonalize : bool
        Full re-orthogonalisation (default; recommended).
    v0 : Tensor, optional
        Start vector (any shape with ``n`` elements) instead of a random one.

    Returns
    -------
    :class:`LanczosResult`
    """
    n, shape, dtype, device = _operator_size(dim)
    if isinstance(k_iter, bool) or not isinstance(k_iter, int) or k_iter < 1:
        raise ValueError(f"k_iter must be an int >= 1, got {k_iter!r}")
    m_max = min(k_iter, n)
    if v0 is None:
        q = torch.randn(n, generator=generator, dtype=torch.float64)
    else:
        if v0.numel() != n:
            raise ValueError(f"v0 has {v0.numel()} elements but the operator has size {n}")
        q = v0.detach().reshape(-1).to(device="cpu", dtype=torch.float64).clone()
    qn = torch.linalg.vector_norm(q)
    if not bool(torch.isfinite(qn)) or float(qn) == 0.0:
        raise ValueError("the Lanczos start vector must be finite and non-zero")
    q = (q / qn).to(device)

    def matvec(u: Tensor) -> Tensor:
        out = hvp_fn(u.to(dtype).reshape(shape))
        if not isinstance(out, Tensor) or out.numel() != n:
            raise ValueError(f"hvp_fn must return a tensor with {n} elements")
        out = out.detach().reshape(-1).to(device=device, dtype=torch.float64)
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError("hvp_fn returned non-finite values")
        return out

    Q = torch.zeros(m_max, n, dtype=torch.float64, device=device)
    alphas, betas = [], []
    q_prev = torch.zeros_like(q)
    beta_prev = 0.0
    invariant = False
    scale = 0.0
    for j in range(m_max):
        Q[j] = q
        w = matvec(q)
        alpha = float(torch.dot(w, q))
        alphas.append(alpha)
        w = w - alpha * q - beta_prev * q_prev
        if reorthogonalize:
            for _ in range(2):
                Qj = Q[: j + 1]
                w = w - Qj.T @ (Qj @ w)
        beta = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(alpha), beta)
        if j == m_max - 1:
            final_beta = beta
            break
        # Breakdown: w is (numerically) in the span of the basis.  The threshold uses the
        # operator's own precision, since a float32 HVP leaves float32-sized noise in w.
        if beta <= n * torch.finfo(dtype).eps * max(scale, 1e-300):
            invariant = True
            final_beta = 0.0
            break
        betas.append(beta)
        q_prev, q, beta_prev = q, w / beta, beta
    if len(alphas) == n:
        invariant = True
    m = len(alphas)
    a = torch.tensor(alphas, dtype=torch.float64)
    b = torch.tensor(betas, dtype=torch.float64)
    T = torch.diag(a)
    if m > 1:
        T = T + torch.diag(b, 1) + torch.diag(b, -1)
    theta, S = torch.linalg.eigh(T)
    residuals = (final_beta * S[-1]).abs() if not invariant else torch.zeros(m, dtype=torch.float64)
    return LanczosResult(
        max=float(theta[-1]), min=float(theta[0]), ritz_values=theta, residuals=residuals,
        alphas=a, betas=b, iterations=m, invariant=invariant,
    )


def hessian_extremal_eigenvalues(
    f: ScalarFn,
    x: Tensor,
    k_iter: int = 30,
    *,
    generator: Optional[torch.Generator] = None,
    reorthogonalize: bool = True,
    mode: str = "forward_over_reverse",
) -> LanczosResult:
    """Lanczos estimate of ``lambda_max`` and ``lambda_min`` of ``∇²f(x)`` from HVPs only.

    ``mode`` selects the HVP (:func:`make_hvp`); ``"double_backward"`` is faster for many steps.
    """
    return lanczos_extremal_eigenvalues(make_hvp(f, x, mode=mode), x, k_iter, generator=generator,
                                        reorthogonalize=reorthogonalize)


# ================================================================== landscape constants
def as_float64_vector(values, name: str) -> Tensor:
    if isinstance(values, Tensor):
        t = values.detach().to(dtype=torch.float64, device="cpu").reshape(-1)
    else:
        try:
            t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a number, a sequence of numbers or a tensor") from exc
    return t


def pl_constant_estimate(f_values, grad_norms_sq, f_star: float, *, eps: float = 0.0) -> Tensor:
    """Pointwise Polyak–Łojasiewicz constant ``mu_i = ||∇f(x_i)||² / (2 (f(x_i) - f*))``.

    Convention: ``f`` satisfies the PL inequality with constant ``mu > 0`` on a set ``S`` if

        ||∇f(x)||² >= 2 mu (f(x) - f*)    for all x in S,

    (so ``f = ½ mu ||x||²`` has PL constant exactly ``mu``, and gradient descent with step
    ``1/L`` contracts the gap by ``1 - mu/L`` per step).  The pointwise ratio returned here is
    the largest ``mu`` the inequality allows *at each point*; the PL constant of a trajectory
    or region is its minimum (``estimate.min()``).  For ``f = ½ xᵀ A x`` with ``A ≻ 0`` the
    ratio is ``xᵀA²x / xᵀAx``, which lies in ``[lambda_min(A), lambda_max(A)]`` and equals
    ``lambda_min(A)`` along the bottom eigenvector.

    Parameters
    ----------
    f_values : float, sequence or Tensor, shape (T,)
    grad_norms_sq : same shape, ``||∇f(x_i)||²`` (squared!)
    f_star : float
        The optimal value ``f*`` (or a lower bound; a lower bound makes ``mu`` conservative).
    eps : float
        Points with ``f - f* <= eps`` (at or below the optimum, where the ratio is undefined)
        give ``NaN``.

    Returns
    -------
    Tensor, shape (T,), float64.
    """
    f = as_float64_vector(f_values, "f_values")
    g = as_float64_vector(grad_norms_sq, "grad_norms_sq")
    if f.shape != g.shape:
        raise ValueError(f"f_values has {f.numel()} entries but grad_norms_sq has {g.numel()}")
    if bool((g < 0).any()):
        raise ValueError("grad_norms_sq must be non-negative (pass squared gradient norms)")
    if not math.isfinite(float(f_star)):
        raise ValueError(f"f_star must be finite, got {f_star!r}")
    gap = f - float(f_star)
    mu = g / (2.0 * gap)
    return torch.where(gap > eps, mu, torch.full_like(mu, float("nan")))


def _as_points(points) -> list:
    if isinstance(points, Tensor):
        if points.ndim < 1:
            raise ValueError("points must be a sequence of tensors or a (T, ...) tensor")
        return list(points.unbind(0))
    pts = list(points)
    if not pts:
        raise ValueError("points is empty")
    for p in pts:
        check_point(p, "each point")
    return pts


def gradient_statistics(f: ScalarFn, points) -> tuple:
    """``(f(x_t), ||∇f(x_t)||²)`` along a trajectory, each a float64 tensor of shape (T,).

    ``points`` is a sequence of tensors or a tensor of shape ``(T, ...)``.
    """
    gv = torch.func.grad_and_value(scalar_output(f))
    fs, gs = [], []
    for p in _as_points(points):
        g, v = gv(p.detach())
        fs.append(float(v))
        gs.append(float((g.to(torch.float64) ** 2).sum()))
    return torch.tensor(fs, dtype=torch.float64), torch.tensor(gs, dtype=torch.float64)


@dataclass
class SmoothnessEstimate:
    """Output of :func:`smoothness_estimate`.

    Attributes
    ----------
    method : "hessian" or "secant"
    per_point : Tensor, float64
        ``hessian``: ``||∇²f(x_t)||_2 = max(lambda_max, -lambda_min)`` at each point, shape (T,).
        ``secant``: ``||∇f(x_{t+1}) - ∇f(x_t)|| / ||x_{t+1} - x_t||`` per segment, shape (T-1,).
    value : float — ``max(per_point)`` (NaNs ignored), the estimate of ``L`` on the trajectory.
    lambda_max, lambda_min : Tensor (T,) or None — Lanczos extremes (``hessian`` only).
    """

    method: str
    per_point: Tensor
    value: float
    lambda_max: Optional[Tensor] = None
    lambda_min: Optional[Tensor] = None


def secant_smoothness(points, grads) -> Tensor:
    """Secant (local Lipschitz) estimates ``||g_{t+1} - g_t|| / ||x_{t+1} - x_t||``.

    Each is a lower bound on the smoothness constant ``L`` over the segment ``[x_t, x_{t+1}]``.

    Parameters
    ----------
    points, grads : sequences of T tensors (or tensors of shape (T, ...)) of matching shapes.

    Returns
    -------
    Tensor, shape (T - 1,), float64; ``NaN`` where ``x_{t+1} = x_t``.
    """
    P = [p.detach().reshape(-1).to(torch.float64) for p in _as_points(points)]
    G = [g.detach().reshape(-1).to(torch.float64) for g in _as_points(grads)]
    if len(P) != len(G):
        raise ValueError(f"{len(P)} points but {len(G)} gradients")
    if len(P) < 2:
        raise ValueError("secant estimates need at least two points")
    out = []
    for t in range(len(P) - 1):
        if P[t].shape != P[t + 1].shape or G[t].shape != P[t].shape or G[t + 1].shape != P[t].shape:
            raise ValueError("points and gradients must all have the same number of elements")
        dx = float(torch.linalg.vector_norm(P[t + 1] - P[t]))
        dg = float(torch.linalg.vector_norm(G[t + 1] - G[t]))
        out.append(dg / dx if dx > 0 else float("nan"))
    return torch.tensor(out, dtype=torch.float64)


def smoothness_estimate(
    f: ScalarFn,
    points,
    *,
    method: str = "hessian",
    k_iter: int = 30,
    generator: Optional[torch.Generator] = None,
    mode: str = "forward_over_reverse",
) -> SmoothnessEstimate:
    """Estimate the smoothness constant ``L`` (``||∇f(x) - ∇f(y)|| <= L ||x - y||``) along a trajectory.

    ``method="hessian"``: Lanczos (``k_iter`` steps) on ``∇²f(x_t)`` at every point; the
    local constant is the spectral norm ``max(lambda_max, -lambda_min)`` (near a minimiser,
    where the Hessian is positive semi-definite, this is the top eigenvalue ``lambda_max``).
    ``method="secant"``: gradient secants between consecutive points (cheap; lower bounds).

    ``points``: a sequence of tensors or a ``(T, ...)`` tensor; ``mode``: the HVP of
    :func:`make_hvp` used by Lanczos.
    """
    if method not in ("hessian", "secant"):
        raise ValueError(f"method must be 'hessian' or 'secant', got {method!r}")
    pts = _as_points(points)
    if method == "secant":
        gfun = torch.func.grad(scalar_output(f))
        grads = [gfun(p.detach()) for p in pts]
        per = secant_smoothness(pts, grads)
        value = float(torch.nan_to_num(per, nan=-math.inf).max()) if per.numel() else float("nan")
        return SmoothnessEstimate("secant", per, value)
    lmax, lmin = [], []
    for p in pts:
        r = hessian_extremal_eigenvalues(f, p, k_iter, generator=generator, mode=mode)
        lmax.append(r.max)
        lmin.append(r.min)
    lmax_t = torch.tensor(lmax, dtype=torch.float64)
    lmin_t = torch.tensor(lmin, dtype=torch.float64)
    per = torch.maximum(lmax_t, -lmin_t)
    return SmoothnessEstimate("hessian", per, float(per.max()), lmax_t, lmin_t)


def condition_number(L, mu):
    """Condition-number proxy ``kappa = L / mu`` (elementwise for tensors).

    ``mu <= 0`` or ``NaN`` (no PL/sharpness information) gives ``inf``/``NaN`` rather than a
    misleading negative number.  Returns a float for scalar inputs, else a float64 tensor.
    """
    scalar = not isinstance(L, Tensor) and not isinstance(mu, Tensor) and \
        not isinstance(L, (list, tuple)) and not isinstance(mu, (list, tuple))
    Lt = torch.as_tensor(L.detach() if isinstance(L, Tensor) else L, dtype=torch.float64)
    mt = torch.as_tensor(mu.detach() if isinstance(mu, Tensor) else mu, dtype=torch.float64)
    if bool((Lt < 0).any()):
        raise ValueError("the smoothness constant L must be non-negative")
    kappa = torch.where(mt > 0, Lt / mt, torch.where(torch.isnan(mt), mt, torch.full_like(mt, math.inf)))
    return float(kappa) if scalar else kappa
