"""What the estimators are measured against: the true gradient, each estimator's expectation,
cosine similarity, bias and variance, the spectra of the true gradient, peak tensor memory, and
the estimator-quality measurements chapter 14 runs (:func:`estimator_quality`,
:func:`running_mean_error`)."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from .validation import (
    Layer,
    Params,
    K_METHODS,
    check_name,
    check_params,
    check_pos_int,
    check_xy,
    max_k,
)
from .mlp import (
    flatten_params,
    forward_record,
    unflatten_params,
    random_mlp,
)
from .estimators import (
    check_same_structure,
    generators,
    prepare,
    sample_chunks,
    svd_rank_mask,
    upstream_from,
)


# --------------------------------------------------------------------------------------
# references (reverse mode allowed here)
# --------------------------------------------------------------------------------------
def true_gradient(params: Params, x: Tensor, y: Tensor) -> Params:
    """Exact gradient of the mean cross-entropy by backpropagation (the reference)."""
    params = check_params(params)
    x, y = check_xy(params, x, y)
    flat = [t.detach().clone().requires_grad_(True) for t in flatten_params(params)]
    with torch.enable_grad():
        loss = F.cross_entropy(forward_record(unflatten_params(params, flat), x)[0], y)
        grads = torch.autograd.grad(loss, flat)
    return unflatten_params(params, [g.detach() for g in grads])


def per_example_preact_grads(params: Params, x: Tensor, y: Tensor) -> List[Tensor]:
    """Reference ``g_{l,b} = d ell_b / d z_{l,b}`` for every layer, shape (B, d_l) (autograd)."""
    deltas = {
        l: torch.zeros(x.shape[0], W.shape[0], dtype=x.dtype, device=x.device, requires_grad=True)
        for l, (W, _) in enumerate(params)
    }
    with torch.enable_grad():
        logits = forward_record([(W.detach(), None if b is None else b.detach()) for W, b in params], x, deltas)[0]
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
    name, params, x, y, k = prepare(name, params, x, y, k, ns_iters, power_iters)
    if name == "weight":
        return true_gradient(params, x, y)
    gz = per_example_preact_grads(params, x, y)
    with torch.no_grad():
        _, inputs, pre = forward_record(params, x)
        out: Params = []
        B = x.shape[0]
        for l, (W, b) in enumerate(params):
            A, Ahat = generators(name, params, pre, l, k, ns_iters, power_iters)
            g = gz[l]
            if A is not None:
                g = torch.einsum("bdr,bcr,bc->bd", Ahat, A, g)
            out.append((g.T @ inputs[l] / B, None if b is None else g.mean(0)))
    return out


# --------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------
def layer_vec(layer: Layer) -> Tensor:
    W, b = layer
    return W.reshape(-1) if b is None else torch.cat([W.reshape(-1), b.reshape(-1)])


def cosine_similarity_per_layer(estimate: Params, true: Params) -> List[float]:
    """Cosine between estimate and true gradient for each layer (W and b concatenated).

    Returns 0.0 for a layer where either vector is exactly zero. Raises ``ValueError`` if the
    two structures (number of layers, bias presence, shapes) differ.
    """
    true = check_params(true)
    check_same_structure(estimate, true, "estimate")
    out = []
    for e, t in zip(estimate, true):
        tv = layer_vec(t)
        ev = layer_vec(e).to(tv.dtype)
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
    name, params, x, y, k = prepare(name, params, x, y, k, ns_iters, power_iters)
    n = check_pos_int("num_samples", num_samples)
    if n < 2:
        raise ValueError("num_samples must be at least 2 to estimate a variance")
    check_pos_int("chunk_size", chunk_size)
    true = true_gradient(params, x, y)
    tvecs = [layer_vec(t) for t in true]
    L = len(params)
    s1 = [torch.zeros_like(t) for t in tvecs]
    s2 = [torch.zeros_like(t) for t in tvecs]
    cos = [0.0] * L
    ref = tvecs[0]
    for chunk in sample_chunks(name, params, x, y, n, k, generator, ns_iters, power_iters, chunk_size):
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
        check_name(nm)
    records: List[Dict[str, object]] = []
    for w in widths:
        check_pos_int("width", w)
        gen = torch.Generator().manual_seed(seed)
        params = random_mlp([in_features] + [w] * depth + [num_classes], generator=gen, dtype=dtype)
        x = torch.randn(batch_size, in_features, generator=gen, dtype=dtype)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen)
        for nm in names:
            for kk in (ks if nm in K_METHODS else (None,)):
                if kk is not None and kk > (max_k(params) or kk):
                    continue
                g2 = torch.Generator().manual_seed(seed + 1)
                for rec in bias_variance(nm, params, x, y, num_samples, k=kk, generator=g2):
                    records.append({"name": nm, "width": w, "k": kk, **rec})
                if nm not in K_METHODS:
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
    params = check_params(params)
    x, y = check_xy(params, x, y)
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
    params = check_params(params)
    x, y = check_xy(params, x, y)
    ks = [check_pos_int("k", k) for k in ks]
    if len(params) < 2:
        raise ValueError("the network has no hidden layer")
    gz = per_example_preact_grads(params, x, y)
    with torch.no_grad():
        pre = forward_record(params, x)[2]
        out = []
        for l in range(len(params) - 1):
            M = upstream_from(params, pre, l)
            U, S, _ = torch.linalg.svd(M, full_matrices=False)
            U = U * svd_rank_mask(S, *M.shape[-2:])[:, None, :]
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
        tv, ev = layer_vec(t), layer_vec(e)
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
    name, params, x, y, k = prepare(name, params, x, y, k, 10, 3)
    ns = sorted(check_pos_int("n", n) for n in ns)
    if not ns:
        raise ValueError("ns must contain at least one positive int")
    check_pos_int("chunk_size", chunk_size)
    tv = torch.cat([layer_vec(t) for t in true_gradient(params, x, y)])
    total = torch.zeros_like(tv)
    out, done, j = [], 0, 0
    for chunk in sample_chunks(name, params, x, y, ns[-1], k, generator, 10, 3, chunk_size):
        V = torch.cat([t.reshape(t.shape[0], -1) for W, b in chunk for t in (W, b) if t is not None], 1)
        for row in V:
            total += row
            done += 1
            while j < len(ns) and ns[j] == done:
                out.append(float((total / done - tv).norm() / tv.norm()))
                j += 1
    return out
