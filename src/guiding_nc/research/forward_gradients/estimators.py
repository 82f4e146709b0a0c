"""The forward-mode gradient estimators: directional derivatives (one JVP per guess), the guess
generators (weight and activation perturbation, W^T, the upstream Jacobian and its
Newton–Schulz / preconditioned variants) and the sampled estimate."""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from ...core.forward_mode import jvp
from ...core.newton_schulz import newton_schulz_steps
from .validation import (
    NS_SKETCH_SEED,
    Params,
    check_k,
    check_name,
    check_params,
    check_pos_int,
    check_x,
    check_xy,
)
from .mlp import (
    flatten_params,
    forward_record,
    unflatten_params,
)


# --------------------------------------------------------------------------------------
# directional derivatives (forward mode)
# --------------------------------------------------------------------------------------
def directional_derivative_weights(params: Params, x: Tensor, y: Tensor, v: Params) -> Tensor:
    """``grad f . v`` (scalar) by one ``torch.func.jvp``; ``v`` has the structure of ``params``."""
    params = check_params(params)
    x, y = check_xy(params, x, y)
    check_same_structure(v, params, "v")

    def f(*flat):
        logits = forward_record(unflatten_params(params, flat), x)[0]
        return F.cross_entropy(logits, y)

    return jvp(f, flatten_params(params), flatten_params(v))[1]


def directional_derivative_activations(
    params: Params, x: Tensor, y: Tensor, layer: int, u: Tensor
) -> Tensor:
    """Per-example ``d ell_b / d z_{layer,b} . u_b`` (shape ``(B,)``) by one ``torch.func.jvp``.

    ``u`` has shape ``(B, d_layer)`` (one tangent per example); a leading guess dimension
    ``(G, B, d_layer)`` is also accepted (vectorised with ``vmap``, one JVP per guess).
    """
    params = check_params(params)
    x, y = check_xy(params, x, y)
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
        logits = forward_record(params, xr, {layer: delta})[0]
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
    primals = tuple(t.unsqueeze(0).expand(G, *t.shape).clone() for t in flatten_params(params))

    def f(*flat):
        h = x.unsqueeze(0).expand(G, *x.shape)  # (G, B, d0)
        layers = unflatten_params(params, flat)
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


def check_same_structure(a, ref: Params, what: str) -> None:
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


def upstream_matrix(params: Params, x: Tensor, layer: int) -> Tensor:
    """Transposed, ReLU-masked upstream Jacobian ``M_{l,b} = diag(m_{l,b}) W_{l+1}^T``.

    Shape ``(B, d_l, d_{l+1})``; ``M_{l,b}^T = d z_{l+1,b} / d z_{l,b}``. Only defined for
    hidden layers ``0 <= layer < L-1``.
    """
    params = check_params(params)
    x = check_x(params, x)
    layer = _check_layer(params, layer)
    if layer == len(params) - 1:
        raise ValueError("the last (logit) layer has no upstream weight")
    with torch.no_grad():
        pre = forward_record(params, x)[2]
    return upstream_from(params, pre, layer)


def upstream_from(params: Params, pre: List[Tensor], layer: int) -> Tensor:
    mask = (pre[layer] > 0).to(pre[layer].dtype)  # (B, d_l)
    return mask[:, :, None] * params[layer + 1][0].T[None]


def svd_rank_mask(S: Tensor, m: int, n: int) -> Tensor:
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
    params = check_params(params)
    x = check_x(params, x)
    name = check_name(name)
    if name == "weight":
        raise ValueError("weight perturbation has no activation-space guess generator")
    k = check_k(name, params, k)
    layer = _check_layer(params, layer)
    check_pos_int("ns_iters", ns_iters)
    check_pos_int("power_iters", power_iters)
    with torch.no_grad():
        pre = forward_record(params, x)[2]
        return generators(name, params, pre, layer, k, ns_iters, power_iters)


def generators(name, params, pre, layer, k, ns_iters, power_iters):
    if name == "activation" or layer == len(params) - 1:
        return None, None
    if name == "upstream_ns" and k is not None:
        return _ns_topk_matrix_free(params, pre, layer, k, ns_iters, power_iters)
    M = upstream_from(params, pre, layer)  # (B, d_l, d_{l+1})
    if name == "wt":
        return M, M
    d_l, d_n = M.shape[-2:]
    if k is not None:
        k = min(k, d_l, d_n)  # per-layer clip to the rank bound of M
    if name in ("upstream", "upstream_precond"):
        U, S, _ = torch.linalg.svd(M, full_matrices=False)  # U (B, d_l, r), S (B, r)
        keep = svd_rank_mask(S, d_l, d_n)
        if k is not None:
            U, S, keep = U[..., :k], S[..., :k], keep[..., :k]
        if name == "upstream":
            A = U * keep[:, None, :]
            return A, A
        S_safe = torch.where(keep > 0, S, torch.ones_like(S))
        return U * (S * keep)[:, None, :], U * (keep / S_safe)[:, None, :]
    # upstream_ns, k=None: approximate polar factor of the whole M
    Q = newton_schulz_steps(M, ns_iters)
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
        Z = W_next @ (mask * newton_schulz_steps(Y, ns_iters))  # (B, d_{l+1}, k) = M^T NS(Y)
        Y = mask * (W_next.T @ Z)  # M Z
    Q = newton_schulz_steps(Y, ns_iters)
    return Q, Q


# --------------------------------------------------------------------------------------
# sampling of single-guess estimates
# --------------------------------------------------------------------------------------
def _randn(shape, like: Tensor, generator):
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)


def prepare(name, params, x, y, k, ns_iters, power_iters):
    params = check_params(params)
    x, y = check_xy(params, x, y)
    name = check_name(name)
    k = check_k(name, params, k)
    check_pos_int("ns_iters", ns_iters)
    check_pos_int("power_iters", power_iters)
    return name, params, x, y, k


def sample_chunks(
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
            flat = flatten_params(params)
            done = 0
            while done < n:
                g = min(chunk_size, n - done)
                V = tuple(_randn((g, *t.shape), t, generator) for t in flat)
                s = _weights_jvp(params, x, y, V)  # (g,)
                est = [v * s.view(-1, *([1] * (v.dim() - 1))) for v in V]
                yield unflatten_params(params, est)
                done += g
            return
        _, inputs, pre = forward_record(params, x)
        wt_free = name == "wt"  # W^T guess applied matrix-free: u = m * (eps W_{l+1})
        gens = [(None, None) if wt_free else generators(name, params, pre, l, k, ns_iters, power_iters)
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
    name, params, x, y, k = prepare(name, params, x, y, k, ns_iters, power_iters)
    layer = _check_layer(params, layer)
    check_pos_int("num_guesses", num_guesses)
    with torch.no_grad():
        if name == "weight":
            flat = flatten_params(params)
            V = tuple(_randn((num_guesses, *t.shape), t, generator) for t in flat)
            return {"tangent": unflatten_params(params, V), "directional_derivative": _weights_jvp(params, x, y, V)}
        pre = forward_record(params, x)[2]
        A, _ = generators(name, params, pre, layer, k, ns_iters, power_iters)
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
    name, params, x, y, k = prepare(name, params, x, y, k, ns_iters, power_iters)
    check_pos_int("num_guesses", num_guesses)
    check_pos_int("chunk_size", chunk_size)
    total: Optional[List[List[Optional[Tensor]]]] = None
    for chunk in sample_chunks(name, params, x, y, num_guesses, k, generator, ns_iters, power_iters, chunk_size):
        sums = [[None if t is None else t.sum(0) for t in layer] for layer in chunk]
        if total is None:
            total = sums
        else:
            for tl, sl in zip(total, sums):
                for j in range(2):
                    if tl[j] is not None:
                        tl[j] = tl[j] + sl[j]
    return [(W / num_guesses, None if b is None else b / num_guesses) for W, b in total]
