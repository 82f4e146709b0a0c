r"""Backpropagation-free (forward-mode) gradient estimators for ReLU MLPs.

Educational reproduction of the estimators compared in

* Wang, Markou & Campbell, "Towards Scalable Backpropagation-Free Gradient Estimation",
  AJCAI 2025, arXiv:2511.03110 (the orthogonalised upstream-Jacobian guess
  :math:`\tilde W^\perp`, its Newton–Schulz variant, and a preconditioned variant);
* Singhal et al., "How to Guess a Gradient", arXiv:2312.04709 (the :math:`W^\top` guess);
* Baydin et al., "Gradients without Backpropagation", arXiv:2202.08587 (forward gradients,
  i.e. weight perturbation) and Ren et al., "Scaling Forward Gradient with Local Losses",
  ICLR 2023 (activation perturbation).

Everything here is written from the public descriptions of those papers; no code was copied.

Network (functional form)
-------------------------
``params`` is a list of ``L`` layers ``(W_l, b_l)`` with ``W_l`` of shape ``(d_l, d_{l-1})``
(PyTorch's ``(out, in)`` convention) and ``b_l`` of shape ``(d_l,)`` or ``None``. For an input
batch ``x`` of shape ``(B, d_0)``::

    h_0 = x
    z_l = h_{l-1} W_l^T + b_l          (B, d_l)     pre-activations
    h_l = relu(z_l)                    for l < L   (hidden layers)
    logits = z_L                       (B, C),  C = d_L

and the objective is the mean cross-entropy ``f = (1/B) sum_b ell_b`` with
``ell_b = CE(z_{L,b}, y_b)``. Layers are indexed ``0 .. L-1`` in the API (layer ``i`` is
``params[i]``).

Estimators (all forward mode, ``torch.func.jvp``; one JVP per guess)
--------------------------------------------------------------------
Let ``g_{l,b} = d ell_b / d z_{l,b}`` be the (unknown) per-example pre-activation gradient, so
``dF/dW_l = (1/B) sum_b g_{l,b} h_{l-1,b}^T`` and ``dF/db_l = (1/B) sum_b g_{l,b}``.

``"weight"`` (weight perturbation, forward gradient of Baydin et al. / eq. 1 of Singhal et al.)
    ``v ~ N(0, I)`` over *all* weights and biases jointly; one JVP gives ``s = grad f . v``;
    estimate ``s v``. Unbiased: ``E[v v^T] = I``.

Activation-space estimators (``"activation"``, ``"wt"``, ``"upstream"``, ``"upstream_ns"``,
``"upstream_precond"``). For every layer ``l`` and example ``b`` a guess ``u_{l,b} = A_{l,b}
eta`` is drawn with ``eta ~ N(0, I_r)``; one JVP of the *per-example* loss vector
``(ell_1..ell_B)`` with respect to an additive perturbation of ``z_l`` (tangent ``u_l``, all
examples at once) returns every ``s_{l,b} = g_{l,b} . u_{l,b}``; the pre-activation gradient is
estimated as ``ghat_{l,b} = s_{l,b} Ahat_{l,b} eta`` and then mapped exactly to the weights:
``W_l <- (1/B) sum_b ghat_{l,b} h_{l-1,b}^T``, ``b_l <- (1/B) sum_b ghat_{l,b}``. Hence

    E[ghat_{l,b}] = Ahat_{l,b} A_{l,b}^T g_{l,b}            (closed form, see expected_estimate)

The methods differ only in ``A`` / ``Ahat``. For hidden layers (``l < L-1`` in 0-based
indices) define the (transposed) *upstream Jacobian* of example ``b``

    M_{l,b} = diag(m_{l,b}) W_{l+1}^T   in R^{d_l x d_{l+1}},   m_{l,b} = 1[z_{l,b} > 0],

i.e. ``M^T = d z_{l+1} / d z_l``. Because ``g_{l,b} = M_{l,b} g_{l+1,b}``, the true gradient
always lies in ``range(M_{l,b})``. With the thin SVD ``M = U S V^T`` (singular values below
``rtol * s_max`` treated as zero):

* ``"activation"`` (Ren et al.): ``A = Ahat = I`` -> unbiased, ``E = g``.
* ``"wt"`` (Singhal et al.'s W^T guess, ReLU-masked): ``A = Ahat = M`` (``u = M eps``,
  ``eps ~ N(0, I_{d_{l+1}})``) -> biased, ``E = M M^T g``.
* ``"upstream"`` (Wang et al.'s W~^perp, SVD): orthogonalise M (replace every non-zero
  singular value by 1, i.e. the polar factor ``U V^T``) and keep the top-k singular
  directions: ``u = U_k V_k^T eps``, which has the same law as ``U_k eta``; so
  ``A = Ahat = U_k`` -> ``E = U_k U_k^T g``, an orthogonal projection (bias = the part of g
  outside the top-k subspace; zero when ``k >= rank M``).
* ``"upstream_ns"`` (Newton–Schulz variant): the orthogonalisation is done by the cubic
  Newton–Schulz iteration instead of an SVD. ``k=None``: ``A = Ahat = NS(M)`` (approximate
  polar factor). ``k`` given: the top-k subspace is found by a few steps of block power
  (subspace) iteration ``Y <- M M^T NS(Y)`` started from ``Y = M Omega`` with a *fixed-seed*
  Gaussian ``Omega`` (so the estimator is a deterministic function of M and its expectation
  has the closed form ``Q Q^T g``), and ``A = Ahat = Q = NS(Y)``.
* ``"upstream_precond"`` (preconditioned / whitened): guesses as in W^T (``u = M eps``,
  equivalently ``U S eta``) but the estimate is preconditioned by ``(M M^T)^+``:
  ``ghat = (M M^T)^+ s u``, i.e. ``A = U S``, ``Ahat = U S^{-1}`` -> ``E = U U^T g = g``
  (``g`` lies in ``range(M)``), hence **unbiased by construction** for ``k=None``; its
  variance grows like ``1 / s_min^2``. With ``k`` the same construction is restricted to the
  top-k subspace (then ``E = U_k U_k^T g``, biased).

Last layer (logits): there is no upstream weight, so every activation-space estimator uses
plain activation perturbation ``u ~ N(0, I_C)`` there (unbiased; C is small).

``num_guesses=G`` averages G independent single-guess estimates (G JVPs per layer).

Reference tools (``true_gradient``, ``expected_estimate``) use reverse mode; estimators never
do (the tests patch ``torch.autograd.grad`` / ``backward`` to raise while estimating).

Memory: ``"wt"`` and ``"upstream_ns"`` with ``k`` are applied matrix-free (products with the
mask and ``W_{l+1}``, memory ``O(B d_l k)``); ``"upstream"``, ``"upstream_precond"`` and
``"upstream_ns"`` with ``k=None`` materialise the per-example ``M_{l,b}`` (``O(B d_l d_{l+1})``)
for their SVD / full Newton–Schulz.

Measurement and training tools (``gradient_spectra``, ``upstream_subspace_energy``,
``PeakMemoryMeter``, ``train_mlp``) back the book chapter ``book/14_forward_gradients.md``.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jvp

__all__ = [
    "ESTIMATORS",
    "UNBIASED_ESTIMATORS",
    "Layer",
    "Params",
    "random_mlp",
    "from_module",
    "mlp_forward",
    "per_example_loss",
    "mlp_loss",
    "directional_derivative_weights",
    "directional_derivative_activations",
    "newton_schulz",
    "upstream_matrix",
    "guess_generators",
    "sample_guesses",
    "estimate",
    "true_gradient",
    "expected_estimate",
    "cosine_similarity_per_layer",
    "bias_variance",
    "sweep_bias_variance",
    "gradient_spectra",
    "upstream_subspace_energy",
    "PeakMemoryMeter",
    "TRAIN_METHODS",
    "gradient",
    "train_mlp",
    "estimator_quality",
    "running_mean_error",
]

Layer = Tuple[Tensor, Optional[Tensor]]
Params = List[Layer]

#: Estimator names accepted by :func:`estimate`.
ESTIMATORS: Tuple[str, ...] = (
    "weight",
    "activation",
    "wt",
    "upstream",
    "upstream_ns",
    "upstream_precond",
)
#: Estimators that are unbiased by construction (``upstream_precond`` only with ``k=None``).
UNBIASED_ESTIMATORS: Tuple[str, ...] = ("weight", "activation", "upstream_precond")
_K_METHODS = ("upstream", "upstream_ns", "upstream_precond")
_ACT_METHODS = ESTIMATORS[1:]
#: Seed of the fixed sketch ``Omega`` used by the Newton–Schulz top-k subspace iteration.
NS_SKETCH_SEED = 1234


# --------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------
def _check_params(params) -> Params:
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise ValueError("params must be a non-empty list of (weight, bias) pairs")
    out: Params = []
    prev_out = None
    dtype = None
    for i, layer in enumerate(params):
        if not isinstance(layer, (list, tuple)) or len(layer) != 2:
            raise ValueError(f"params[{i}] must be a (weight, bias) pair, got {type(layer).__name__}")
        W, b = layer
        if not isinstance(W, Tensor) or W.dim() != 2:
            raise ValueError(f"params[{i}] weight must be a 2-D tensor (out, in)")
        if b is not None and (not isinstance(b, Tensor) or b.shape != (W.shape[0],)):
            raise ValueError(
                f"params[{i}] bias must be None or a tensor of shape ({W.shape[0]},), "
                f"got {None if not isinstance(b, Tensor) else tuple(b.shape)}"
            )
        if not W.is_floating_point():
            raise ValueError(f"params[{i}] weight must be floating point")
        if dtype is None:
            dtype = W.dtype
        elif W.dtype != dtype or (b is not None and b.dtype != dtype):
            raise ValueError("all parameters must share one dtype")
        if prev_out is not None and W.shape[1] != prev_out:
            raise ValueError(
                f"params[{i}] weight expects {W.shape[1]} inputs but layer {i - 1} has {prev_out} outputs"
            )
        prev_out = W.shape[0]
        out.append((W, b))
    return out


def _check_x(params: Params, x) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError("x must be a tensor of shape (B, d_0) (or (B, *) with prod(*) == d_0)")
    x = x.reshape(x.shape[0], -1)
    d0 = params[0][0].shape[1]
    if x.shape[1] != d0:
        raise ValueError(f"x has {x.shape[1]} features per example, the network expects {d0}")
    if x.shape[0] == 0:
        raise ValueError("x must contain at least one example")
    return x.to(params[0][0].dtype)


def _check_xy(params: Params, x, y) -> Tuple[Tensor, Tensor]:
    x = _check_x(params, x)
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be a 1-D tensor of {x.shape[0]} class indices")
    if y.is_floating_point() or y.is_complex():
        raise ValueError("y must hold integer class indices")
    C = params[-1][0].shape[0]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= C):
        raise ValueError(f"class indices in y must lie in [0, {C})")
    return x, y.long()


def _check_name(name: str) -> str:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {ESTIMATORS}")
    return name


def _max_k(params: Params) -> Optional[int]:
    """Largest admissible k: max over hidden layers of rank bound min(d_l, d_{l+1})."""
    bounds = [min(params[i][0].shape[0], params[i + 1][0].shape[0]) for i in range(len(params) - 1)]
    return max(bounds) if bounds else None


def _check_k(name: str, params: Params, k) -> Optional[int]:
    if k is None:
        return None
    if name not in _K_METHODS:
        raise ValueError(f"k is only used by {_K_METHODS}; estimator {name!r} takes k=None")
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be a positive int or None, got {k!r}")
    kmax = _max_k(params)
    if k < 1 or (kmax is not None and k > kmax):
        raise ValueError(
            f"k={k} out of range: need 1 <= k <= {kmax} (max over hidden layers of min(d_l, d_l+1))"
        )
    return k


def _check_pos_int(what: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}")
    return v


# --------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------
def random_mlp(
    dims: Sequence[int],
    *,
    bias: bool = True,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Params:
    """He-initialised ReLU MLP ``dims = [d_0, d_1, ..., d_L]`` -> params (list of (W, b)).

    ``W_l ~ N(0, 2 / d_{l-1})`` of shape ``(d_l, d_{l-1})``; biases ``~ N(0, 0.01)`` so that
    units are not exactly tied (``None`` when ``bias=False``).
    """
    dims = [_check_pos_int(f"dims[{i}]", d) for i, d in enumerate(dims)]
    if len(dims) < 2:
        raise ValueError("dims needs at least an input and an output size")
    params: Params = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        W = torch.randn(d_out, d_in, generator=generator, dtype=dtype, device=device) * math.sqrt(2.0 / d_in)
        b = torch.randn(d_out, generator=generator, dtype=dtype, device=device) * 0.1 if bias else None
        params.append((W, b))
    return params


def from_module(module: nn.Module) -> Params:
    """Detached copy of the ``Linear`` layers of an ``nn.Sequential`` / ``guiding_nc.models.MLP``.

    The module must be ``[Flatten] -> Linear -> ReLU -> ... -> Linear`` (ReLU between linear
    layers and *no* activation after the last one, e.g. ``MLP(..., final_activation=False)``).
    Returns params as a list of ``(W (out, in), b (out,) or None)``.
    """
    if not isinstance(module, nn.Module):
        raise ValueError("module must be a torch.nn.Module")
    # leaves in registration order (guiding_nc.models.MLP keeps them in a child Sequential)
    mods = [m for m in module.modules() if len(list(m.children())) == 0]
    params: Params = []
    expect_linear = True
    for m in mods:
        if isinstance(m, (nn.Flatten, nn.Identity)):
            continue
        if isinstance(m, nn.Linear):
            if not expect_linear:
                raise ValueError("two Linear layers without a ReLU in between are not supported")
            b = None if m.bias is None else m.bias.detach().clone()
            params.append((m.weight.detach().clone(), b))
            expect_linear = False
        elif isinstance(m, nn.ReLU):
            if expect_linear:
                raise ValueError("ReLU must follow a Linear layer")
            expect_linear = True
        else:
            raise ValueError(f"unsupported module {type(m).__name__}: only Flatten, Linear and ReLU")
    if not params:
        raise ValueError("module contains no Linear layer")
    if expect_linear:
        raise ValueError(
            "the functional MLP ends with a Linear layer producing logits; a trailing ReLU "
            "is not supported (build guiding_nc.models.MLP with final_activation=False)"
        )
    return _check_params(params)


def _forward_record(params: Params, x: Tensor, deltas: Optional[Dict[int, Tensor]] = None):
    """Forward pass returning (logits, inputs h_{l-1} per layer, pre-activations z_l per layer)."""
    h = x
    inputs, pre = [], []
    L = len(params)
    for i, (W, b) in enumerate(params):
        inputs.append(h)
        z = h @ W.T
        if b is not None:
            z = z + b
        if deltas is not None and i in deltas:
            z = z + deltas[i]
        pre.append(z)
        h = torch.relu(z) if i < L - 1 else z
    return h, inputs, pre


def mlp_forward(params: Params, x: Tensor) -> Tensor:
    """Logits ``(B, C)`` of the ReLU MLP ``params`` on ``x`` ``(B, d_0)`` (or ``(B, *)``)."""
    params = _check_params(params)
    return _forward_record(params, _check_x(params, x))[0]


def per_example_loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy ``(B,)``."""
    params = _check_params(params)
    x, y = _check_xy(params, x, y)
    return F.cross_entropy(_forward_record(params, x)[0], y, reduction="none")


def mlp_loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy (scalar): the objective ``f`` whose gradient is estimated."""
    return per_example_loss(params, x, y).mean()


# --------------------------------------------------------------------------------------
# flattening of the (W, b) structure for torch.func
# --------------------------------------------------------------------------------------
def _flat(params: Params) -> Tuple[Tensor, ...]:
    out = []
    for W, b in params:
        out.append(W)
        if b is not None:
            out.append(b)
    return tuple(out)


def _unflat(params: Params, flat: Sequence[Tensor]) -> Params:
    out: Params = []
    j = 0
    for W, b in params:
        Wn = flat[j]
        j += 1
        bn = None
        if b is not None:
            bn = flat[j]
            j += 1
        out.append((Wn, bn))
    return out


# --------------------------------------------------------------------------------------
# directional derivatives (forward mode)
# --------------------------------------------------------------------------------------
def directional_derivative_weights(params: Params, x: Tensor, y: Tensor, v: Params) -> Tensor:
    """``grad f . v`` (scalar) by one ``torch.func.jvp``; ``v`` has the structure of ``params``."""
    params = _check_params(params)
    x, y = _check_xy(params, x, y)
    _check_same_structure(v, params, "v")

    def f(*flat):
        logits = _forward_record(_unflat(params, flat), x)[0]
        return F.cross_entropy(logits, y)

    return jvp(f, _flat(params), _flat(v))[1]


def directional_derivative_activations(
    params: Params, x: Tensor, y: Tensor, layer: int, u: Tensor
) -> Tensor:
    """Per-example ``d ell_b / d z_{layer,b} . u_b`` (shape ``(B,)``) by one ``torch.func.jvp``.

    ``u`` has shape ``(B, d_layer)`` (one tangent per example); a leading guess dimension
    ``(G, B, d_layer)`` is also accepted (vectorised with ``vmap``, one JVP per guess).
    """
    params = _check_params(params)
    x, y = _check_xy(params, x, y)
    layer = _check_layer(params, layer)
    d = params[layer][0].shape[0]
    if u.shape[-2:] != (x.shape[0], d) or u.dim() not in (2, 3):
        raise ValueError(f"u must have shape (B, {d}) or (G, B, {d}); got {tuple(u.shape)}")
    return _act_jvp(params, x, y, layer, u if u.dim() == 3 else u[None])[... if u.dim() == 3 else 0]


def _act_jvp(params: Params, x: Tensor, y: Tensor, layer: int, U: Tensor) -> Tensor:
    """(G, B) per-example directional derivatives for tangents U (G, B, d_layer).

    The G guesses are evaluated in one ``torch.func.jvp`` call on the batch replicated G
    times: row ``(g, b)`` of the replicated batch only sees tangent ``U[g, b]`` (examples do
    not interact), so this is exactly G separate JVPs, vectorised.
    """
    G, B, d = U.shape
    xr = x.repeat(G, 1)
    yr = y.repeat(G)
    zero = torch.zeros(G * B, d, dtype=U.dtype, device=U.device)

    def losses(delta):
        logits = _forward_record(params, xr, {layer: delta})[0]
        return F.cross_entropy(logits, yr, reduction="none")

    return jvp(losses, (zero,), (U.reshape(G * B, d),))[1].reshape(G, B)


def _weights_jvp(params: Params, x: Tensor, y: Tensor, V: Tuple[Tensor, ...]) -> Tensor:
    """(G,) directional derivatives of the mean loss along G stacked flat tangents V.

    One ``torch.func.jvp`` call of the map ``stacked params (G, ...) -> G mean losses``
    evaluated at G copies of ``params``; loss ``g`` depends only on copy ``g``, so entry
    ``g`` is the JVP along tangent ``V[.][g]`` (G independent JVPs, vectorised).
    """
    G = V[0].shape[0]
    B = x.shape[0]
    primals = tuple(t.unsqueeze(0).expand(G, *t.shape).clone() for t in _flat(params))

    def f(*flat):
        h = x.unsqueeze(0).expand(G, *x.shape)  # (G, B, d0)
        layers = _unflat(params, flat)
        for i, (W, b) in enumerate(layers):
            z = torch.einsum("gbi,goi->gbo", h, W)
            if b is not None:
                z = z + b[:, None, :]
            h = torch.relu(z) if i < len(layers) - 1 else z
        ce = F.cross_entropy(h.reshape(G * B, -1), y.repeat(G), reduction="none")
        return ce.reshape(G, B).mean(1)

    return jvp(f, primals, V)[1]


def _check_layer(params: Params, layer) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or not (0 <= layer < len(params)):
        raise ValueError(f"layer must be an int in [0, {len(params)}), got {layer!r}")
    return layer


def _check_same_structure(a, ref: Params, what: str) -> None:
    if not isinstance(a, (list, tuple)) or len(a) != len(ref):
        raise ValueError(f"{what} must be a list of {len(ref)} (weight, bias) pairs")
    for i, (pa, pr) in enumerate(zip(a, ref)):
        if not isinstance(pa, (list, tuple)) or len(pa) != 2:
            raise ValueError(f"{what}[{i}] must be a (weight, bias) pair")
        for j, (ta, tr) in enumerate(zip(pa, pr)):
            if (ta is None) != (tr is None):
                raise ValueError(f"{what}[{i}][{j}]: bias presence differs from the reference")
            if ta is not None and tuple(ta.shape) != tuple(tr.shape):
                raise ValueError(
                    f"{what}[{i}][{j}] has shape {tuple(ta.shape)}, expected {tuple(tr.shape)}"
                )


# --------------------------------------------------------------------------------------
# Newton–Schulz orthogonalisation and guess generators
# --------------------------------------------------------------------------------------
def newton_schulz(A: Tensor, num_iters: int = 10) -> Tensor:
    """Approximate (pseudo-)polar factor ``U V^T`` of ``A`` (``(..., m, n)``, batched).

    Cubic Newton–Schulz iteration ``X <- 1.5 X - 0.5 X X^T X`` from ``X_0 = A / ||A||_F``
    (so every singular value starts in (0, 1]). Each step maps a singular value
    ``s -> 1.5 s - 0.5 s^3``: non-zero ones converge (quadratically near 1) to 1, zero ones
    stay 0, so the limit is ``sum_{s_i > 0} u_i v_i^T`` — the SVD polar factor. Small singular
    values need about ``log(s_max / s) / log(1.5)`` steps, so a few iterations act as a soft
    top-subspace orthogonalisation. Uses only matrix products.
    """
    _check_pos_int("num_iters", num_iters)
    if A.dim() < 2:
        raise ValueError("A must have at least 2 dimensions (..., m, n)")
    norm = torch.linalg.matrix_norm(A, ord="fro", keepdim=True)
    X = A / norm.clamp_min(torch.finfo(A.dtype).tiny)
    tall = A.shape[-2] > A.shape[-1]
    for _ in range(num_iters):
        if tall:  # X (X^T X): the Gram matrix is the smaller n x n
            X = 1.5 * X - 0.5 * X @ (X.transpose(-1, -2) @ X)
        else:
            X = 1.5 * X - 0.5 * (X @ X.transpose(-1, -2)) @ X
    return X


def upstream_matrix(params: Params, x: Tensor, layer: int) -> Tensor:
    """Transposed, ReLU-masked upstream Jacobian ``M_{l,b} = diag(m_{l,b}) W_{l+1}^T``.

    Shape ``(B, d_l, d_{l+1})``; ``M_{l,b}^T = d z_{l+1,b} / d z_{l,b}``. Only defined for
    hidden layers ``0 <= layer < L-1``.
    """
    params = _check_params(params)
    x = _check_x(params, x)
    layer = _check_layer(params, layer)
    if layer == len(params) - 1:
        raise ValueError("the last (logit) layer has no upstream weight")
    with torch.no_grad():
        pre = _forward_record(params, x)[2]
    return _upstream_from(params, pre, layer)


def _upstream_from(params: Params, pre: List[Tensor], layer: int) -> Tensor:
    mask = (pre[layer] > 0).to(pre[layer].dtype)  # (B, d_l)
    return mask[:, :, None] * params[layer + 1][0].T[None]


def _svd_rank_mask(S: Tensor, m: int, n: int) -> Tensor:
    """1.0 for singular values above rtol * s_max (rtol = max(m, n) * eps), else 0."""
    rtol = max(m, n) * torch.finfo(S.dtype).eps
    smax = S[..., :1]
    return (S > rtol * smax).to(S.dtype)


def guess_generators(
    name: str,
    params: Params,
    x: Tensor,
    layer: int,
    *,
    k: Optional[int] = None,
    ns_iters: int = 10,
    power_iters: int = 3,
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Return ``(A, Ahat)`` for one layer: guesses ``u_b = A_b eta`` and estimates
    ``ghat_b = (g_b . u_b) Ahat_b eta`` with ``eta ~ N(0, I_r)``.

    Shapes ``(B, d_l, r)``; ``(None, None)`` means ``A = Ahat = I`` (plain activation
    perturbation, also used for the last layer by every activation-space method). See the
    module docstring for the definition of each method. Not defined for ``"weight"``.
    """
    params = _check_params(params)
    x = _check_x(params, x)
    name = _check_name(name)
    if name == "weight":
        raise ValueError("weight perturbation has no activation-space guess generator")
    k = _check_k(name, params, k)
    layer = _check_layer(params, layer)
    _check_pos_int("ns_iters", ns_iters)
    _check_pos_int("power_iters", power_iters)
    with torch.no_grad():
        pre = _forward_record(params, x)[2]
        return _generators(name, params, pre, layer, k, ns_iters, power_iters)


def _generators(name, params, pre, layer, k, ns_iters, power_iters):
    if name == "activation" or layer == len(params) - 1:
        return None, None
    if name == "upstream_ns" and k is not None:
        return _ns_topk_matrix_free(params, pre, layer, k, ns_iters, power_iters)
    M = _upstream_from(params, pre, layer)  # (B, d_l, d_{l+1})
    if name == "wt":
        return M, M
    d_l, d_n = M.shape[-2:]
    if k is not None:
        k = min(k, d_l, d_n)  # per-layer clip to the rank bound of M
    if name in ("upstream", "upstream_precond"):
        U, S, _ = torch.linalg.svd(M, full_matrices=False)  # U (B, d_l, r), S (B, r)
        keep = _svd_rank_mask(S, d_l, d_n)
        if k is not None:
            U, S, keep = U[..., :k], S[..., :k], keep[..., :k]
        if name == "upstream":
            A = U * keep[:, None, :]
            return A, A
        S_safe = torch.where(keep > 0, S, torch.ones_like(S))
        return U * (S * keep)[:, None, :], U * (keep / S_safe)[:, None, :]
    # upstream_ns, k=None: approximate polar factor of the whole M
    Q = newton_schulz(M, ns_iters)
    return Q, Q


def _ns_topk_matrix_free(params, pre, layer, k, ns_iters, power_iters):
    """Top-k Newton–Schulz subspace without forming M (memory O(B d_l k), not O(B d_l d_{l+1})).

    Uses ``M Y = m * (W_{l+1}^T Y)`` and ``M^T X = W_{l+1} (m * X)`` (``m`` the ReLU mask); the
    result equals the subspace iteration on the materialised ``M`` up to rounding.
    """
    W_next = params[layer + 1][0]  # (d_{l+1}, d_l)
    d_n, d_l = W_next.shape
    k = min(k, d_l, d_n)
    mask = (pre[layer] > 0).to(pre[layer].dtype)[:, :, None]  # (B, d_l, 1)
    g = torch.Generator(device="cpu").manual_seed(NS_SKETCH_SEED)
    Omega = torch.randn(d_n, k, generator=g, dtype=W_next.dtype).to(W_next.device)
    Y = mask * (W_next.T @ Omega)[None]  # (B, d_l, k) = M Omega
    for _ in range(power_iters):
        Z = W_next @ (mask * newton_schulz(Y, ns_iters))  # (B, d_{l+1}, k) = M^T NS(Y)
        Y = mask * (W_next.T @ Z)  # M Z
    Q = newton_schulz(Y, ns_iters)
    return Q, Q


# --------------------------------------------------------------------------------------
# sampling of single-guess estimates
# --------------------------------------------------------------------------------------
def _randn(shape, like: Tensor, generator):
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)


def _prepare(name, params, x, y, k, ns_iters, power_iters):
    params = _check_params(params)
    x, y = _check_xy(params, x, y)
    name = _check_name(name)
    k = _check_k(name, params, k)
    _check_pos_int("ns_iters", ns_iters)
    _check_pos_int("power_iters", power_iters)
    return name, params, x, y, k


def _sample_chunks(
    name: str,
    params: Params,
    x: Tensor,
    y: Tensor,
    n: int,
    k: Optional[int],
    generator,
    ns_iters: int,
    power_iters: int,
    chunk_size: int,
) -> Iterator[Params]:
    """Yield chunks of single-guess estimates: params-structured, each tensor with a leading
    guess dimension ``(g, ...)``. Inputs already validated. No reverse-mode AD anywhere."""
    with torch.no_grad():
        B = x.shape[0]
        if name == "weight":
            flat = _flat(params)
            done = 0
            while done < n:
                g = min(chunk_size, n - done)
                V = tuple(_randn((g, *t.shape), t, generator) for t in flat)
                s = _weights_jvp(params, x, y, V)  # (g,)
                est = [v * s.view(-1, *([1] * (v.dim() - 1))) for v in V]
                yield _unflat(params, est)
                done += g
            return
        _, inputs, pre = _forward_record(params, x)
        wt_free = name == "wt"  # W^T guess applied matrix-free: u = m * (eps W_{l+1})
        gens = [(None, None) if wt_free else _generators(name, params, pre, l, k, ns_iters, power_iters)
                for l in range(len(params))]
        done = 0
        while done < n:
            g = min(chunk_size, n - done)
            out: Params = []
            for l, (W, b) in enumerate(params):
                A, Ahat = gens[l]
                d_l = W.shape[0]
                if wt_free and l < len(params) - 1:
                    W_next = params[l + 1][0]
                    eta = _randn((g, B, W_next.shape[0]), W, generator)
                    U = (pre[l] > 0).to(W.dtype) * (eta @ W_next)  # (g, B, d_l) = M_b eps
                    A = Ahat = U  # marker: ghat = s * U below
                elif A is None:
                    eta = _randn((g, B, d_l), W, generator)
                    U = eta
                else:
                    eta = _randn((g, B, A.shape[-1]), W, generator)
                    U = torch.einsum("bdr,gbr->gbd", A, eta)
                s = _act_jvp(params, x, y, l, U)  # (g, B): one JVP per guess
                if Ahat is None:
                    ghat = s[..., None] * eta
                elif Ahat is A:  # A = Ahat (also the matrix-free W^T marker)
                    ghat = s[..., None] * U
                else:
                    ghat = s[..., None] * torch.einsum("bdr,gbr->gbd", Ahat, eta)
                dW = torch.einsum("gbo,bi->goi", ghat, inputs[l]) / B
                db = ghat.mean(1) if b is not None else None
                out.append((dW, db))
            yield out
            done += g


def sample_guesses(
    name: str,
    params: Params,
    x: Tensor,
    y: Tensor,
    layer: int,
    num_guesses: int = 1,
    *,
    k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    ns_iters: int = 10,
    power_iters: int = 3,
) -> Dict[str, Tensor]:
    """Draw guesses for one layer and return the tangents and the JVP results (for inspection).

    For activation-space methods: ``{"tangent": (G, B, d_l), "directional_derivative": (G, B)}``
    with ``directional_derivative[g, b] = d ell_b / d z_{layer,b} . tangent[g, b]``.
    For ``"weight"`` (``layer`` ignored but validated): ``{"tangent": params-structured list
    with a leading G dim, "directional_derivative": (G,)}`` with the JVP of the mean loss.
    """
    name, params, x, y, k = _prepare(name, params, x, y, k, ns_iters, power_iters)
    layer = _check_layer(params, layer)
    _check_pos_int("num_guesses", num_guesses)
    with torch.no_grad():
        if name == "weight":
            flat = _flat(params)
            V = tuple(_randn((num_guesses, *t.shape), t, generator) for t in flat)
            return {"tangent": _unflat(params, V), "directional_derivative": _weights_jvp(params, x, y, V)}
        pre = _forward_record(params, x)[2]
        A, _ = _generators(name, params, pre, layer, k, ns_iters, power_iters)
        W = params[layer][0]
        if A is None:
            U = _randn((num_guesses, x.shape[0], W.shape[0]), W, generator)
        else:
            U = torch.einsum("bdr,gbr->gbd", A, _randn((num_guesses, x.shape[0], A.shape[-1]), W, generator))
        return {"tangent": U, "directional_derivative": _act_jvp(params, x, y, layer, U)}


def estimate(
    name: str,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    num_guesses: int = 1,
    k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    ns_iters: int = 10,
    power_iters: int = 3,
    chunk_size: int = 64,
) -> Params:
    """Forward-mode estimate of ``grad f`` (mean cross-entropy) w.r.t. every ``(W_l, b_l)``.

    Args:
        name: one of :data:`ESTIMATORS`.
        params: list of ``(W (d_l, d_{l-1}), b (d_l,) or None)``.
        x: ``(B, d_0)`` inputs; y: ``(B,)`` integer labels in ``[0, C)``.
        num_guesses: number G of independent guesses averaged (G JVPs per layer; for
            ``"weight"`` G JVPs in total).
        k: subspace dimension for ``"upstream"``, ``"upstream_ns"``, ``"upstream_precond"``;
            ``1 <= k <= max_l min(d_l, d_{l+1})`` over hidden layers, and clipped per layer to
            ``min(d_l, d_{l+1})`` (the rank bound of that layer's upstream Jacobian, e.g. the
            number of classes for the last hidden layer); ``None`` = full rank.
        generator: ``torch.Generator`` for the guesses.
        ns_iters / power_iters: Newton–Schulz steps / subspace-iteration steps
            (``"upstream_ns"`` only).
        chunk_size: guesses vectorised together (memory knob only).

    Returns:
        list with the structure of ``params``: ``(dW_l (d_l, d_{l-1}), db_l (d_l,) or None)``.
        Computed without reverse-mode AD (forward passes and ``torch.func.jvp`` only).
    """
    name, params, x, y, k = _prepare(name, params, x, y, k, ns_iters, power_iters)
    _check_pos_int("num_guesses", num_guesses)
    _check_pos_int("chunk_size", chunk_size)
    total: Optional[List[List[Optional[Tensor]]]] = None
    for chunk in _sample_chunks(name, params, x, y, num_guesses, k, generator, ns_iters, power_iters, chunk_size):
        sums = [[None if t is None else t.sum(0) for t in layer] for layer in chunk]
        if total is None:
            total = sums
        else:
            for tl, sl in zip(total, sums):
                for j in range(2):
                    if tl[j] is not None:
                        tl[j] = tl[j] + sl[j]
    return [(W / num_guesses, None if b is None else b / num_guesses) for W, b in total]


# --------------------------------------------------------------------------------------
# references (reverse mode allowed here)
# --------------------------------------------------------------------------------------
def true_gradient(params: Params, x: Tensor, y: Tensor) -> Params:
    """Exact gradient of the mean cross-entropy by backpropagation (the reference)."""
    params = _check_params(params)
    x, y = _check_xy(params, x, y)
    flat = [t.detach().clone().requires_grad_(True) for t in _flat(params)]
    with torch.enable_grad():
        loss = F.cross_entropy(_forward_record(_unflat(params, flat), x)[0], y)
        grads = torch.autograd.grad(loss, flat)
    return _unflat(params, [g.detach() for g in grads])


def _per_example_preact_grads(params: Params, x: Tensor, y: Tensor) -> List[Tensor]:
    """Reference ``g_{l,b} = d ell_b / d z_{l,b}`` for every layer, shape (B, d_l) (autograd)."""
    deltas = {
        l: torch.zeros(x.shape[0], W.shape[0], dtype=x.dtype, device=x.device, requires_grad=True)
        for l, (W, _) in enumerate(params)
    }
    with torch.enable_grad():
        logits = _forward_record([(W.detach(), None if b is None else b.detach()) for W, b in params], x, deltas)[0]
        total = F.cross_entropy(logits, y, reduction="sum")
        grads = torch.autograd.grad(total, [deltas[l] for l in range(len(params))])
    return [g.detach() for g in grads]


def expected_estimate(
    name: str,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    k: Optional[int] = None,
    ns_iters: int = 10,
    power_iters: int = 3,
) -> Params:
    """Closed-form expectation of a single-guess estimate (reference; uses autograd).

    ``"weight"``: the true gradient. Activation-space methods:
    ``E[dW_l] = (1/B) sum_b C_{l,b} g_{l,b} h_{l-1,b}^T``, ``E[db_l] = (1/B) sum_b C_{l,b} g_{l,b}``
    with ``C = Ahat A^T`` from :func:`guess_generators` (``I`` for activation perturbation and
    the last layer; ``M M^T`` for W^T; ``U_k U_k^T`` for upstream; ``Q Q^T`` for the NS
    variant; ``U_k U_k^T`` for the preconditioned variant, = I on range(M) when ``k=None``).
    """
    name, params, x, y, k = _prepare(name, params, x, y, k, ns_iters, power_iters)
    if name == "weight":
        return true_gradient(params, x, y)
    gz = _per_example_preact_grads(params, x, y)
    with torch.no_grad():
        _, inputs, pre = _forward_record(params, x)
        out: Params = []
        B = x.shape[0]
        for l, (W, b) in enumerate(params):
            A, Ahat = _generators(name, params, pre, l, k, ns_iters, power_iters)
            g = gz[l]
            if A is not None:
                g = torch.einsum("bdr,bcr,bc->bd", Ahat, A, g)
            out.append((g.T @ inputs[l] / B, None if b is None else g.mean(0)))
    return out


# --------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------
def _layer_vec(layer: Layer) -> Tensor:
    W, b = layer
    return W.reshape(-1) if b is None else torch.cat([W.reshape(-1), b.reshape(-1)])


def cosine_similarity_per_layer(estimate: Params, true: Params) -> List[float]:
    """Cosine between estimate and true gradient for each layer (W and b concatenated).

    Returns 0.0 for a layer where either vector is exactly zero. Raises ``ValueError`` if the
    two structures (number of layers, bias presence, shapes) differ.
    """
    true = _check_params(true)
    _check_same_structure(estimate, true, "estimate")
    out = []
    for e, t in zip(estimate, true):
        tv = _layer_vec(t)
        ev = _layer_vec(e).to(tv.dtype)
        den = ev.norm() * tv.norm()
        out.append(0.0 if float(den) == 0.0 else float((ev @ tv) / den))
    return out


def bias_variance(
    name: str,
    params: Params,
    x: Tensor,
    y: Tensor,
    num_samples: int,
    *,
    k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    ns_iters: int = 10,
    power_iters: int = 3,
    chunk_size: int = 64,
) -> List[Dict[str, float]]:
    """Monte-Carlo bias / variance / cosine of the *single-guess* estimator, per layer.

    Draws ``num_samples`` single-guess estimates (``num_guesses=1``) and returns, for each
    layer (W and b concatenated), a dict with

    * ``bias_norm``: ``||mean - true||`` (includes Monte-Carlo error ~ sqrt(variance / n));
    * ``relative_bias``: ``bias_norm / ||true||``;
    * ``variance``: trace of the sample covariance (unbiased, ``n-1``);
    * ``mean_cosine``: mean over samples of cos(estimate, true);
    * ``true_norm``, ``num_samples``, ``layer``.

    The variance of the G-guess average is ``variance / G``.
    """
    name, params, x, y, k = _prepare(name, params, x, y, k, ns_iters, power_iters)
    n = _check_pos_int("num_samples", num_samples)
    if n < 2:
        raise ValueError("num_samples must be at least 2 to estimate a variance")
    _check_pos_int("chunk_size", chunk_size)
    true = true_gradient(params, x, y)
    tvecs = [_layer_vec(t) for t in true]
    L = len(params)
    s1 = [torch.zeros_like(t) for t in tvecs]
    s2 = [torch.zeros_like(t) for t in tvecs]
    cos = [0.0] * L
    ref = tvecs[0]
    for chunk in _sample_chunks(name, params, x, y, n, k, generator, ns_iters, power_iters, chunk_size):
        for l, (W, b) in enumerate(chunk):
            V = W.reshape(W.shape[0], -1) if b is None else torch.cat([W.reshape(W.shape[0], -1), b], 1)
            # shift by the true gradient for numerical stability of the second moment
            D = V - tvecs[l]
            s1[l] += D.sum(0)
            s2[l] += (D * D).sum(0)
            den = V.norm(dim=1) * tvecs[l].norm()
            c = torch.where(den > 0, (V @ tvecs[l]) / den.clamp_min(torch.finfo(ref.dtype).tiny), torch.zeros_like(den))
            cos[l] += float(c.sum())
    out = []
    for l in range(L):
        mean_dev = s1[l] / n
        var = ((s2[l] - n * mean_dev * mean_dev) / (n - 1)).clamp_min(0).sum()
        tn = float(tvecs[l].norm())
        bn = float(mean_dev.norm())
        out.append(
            {
                "layer": l,
                "bias_norm": bn,
                "relative_bias": bn / tn if tn > 0 else float("nan"),
                "variance": float(var),
                "mean_cosine": cos[l] / n,
                "true_norm": tn,
                "num_samples": n,
            }
        )
    return out


def sweep_bias_variance(
    names: Sequence[str],
    widths: Sequence[int],
    ks: Sequence[Optional[int]] = (None,),
    *,
    in_features: int = 20,
    num_classes: int = 10,
    depth: int = 3,
    batch_size: int = 32,
    num_samples: int = 200,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> List[Dict[str, object]]:
    """Bias/variance/cosine as functions of width and k on random data and random MLPs.

    For each width ``w`` a He-initialised MLP ``[in_features] + [w] * depth + [num_classes]``
    and a Gaussian batch with random labels are drawn (seeded by ``seed``); for each estimator
    and each ``k`` (``k`` is passed only to the k-methods, and skipped when out of range) the
    per-layer :func:`bias_variance` records are returned flattened with ``name``, ``width``
    and ``k`` keys.
    """
    for nm in names:
        _check_name(nm)
    records: List[Dict[str, object]] = []
    for w in widths:
        _check_pos_int("width", w)
        gen = torch.Generator().manual_seed(seed)
        params = random_mlp([in_features] + [w] * depth + [num_classes], generator=gen, dtype=dtype)
        x = torch.randn(batch_size, in_features, generator=gen, dtype=dtype)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen)
        for nm in names:
            for kk in (ks if nm in _K_METHODS else (None,)):
                if kk is not None and kk > (_max_k(params) or kk):
                    continue
                g2 = torch.Generator().manual_seed(seed + 1)
                for rec in bias_variance(nm, params, x, y, num_samples, k=kk, generator=g2):
                    records.append({"name": nm, "width": w, "k": kk, **rec})
                if nm not in _K_METHODS:
                    break
    return records


# --------------------------------------------------------------------------------------
# structure of the true gradient (book chapter 14, "Gradients without backpropagation")
# --------------------------------------------------------------------------------------
def _energy_rank(S: Tensor, fraction: float) -> int:
    """Smallest r with sum_{i<r} s_i^2 >= fraction * sum_i s_i^2 (0 for a zero matrix)."""
    e = S.double() ** 2
    tot = float(e.sum())
    if tot == 0.0:
        return 0
    c = torch.cumsum(e, 0) / tot
    return int((c < fraction - 1e-12).sum()) + 1


def gradient_spectra(params: Params, x: Tensor, y: Tensor, *, energy: float = 0.9) -> List[Dict[str, object]]:
    """Singular values of the true weight gradient ``dF/dW_l`` (shape ``(d_l, d_{l-1})``) per layer.

    Returns one dict per layer with ``singular_values`` (descending, ``min(d_l, d_{l-1})``
    floats), ``stable_rank`` ``= ||G||_F^2 / ||G||_2^2``, ``energy_rank`` (the number of
    singular values holding ``energy`` of ``||G||_F^2``), ``full_rank_bound``
    ``= min(d_l, d_{l-1}, B)`` and ``shape``. Reference tool (uses reverse mode).
    """
    params = _check_params(params)
    x, y = _check_xy(params, x, y)
    if not (isinstance(energy, float) and 0.0 < energy <= 1.0):
        raise ValueError(f"energy must be a float in (0, 1], got {energy!r}")
    out = []
    for l, (G, _) in enumerate(true_gradient(params, x, y)):
        S = torch.linalg.svdvals(G.double())
        s1 = float(S[0]) if S.numel() else 0.0
        out.append({
            "layer": l,
            "shape": list(G.shape),
            "singular_values": [float(v) for v in S],
            "stable_rank": float((S ** 2).sum() / S[0] ** 2) if s1 > 0 else 0.0,
            "energy_rank": _energy_rank(S, energy),
            "energy": energy,
            "full_rank_bound": min(G.shape[0], G.shape[1], x.shape[0]),
        })
    return out


def upstream_subspace_energy(params: Params, x: Tensor, y: Tensor, ks: Sequence[int]) -> List[Dict[str, object]]:
    """Fraction of each per-example pre-activation gradient inside the top-k upstream subspace.

    For every hidden layer ``l`` and ``k`` in ``ks``: ``mean_b ||U_k U_k^T g_{l,b}||^2 / ||g_{l,b}||^2``
    with ``U_k`` the top-k left singular vectors of ``M_{l,b}`` (:func:`upstream_matrix`) — i.e.
    one minus the mean squared *relative bias* of the single-guess ``"upstream"`` estimator in
    pre-activation space — next to ``k / d_l``, the expected fraction inside a *random*
    k-dimensional subspace. ``k`` is clipped per layer to ``min(d_l, d_{l+1})``.
    Returns dicts with ``layer, k, k_used, width, energy, random_energy``. Uses reverse mode
    (reference tool).
    """
    params = _check_params(params)
    x, y = _check_xy(params, x, y)
    ks = [_check_pos_int("k", k) for k in ks]
    if len(params) < 2:
        raise ValueError("the network has no hidden layer")
    gz = _per_example_preact_grads(params, x, y)
    with torch.no_grad():
        pre = _forward_record(params, x)[2]
        out = []
        for l in range(len(params) - 1):
            M = _upstream_from(params, pre, l)
            U, S, _ = torch.linalg.svd(M, full_matrices=False)
            U = U * _svd_rank_mask(S, *M.shape[-2:])[:, None, :]
            g = gz[l]
            gn = (g * g).sum(1)
            keep = gn > 0
            coef = torch.einsum("bdr,bd->br", U, g) ** 2  # (B, r): energy along each singular direction
            for k in ks:
                kk = min(k, U.shape[-1])
                e = coef[:, :kk].sum(1)[keep] / gn[keep]
                out.append({"layer": l, "k": k, "k_used": kk, "width": int(M.shape[1]),
                            "energy": float(e.mean()) if e.numel() else float("nan"),
                            "random_energy": min(kk / M.shape[1], 1.0)})
    return out


# --------------------------------------------------------------------------------------
# peak tensor memory on any device (book chapter 14)
# --------------------------------------------------------------------------------------
class PeakMemoryMeter:
    """Context manager measuring the peak bytes of *tensors created inside it* (CPU or GPU).

    Every tensor returned by an ATen operator while the meter is active is tracked through
    its storage (views share one entry) until it is freed, so ``peak_bytes`` is the largest
    total of simultaneously live storages created inside the block — activations kept for a
    backward pass, tangents, guess matrices, gradients, temporaries. Tensors that existed
    before (parameters, inputs) are not counted. Implemented with a ``TorchDispatchMode``;
    it slows execution, so time and memory are measured in separate runs.
    """

    def __init__(self) -> None:
        self.peak_bytes = 0
        self.current_bytes = 0
        self._live: Dict[int, List[int]] = {}
        self._mode = None

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._live[key]
            self.current_bytes -= entry[0]

    def _track(self, t: Tensor) -> None:
        import weakref

        try:
            st = t.untyped_storage()
            key, n = st.data_ptr(), st.nbytes()
        except Exception:  # tensors without a real storage (e.g. functorch wrappers)
            return
        if n == 0:
            return
        if key in self._live:
            self._live[key][1] += 1
        else:
            self._live[key] = [n, 1]
            self.current_bytes += n
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        weakref.finalize(t, self._release, key)

    def __enter__(self) -> "PeakMemoryMeter":
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        meter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, Tensor):
                        meter._track(t)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._mode = None


# --------------------------------------------------------------------------------------
# training with an estimator (book chapter 14)
# --------------------------------------------------------------------------------------
#: Gradient sources accepted by :func:`train_mlp`: backpropagation plus every estimator.
TRAIN_METHODS: Tuple[str, ...] = ("backprop",) + ESTIMATORS


def gradient(name: str, params: Params, x: Tensor, y: Tensor, *, k: Optional[int] = None,
             num_guesses: int = 1, generator: Optional[torch.Generator] = None) -> Params:
    """``true_gradient`` for ``name="backprop"``, else :func:`estimate` (forward mode only)."""
    if name == "backprop":
        if k is not None:
            raise ValueError("k is only used by the upstream estimators; backprop takes k=None")
        return true_gradient(params, x, y)
    return estimate(name, params, x, y, k=k, num_guesses=num_guesses, generator=generator)


def _accuracy_and_loss(params: Params, x: Tensor, y: Tensor, batch: int = 2048) -> Tuple[float, float]:
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            logits = _forward_record(params, x[i:i + batch])[0]
            correct += int((logits.argmax(1) == y[i:i + batch]).sum())
            loss += float(F.cross_entropy(logits, y[i:i + batch], reduction="sum"))
    return correct / x.shape[0], loss / x.shape[0]


def train_mlp(
    name: str,
    dims: Sequence[int],
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    k: Optional[int] = None,
    num_guesses: int = 1,
    seed: int = 0,
    eval_every: int = 25,
    eval_train: int = 1000,
    return_params: bool = False,
) -> Dict[str, object]:
    """Train the ReLU MLP ``dims`` with Adam on gradients from ``name`` (:data:`TRAIN_METHODS`).

    Args:
        dims: ``[d_0, d_1, ..., d_L]`` (``d_0`` = flattened input size, ``d_L`` = classes).
        x_train, x_test: ``(N, d_0)`` (or ``(N, *)``) float inputs; y_train, y_test: ``(N,)`` labels.
        steps: optimiser steps; minibatches of ``batch_size`` drawn by a seeded permutation
            per epoch. lr: Adam learning rate (the same for every method; not tuned).
        k: subspace size for the upstream estimators. num_guesses: guesses per step.
        seed: seeds the initialisation, the minibatch order and the guesses.
        eval_every: evaluate every this many steps (and at step 0 and ``steps``).
        eval_train: number of training examples (fixed, first ones) used for the train loss.
        return_params: also return the trained parameters under ``"params"``.

    Returns:
        ``{"step": [...], "test_accuracy": [...], "train_loss": [...], "train_accuracy": [...],
        "cosine": [[per-layer cosine of that step's gradient to the true minibatch gradient],
        ...] (recorded at the evaluation steps > 0), "cosine_step": [...], "diverged": bool}``.
        Training stops early (``diverged=True``) if the loss becomes non-finite.
    """
    if name not in TRAIN_METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {TRAIN_METHODS}")
    steps = _check_pos_int("steps", steps)
    batch_size = _check_pos_int("batch_size", batch_size)
    eval_every = _check_pos_int("eval_every", eval_every)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    gen = torch.Generator().manual_seed(int(seed))
    params = random_mlp(list(dims), generator=gen)
    xtr, ytr = _check_xy(params, x_train, y_train)
    xte, yte = _check_xy(params, x_test, y_test)
    if name != "backprop":
        _check_k(name, params, k)
    elif k is not None:
        raise ValueError("k is only used by the upstream estimators; backprop takes k=None")
    leaves = [t for t in _flat(params)]
    opt = torch.optim.Adam(leaves, lr=lr)
    N = xtr.shape[0]
    order = torch.randperm(N, generator=gen)
    pos = 0
    rec: Dict[str, object] = {"step": [], "test_accuracy": [], "train_loss": [], "train_accuracy": [],
                              "cosine": [], "cosine_step": [], "diverged": False}

    def evaluate(step: int) -> bool:
        acc, _ = _accuracy_and_loss(params, xte, yte)
        tr_acc, tr_loss = _accuracy_and_loss(params, xtr[:eval_train], ytr[:eval_train])
        rec["step"].append(step)
        rec["test_accuracy"].append(acc)
        rec["train_loss"].append(tr_loss)
        rec["train_accuracy"].append(tr_acc)
        return math.isfinite(tr_loss)

    evaluate(0)
    for step in range(1, steps + 1):
        if pos + batch_size > N:
            order, pos = torch.randperm(N, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        xb, yb = xtr[idx], ytr[idx]
        grads = gradient(name, params, xb, yb, k=k, num_guesses=num_guesses, generator=gen)
        is_eval = step % eval_every == 0 or step == steps
        if is_eval:
            rec["cosine"].append(cosine_similarity_per_layer(grads, true_gradient(params, xb, yb)))
            rec["cosine_step"].append(step)
        for p, gr in zip(leaves, _flat(grads)):
            p.grad = gr
        opt.step()
        if is_eval and not evaluate(step):
            rec["diverged"] = True
            break
    if return_params:
        rec["params"] = params
    return rec


def estimator_quality(
    name: str,
    params: Params,
    x: Tensor,
    y: Tensor,
    num_samples: int,
    *,
    k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    chunk_size: int = 32,
) -> List[Dict[str, float]]:
    """Per-layer quality of the single-guess estimator: exact bias, Monte-Carlo variance, cosines.

    Extends :func:`bias_variance` (whose keys it keeps: ``variance``, ``mean_cosine``,
    ``true_norm``, Monte-Carlo ``bias_norm`` ...) with the *exact* bias from the closed-form
    expectation :func:`expected_estimate` ``E``:

    * ``exact_relative_bias`` ``= ||E - g|| / ||g||`` (0 for the unbiased estimators);
    * ``expectation_cosine`` ``= cos(E, g)`` (the direction a many-guess average converges to);
    * ``relative_variance`` ``= variance / ||g||^2`` (trace of the covariance, single guess);
    * ``relative_mse`` ``= exact_relative_bias^2 + relative_variance``.

    Layers are 0-based; W and b concatenated. Used by chapter 14's width/k sweep.
    """
    recs = bias_variance(name, params, x, y, num_samples, k=k, generator=generator, chunk_size=chunk_size)
    exp = expected_estimate(name, params, x, y, k=k)
    true = true_gradient(params, x, y)
    cos_e = cosine_similarity_per_layer(exp, true)
    for r, e, t, c in zip(recs, exp, true, cos_e):
        tv, ev = _layer_vec(t), _layer_vec(e)
        tn2 = float(tv @ tv)
        rb = float((ev - tv).norm()) / math.sqrt(tn2) if tn2 > 0 else float("nan")
        rv = r["variance"] / tn2 if tn2 > 0 else float("nan")
        r.update(exact_relative_bias=rb, expectation_cosine=c, relative_variance=rv, relative_mse=rb * rb + rv)
    return recs


def running_mean_error(
    name: str,
    params: Params,
    x: Tensor,
    y: Tensor,
    ns: Sequence[int],
    *,
    k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    chunk_size: int = 64,
) -> List[float]:
    """``||mean of the first n single-guess estimates - grad f|| / ||grad f||`` for each n in ``ns``.

    Whole-network vector (all layers, W and b). Draws ``max(ns)`` guesses once, so the curve is
    one realisation of the averaging: ~``sqrt(relative_variance / n)`` for an unbiased estimator,
    levelling off at the exact relative bias for a biased one (chapter 14's numerical check).
    """
    name, params, x, y, k = _prepare(name, params, x, y, k, 10, 3)
    ns = sorted(_check_pos_int("n", n) for n in ns)
    if not ns:
        raise ValueError("ns must contain at least one positive int")
    _check_pos_int("chunk_size", chunk_size)
    tv = torch.cat([_layer_vec(t) for t in true_gradient(params, x, y)])
    total = torch.zeros_like(tv)
    out, done, j = [], 0, 0
    for chunk in _sample_chunks(name, params, x, y, ns[-1], k, generator, 10, 3, chunk_size):
        V = torch.cat([t.reshape(t.shape[0], -1) for W, b in chunk for t in (W, b) if t is not None], 1)
        for row in V:
            total += row
            done += 1
            while j < len(ns) and ns[j] == done:
                out.append(float((total / done - tv).norm() / tv.norm()))
                j += 1
    return out
