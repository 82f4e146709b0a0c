"""Classifier heads for the three (five) training methods of the paper (§3.4-3.5, §4).

Every head maps backbone features ``(B, d)`` to logits ``(B, C)``::

    logits = head(features, labels)          # labels only needed by the implicit head in training

and exposes the classifier it currently uses as ``head.weight`` ``(C, d)`` and
``head.bias`` ``(C,)`` or ``None`` (detached views, for the metrics), plus
``head.transform(features)``: the features the classifier actually sees (projected
onto the unit sphere for every method except ``standard-no-norm``).

Methods (``build_head(method, ...)``):

``standard``          learned ``W`` (C, d); rows re-projected to unit norm after every
                      optimiser step (:meth:`LinearHead.renormalize_`).
``standard-no-norm``  learned ``W`` without weight *or* feature normalisation and
                      without temperature (``tau = 1``, paper Fig. 17).
``fixed``             ``W = etf_classifier([I_C; 0])``, the canonical simplex ETF.
``fixed-random``      ``W = etf_classifier(U)`` with a Haar-random ``U`` (seeded).
``fixed-uncentred``   the canonical fixed ETF *without* the centring by ``h_G`` (``logits =
                      tau W h``): kept only to measure what the centring changes.
``implicit``          ``W = etf_classifier(U*)`` with ``U*`` the nearest simplex ETF to the
                      EMA of the centred, normalised class means (Eq. 7-9), recomputed
                      every training step.

**One switch.** Every method (but ``fixed-uncentred``) computes its logits the same way,
the paper's Eq. 8::

    logits = tau (W (h - h_G) + b_learned)      h = features on the unit sphere

with ``h_G`` the running global mean of the normalised features, updated at every training
step by the EMA of Eq. 9 (:class:`GlobalMeanEMA`; gradients flow into the batch's features
through the new term, as in the implicit head).  The methods differ in ``W`` only.  (The
paper writes the centring for its own method, ``b = -W h_G``; applying it to the two baselines
too is what makes the comparison one switch -- see the book's chapter on real images.)

**The code release's choices.** How a head picks ``h_G`` is its ``centring``
(:data:`CENTRINGS`, one class each: :class:`GlobalMeanEMA`, :class:`BatchMean`,
:class:`DetachedBatchMean`, or none); :mod:`guiding_nc.training.protocol` names the choices of the
paper's released code (``protocol: paper``) beside the one-switch protocol above.

The implicit head's class-mean bookkeeping lives in :class:`ClassMeanEMA`; its
rules for classes missing from a batch are documented there.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from .distributed import is_distributed
from .etf import canonical_point, etf_classifier, random_point
from .methods import METHOD_NAMES as _METHOD_NAMES
from .methods import METHODS
from .nearest import BACKWARDS, SOLVERS, NearestETF

__all__ = [
    "METHOD_NAMES",
    "HEAD_REVISIONS",
    "normalize_features",
    "ema_alpha",
    "GlobalMeanEMA",
    "BatchMean",
    "DetachedBatchMean",
    "CENTRINGS",
    "CLASS_MEAN_RULES",
    "build_centring",
    "ClassMeanEMA",
    "LinearHead",
    "FixedETFHead",
    "ImplicitETFHead",
    "build_head",
]

# Names and revisions live in the one registry of methods.
METHOD_NAMES = _METHOD_NAMES
HEAD_REVISIONS = {name: m.revision for name, m in METHODS.items()}


class _SphereProjection(torch.autograd.Function):
    """``u = h / max(||h||, eps)`` row-wise, with the projected gradient as its backward.

    The backward is ``(g - u (u . g)) / ||h||`` (rows with ``||h|| <= eps`` get ``g / eps``): four
    passes over a (B, d) array where autograd's broadcasting division takes about ten.  At the
    paper's UFM sizes these element-wise passes, not the matrix products, dominate a CPU step.
    The backward is written in differentiable operations, so double backward works too.
    """

    @staticmethod
    def forward(ctx, features: Tensor, eps: float) -> Tensor:
        norm = torch.linalg.vector_norm(features, dim=1, keepdim=True).clamp_min_(eps)
        u = features / norm
        ctx.eps = eps
        ctx.save_for_backward(features, u)
        return u

    @staticmethod
    def backward(ctx, grad: Tensor):
        features, u = ctx.saved_tensors
        norm = torch.linalg.vector_norm(features, dim=1, keepdim=True)
        radial = torch.linalg.vecdot(u, grad, dim=1).unsqueeze(1) * (norm > ctx.eps)
        return torch.addcmul(grad, u, radial, value=-1.0) / norm.clamp_min(ctx.eps), None


def normalize_features(features: Tensor, eps: float = 1e-12) -> Tensor:
    """Project each row of ``features`` (B, d) onto the unit sphere (``eps`` guards zero rows).

    Same values and gradients as ``features / ||features||.clamp_min(eps)``, with a cheaper
    backward (:class:`_SphereProjection`).
    """
    if features.dim() != 2:
        raise ValueError(f"features must have shape (B, d), got {tuple(features.shape)}")
    return _SphereProjection.apply(features, float(eps))


def ema_alpha(t, floor: float = 1e-4):
    """Smoothing factor of Eq. 9 at update number ``t >= 1``: ``max(2 / (t + 1), floor)``.

    Works on Python numbers and on tensors (elementwise).  ``t = 1`` gives ``alpha = 1``:
    the first estimate is the batch estimate itself, so no initial value is needed.
    """
    if isinstance(t, Tensor):
        return (2.0 / (t.to(torch.float64) + 1.0)).clamp_min(floor)
    return max(2.0 / (t + 1.0), floor)


def ema_blend(batch: Tensor, running: Tensor, alpha: Tensor) -> Tensor:
    """``alpha * batch + (1 - alpha) * running``: one step of the EMA of Eq. 9."""
    return alpha * batch + (1.0 - alpha) * running


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks.

    With ``L = (1/R) sum_r L_r`` (what DDP's gradient averaging optimises) and ``S = sum_r S_r``,
    ``dL_r/dS_q`` collects every rank's upstream gradient, i.e. an all-reduce of the gradients.
    (Written here rather than using ``torch.distributed.nn.functional.all_reduce``, which is
    deprecated in recent PyTorch, so the behaviour does not depend on the version.)
    """

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def _all_reduce_sum(x: Tensor, differentiable: bool) -> Tensor:
    """Sum ``x`` over all ranks (identity when not distributed).

    With ``differentiable=True`` the backward all-reduces the incoming gradient, so every
    rank's features receive the gradient of the *global* objective through the shared
    class means.
    """
    if not is_distributed():
        return x
    import torch.distributed as dist

    if differentiable and x.requires_grad:
        return _AllReduceSum.apply(x)
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


# ---------------------------------------------------------------------------------- EMA
class ClassMeanEMA(nn.Module):
    """Exponential moving average of the centred, normalised class-mean matrix (Eq. 9).

    State (buffers, so it is checkpointed by ``state_dict`` and moves with ``.to``):

    * ``means`` ``(d, C)``: the running ``H_t``;
    * ``global_mean`` ``(d,)``: running EMA of the (uncentred) feature global mean ``h_G``,
      used for the bias ``b = -W h_G``;
    * ``step`` ``()``: number of updates ``t`` so far;
    * ``class_updates`` ``(C,)``: number of updates in which each class was present.

    One update with a batch ``(features (B, d), labels (B,))``:

    1. per-class sums ``S`` (C, d) and counts ``n`` (C,) -- all-reduced over ranks under
       ``torch.distributed`` (sums through the differentiable all-reduce) so every rank
       sees the global batch and computes the same ``H_t`` and hence the same ``U*``;
    2. batch global mean ``h_G = sum(S) / sum(n)`` (the sample mean, Eq. 4) and the centred
       batch class means ``hbar_c - h_G`` for the ``k`` classes present;
    3. these ``k`` columns are scaled to Frobenius norm ``sqrt(k / C)`` -- exactly the
       paper's unit-Frobenius normalisation (Eq. 5) when every class is present (k = C),
       and the same per-column scale when some are missing;
    4. ``H_t[:, c] = alpha_c Hbatch[:, c] + (1 - alpha_c) H_{t-1}[:, c]`` for each *present*
       class with ``alpha_c = max(2 / (t_c + 1), floor)``, ``t_c`` = the number of batches
       in which class ``c`` has appeared (this one included).  With stratified batches
       containing every class ``t_c = t`` and this is exactly Eq. 9 with ``alpha_t = 2/(t+1)``.

    Classes absent from the batch (only possible when ``C`` > batch size or without
    stratified sampling) -- the rule chosen here:

    * a class seen before keeps its running column unchanged (no decay towards anything);
    * a class never seen yet has the zero column, i.e. its mean is taken to be the batch
      global mean -- the paper's rule (§3.5) but *centred*, so no column is ever an
      uncentred mean and nothing is ever NaN (a division by a zero count cannot occur:
      counts are clamped and the column masked).  The first batch that contains it
      replaces the zero column outright (``t_c = 1`` gives ``alpha = 1``).

    ``class_means`` says where the unit-Frobenius scaling of step 3 happens
    (:data:`CLASS_MEAN_RULES`):

    * ``"normalised_batches"`` (this project's, above): every batch matrix is scaled before it is
      averaged, so ``H_t`` is an average of unit-norm matrices;
    * ``"normalised_average"`` (the code release's): the *unscaled* centred batch means are
      averaged (``means`` holds that running average) and the average is scaled to unit
      Frobenius norm when it is used, ``H_t = A_t / ||A_t||_F``.

    Gradients flow from ``H_t`` and ``h_G`` into the current batch features through the
    ``alpha`` term (the old state is a detached buffer), which is what the DDN gradient
    path of Fig. 1 needs.  All arithmetic runs in ``dtype`` (float32 by default, float64
    allowed) whatever the feature dtype, and outside autocast.
    """

    def __init__(self, dim: int, num_classes: int, *, floor: float = 1e-4, dtype: torch.dtype = torch.float32,
                 eps: float = 1e-12, class_means: str = "normalised_batches"):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"ClassMeanEMA needs at least 2 classes, got {num_classes}")
        if not (0.0 < floor <= 1.0):
            raise ValueError(f"the EMA floor must lie in (0, 1], got {floor}")
        if class_means not in CLASS_MEAN_RULES:
            raise ValueError(f"class_means must be one of {', '.join(CLASS_MEAN_RULES)}, got {class_means!r}")
        self.class_means = class_means
        self.dim, self.num_classes, self.floor, self.eps = int(dim), int(num_classes), float(floor), float(eps)
        self.dtype = dtype
        self.register_buffer("means", torch.zeros(dim, num_classes, dtype=dtype))
        self.register_buffer("global_mean", torch.zeros(dim, dtype=dtype))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("class_updates", torch.zeros(num_classes, dtype=torch.int64))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_classes={self.num_classes}, floor={self.floor}, dtype={self.dtype}, "
                f"class_means={self.class_means}")

    def batch_statistics(self, features: Tensor, labels: Tensor, *, differentiable: bool = True):
        """Per-class sums ``(C, d)`` and counts ``(C,)`` of the (global, all-reduced) batch."""
        h = features.to(self.dtype)
        y = labels.to(device=h.device, dtype=torch.int64)
        if h.device.type == "cpu":
            # Scatter-add: O(B d), deterministic on the CPU, differentiable.
            sums = torch.zeros(self.num_classes, h.shape[1], dtype=h.dtype, device=h.device).index_add(0, y, h)
            counts = torch.zeros(self.num_classes, dtype=h.dtype, device=h.device).index_add(
                0, y, torch.ones_like(y, dtype=h.dtype))
        else:
            # On accelerators a (B, C) membership mask and a matmul: deterministic (no atomics),
            # differentiable and free of the host syncs that bincount / one_hot perform.
            mask = (y.unsqueeze(1) == torch.arange(self.num_classes, device=h.device).unsqueeze(0)).to(h.dtype)
            sums = mask.T @ h
            counts = mask.sum(0)
        sums = _all_reduce_sum(sums, differentiable)
        counts = _all_reduce_sum(counts, False)
        return sums, counts

    def batch_matrix(self, sums: Tensor, counts: Tensor, *, normalise: bool = True):
        """The centred batch matrix ``(d, C)`` (zero columns for absent classes), normalised as
        step 3 says unless ``normalise=False``, the batch global mean ``(d,)`` and the presence
        mask ``(C,)``."""
        present = counts > 0
        h_g = sums.sum(0) / counts.sum().clamp_min(1.0)
        means = sums / counts.clamp_min(1.0).unsqueeze(1)
        centred = (means - h_g) * present.unsqueeze(1).to(means.dtype)  # (C, d)
        if not normalise:
            return centred.T, h_g, present
        k = present.sum().to(means.dtype)
        norm = torch.linalg.vector_norm(centred).clamp_min(self.eps)
        Hb = (centred * (torch.sqrt(k / self.num_classes) / norm)).T  # (d, C)
        return Hb, h_g, present

    def update(self, features: Tensor, labels: Tensor, *, differentiable: bool = True,
               with_batch_mean: bool = False):
        """One Eq.-9 update; returns ``(H_t (d, C), h_G (d,))`` carrying gradients to ``features``,
        and with ``with_batch_mean`` the batch's own global mean ``(d,)`` third (with gradient)."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be (B, {self.dim}), got {tuple(features.shape)}")
        sums, counts = self.batch_statistics(features, labels, differentiable=differentiable)
        average_first = self.class_means == "normalised_average"
        Hb, h_g_batch, present = self.batch_matrix(sums, counts, normalise=not average_first)
        t = self.step + 1
        t_c = self.class_updates + present.to(torch.int64)
        a_c = torch.where(present, ema_alpha(t_c, self.floor), torch.zeros((), dtype=torch.float64,
                                                                           device=t_c.device)).to(Hb.dtype)
        a_g = ema_alpha(t, self.floor).to(Hb.dtype)
        H = ema_blend(Hb, self.means, a_c)
        h_g = ema_blend(h_g_batch, self.global_mean, a_g)
        with torch.no_grad():
            self.means.copy_(H.detach())
            self.global_mean.copy_(h_g.detach())
            self.step.copy_(t)
            self.class_updates.copy_(t_c)
        if average_first:
            H = H / torch.linalg.matrix_norm(H).clamp_min(self.eps)
        return (H, h_g, h_g_batch) if with_batch_mean else (H, h_g)

    @property
    def matrix(self) -> Tensor:
        """The current ``H_t`` ``(d, C)`` (detached): ``means``, scaled to unit norm under
        ``"normalised_average"``."""
        if self.class_means == "normalised_average":
            return self.means / torch.linalg.matrix_norm(self.means).clamp_min(self.eps)
        return self.means

    def reset(self) -> None:
        self.means.zero_()
        self.global_mean.zero_()
        self.step.zero_()
        self.class_updates.zero_()


class GlobalMeanEMA(nn.Module):
    """The running global mean ``h_G`` ``(d,)`` of the features every head centres by (Eq. 8-9).

    One update with a batch ``h (B, d)``: the batch mean (summed and counted over ranks under
    ``torch.distributed``, the sum through the differentiable all-reduce) blended into the
    running mean with ``alpha_t = max(2 / (t + 1), floor)``; ``t = 1`` takes the batch mean
    itself.  The returned mean carries gradients to ``h`` through the ``alpha_t`` term, exactly
    like the ``h_G`` of :class:`ClassMeanEMA`, which the implicit head uses instead (it needs the
    per-class sums anyway); the two agree to rounding on the same batches (a test checks it).
    """

    def __init__(self, dim: int, *, floor: float = 1e-4, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not (0.0 < floor <= 1.0):
            raise ValueError(f"the EMA floor must lie in (0, 1], got {floor}")
        self.dim, self.floor, self.dtype = int(dim), float(floor), dtype
        self.register_buffer("global_mean", torch.zeros(dim, dtype=dtype))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, floor={self.floor}, dtype={self.dtype}"

    def update(self, h: Tensor) -> Tensor:
        """One Eq.-9 update with the batch ``h`` ``(B, d)``; returns the new ``h_G`` ``(d,)``."""
        h = h.to(self.dtype)
        total = _all_reduce_sum(h.sum(0), True)
        count = _all_reduce_sum(torch.full((), float(h.shape[0]), dtype=h.dtype, device=h.device), False)
        t = self.step + 1
        h_g = ema_blend(total / count, self.global_mean, ema_alpha(t, self.floor).to(h.dtype))
        with torch.no_grad():
            self.global_mean.copy_(h_g.detach())
            self.step.copy_(t)
        return h_g

    def reset(self) -> None:
        self.global_mean.zero_()
        self.step.zero_()

    def for_eval(self, h: Tensor) -> Tensor:
        """``h_G`` for logits outside a training step: the stored running mean."""
        return self.global_mean


class BatchMean(nn.Module):
    """``h_G`` = the current training batch's mean feature, **with** gradient; outside training
    the mean of the last training batch (centring ``"batch"``).

    The code release's implicit ETF: its bias is ``b = -W mu_G`` with ``mu_G`` the mean of the
    batch it is trained on (not averaged over steps), kept for evaluation.  Under
    ``torch.distributed`` the mean is over the global batch (sum through the differentiable
    all-reduce).
    """

    detached = False

    def __init__(self, dim: int, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.dim, self.dtype = int(dim), dtype
        self.register_buffer("global_mean", torch.zeros(dim, dtype=dtype))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dtype={self.dtype}"

    def batch_mean(self, h: Tensor) -> Tensor:
        """The mean of ``h`` ``(B, d)`` over the (global) batch, ``(d,)``."""
        h = h.to(self.dtype)
        total = _all_reduce_sum(h.sum(0), not self.detached)
        count = _all_reduce_sum(torch.full((), float(h.shape[0]), dtype=h.dtype, device=h.device), False)
        return total / count

    def update(self, h: Tensor) -> Tensor:
        """``h_G`` for the training batch ``h`` ``(B, d)``; stored for evaluation."""
        return self.use(self.batch_mean(h))

    def use(self, h_g: Tensor) -> Tensor:
        """Store (and return) a batch mean ``h_g`` ``(d,)`` computed elsewhere (the implicit head's
        :class:`ClassMeanEMA` has it already)."""
        if self.detached:
            h_g = h_g.detach()
        with torch.no_grad():
            self.global_mean.copy_(h_g.detach())
        return h_g

    def for_eval(self, h: Tensor) -> Tensor:
        """``h_G`` outside a training step: the last training batch's mean."""
        return self.global_mean

    def reset(self) -> None:
        self.global_mean.zero_()


class DetachedBatchMean(BatchMean):
    """``h_G`` = the mean of whatever batch the head is given, in training **and** evaluation
    alike, **without** gradient (centring ``"batch_detached"``).

    The code release's fixed ETF: it resets its frozen bias to ``-W mean(h)`` on every forward
    pass, evaluation batches included, through ``.data`` (so no gradient flows into the mean).
    Evaluation results therefore depend on how the evaluated set is batched; the trainer
    evaluates in batches of ``eval_batch_size``, by default the training batch size, as the code
    release does.
    """

    detached = True

    def for_eval(self, h: Tensor) -> Tensor:
        """``h_G`` outside a training step: the mean of the batch ``h`` itself."""
        with torch.no_grad():
            return self.batch_mean(h)


#: How a head centres its features, ``logits = tau (W (h - h_G) + b)``: the choice of ``h_G``
#: (Eq. 8), one class each (:func:`build_centring`).
CENTRINGS = ("running", "batch", "batch_detached", "none")
#: Where the implicit head's class-mean matrix is scaled to unit norm (:class:`ClassMeanEMA`).
CLASS_MEAN_RULES = ("normalised_batches", "normalised_average")


def build_centring(centring: str, dim: int, *, floor: float = 1e-4, dtype: torch.dtype = torch.float32):
    """The module that gives a head its ``h_G`` for ``centring`` (:data:`CENTRINGS`), or ``None``:

    * ``"running"`` -- :class:`GlobalMeanEMA`, the running mean of Eq. 9 (this project's
      one-switch protocol, every head alike);
    * ``"batch"`` -- :class:`BatchMean` (the code release's implicit ETF);
    * ``"batch_detached"`` -- :class:`DetachedBatchMean` (the code release's fixed ETF);
    * ``"none"`` -- no centring and no bias, ``logits = tau W h`` (the code release's standard
      classifier: its scripts pass the no-bias flag).
    """
    if centring not in CENTRINGS:
        raise ValueError(f"centring must be one of {', '.join(CENTRINGS)}, got {centring!r}")
    if centring == "none":
        return None
    if centring == "running":
        return GlobalMeanEMA(dim, floor=floor, dtype=dtype)
    return (BatchMean if centring == "batch" else DetachedBatchMean)(dim, dtype=dtype)


# -------------------------------------------------------------------------------- heads
class _Head(nn.Module):
    """What every head shares: feature normalisation, the temperature and the logits
    ``tau (W (h - h_G) + b_learned)``.

    A subclass provides ``weight`` (C, d), ``learned_bias`` ((C,) or ``None``) and
    ``global_mean`` (``h_G``, or ``None`` for no centring), and calls :meth:`centred_logits`.
    """

    def __init__(self, feature_dim: int, num_classes: int, tau: float, normalize: bool):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier head needs at least 2 classes, got {num_classes}")
        self.feature_dim, self.num_classes = int(feature_dim), int(num_classes)
        self.tau, self.normalize = float(tau), bool(normalize)
        self.centring: Optional[GlobalMeanEMA] = None  # a subclass that centres sets it

    learned_bias: Optional[Tensor] = None

    @property
    def global_mean(self) -> Optional[Tensor]:
        """The running ``h_G`` (d,) the logits are centred by, or ``None`` (no centring)."""
        return None if self.centring is None else self.centring.global_mean

    def update_centre(self, h: Tensor, labels: Optional[Tensor]) -> Optional[Tensor]:
        """``h_G`` for the logits of the batch ``h``: updated by it in a training step (training
        mode with labels, as the implicit head's class means are), the centring's evaluation
        value otherwise (:func:`build_centring`)."""
        if self.centring is None:
            return None
        if self.training and labels is not None:
            return self.centring.update(h)
        return self.centring.for_eval(h)

    @property
    def bias(self) -> Optional[Tensor]:
        """The effective bias ``b_learned - W h_G`` (C,) of the current classifier, or ``None``."""
        h_g = self.global_mean
        b = self.learned_bias
        if h_g is None:
            return b
        shift = -(self.weight @ h_g.to(self.weight.dtype))
        return shift if b is None else shift + b.to(shift.dtype)

    def centred_logits(self, h: Tensor, W: Tensor, h_g: Optional[Tensor], b: Optional[Tensor] = None) -> Tensor:
        """``tau (h W^T - W h_G + b)`` for features ``h`` (B, d), in ``h``'s dtype.

        The centring goes through the (C,) bias ``W h_G``, which avoids a (B, d) subtraction
        and its backward.
        """
        W = W.to(h.dtype)
        out = h @ W.T
        if h_g is not None:
            out = out - W @ h_g.to(h.dtype)
        if b is not None:
            out = out + b.to(out.dtype)
        return self.tau * out

    def transform(self, features: Tensor) -> Tensor:
        """The features the classifier sees: on the unit sphere unless normalisation is off.

        Half-precision features (AMP) are normalised in float32.
        """
        if not self.normalize:
            return features
        if features.dtype in (torch.float16, torch.bfloat16):
            features = features.float()
        return normalize_features(features)

    def logits_from(self, h: Tensor) -> Tensor:
        """Logits of already-transformed features ``h`` (B, d) with the current classifier (no
        state change); ``h_G`` is the centring's evaluation value for this batch."""
        return self.centred_logits(h, self.weight, self.eval_centre(h), self.learned_bias)

    def eval_centre(self, h: Tensor) -> Optional[Tensor]:
        """``h_G`` for logits of ``h`` (B, d) outside a training step (no state change)."""
        return None if self.centring is None else self.centring.for_eval(h)

    # Optional instrumentation set by the trainer: an object with ``start(name)``/``stop(name)`` and
    # ``backward_hooks(U, H)`` (only the implicit head has something to time).
    timer = None

    def after_step(self) -> None:
        """Hook called by the trainer after every optimiser step."""

    def epoch_metrics(self) -> Dict[str, float]:
        """Numbers about the head's own state for the trainer's per-epoch row (none by default)."""
        return {}

    def check_dims(self, features: Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"the head expects features of shape (B, {self.feature_dim}), got {tuple(features.shape)}")


class LinearHead(_Head):
    """Learned linear classifier ``(C, d)`` (method ``standard`` / ``standard-no-norm``).

    ``normalize_weight=True`` re-projects every row onto the unit sphere at construction and
    after each optimiser step (:meth:`renormalize_`).  ``bias`` adds a learned ``(C,)``
    bias (off by default: AGD only handles matrix parameters).  ``centring`` chooses ``h_G``
    (:func:`build_centring`; ``"running"`` by default, as every method in the one-switch protocol).
    """

    def __init__(self, feature_dim: int, num_classes: int, *, tau: float = 5.0, normalize_features: bool = True,
                 normalize_weight: bool = True, bias: bool = False, centring: str = "running",
                 ema_floor: float = 1e-4):
        super().__init__(feature_dim, num_classes, tau, normalize_features)
        self.normalize_weight = bool(normalize_weight)
        self.linear = nn.Linear(feature_dim, num_classes, bias=bias)
        self.centring = build_centring(centring, feature_dim, floor=ema_floor)
        if self.normalize_weight:
            self.renormalize_()

    @torch.no_grad()
    def renormalize_(self) -> None:
        w = self.linear.weight
        w.div_(torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(1e-12))

    def after_step(self) -> None:
        if self.normalize_weight:
            self.renormalize_()

    @property
    def weight(self) -> Tensor:
        return self.linear.weight.detach()

    @property
    def learned_bias(self) -> Optional[Tensor]:
        return None if self.linear.bias is None else self.linear.bias.detach()

    def forward(self, features: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        self.check_dims(features)
        h = self.transform(features)
        return self.centred_logits(h, self.linear.weight, self.update_centre(h, labels), self.linear.bias)


class FixedETFHead(_Head):
    """Fixed simplex-ETF classifier ``W = etf_classifier(U)`` (``fixed`` / ``fixed-random``).

    ``rotation="canonical"``: ``U = [I_C; 0]`` (the paper's choice); ``"random"``: a
    Haar-random Stiefel point drawn from ``torch.Generator().manual_seed(seed)``.
    ``centring`` chooses ``h_G`` (:func:`build_centring`); method ``fixed-uncentred`` is ``"none"``.
    """

    def __init__(self, feature_dim: int, num_classes: int, *, tau: float = 5.0, rotation: str = "canonical",
                 seed: int = 0, normalize_features: bool = True, centring: str = "running", ema_floor: float = 1e-4):
        super().__init__(feature_dim, num_classes, tau, normalize_features)
        if rotation == "canonical":
            U = canonical_point(feature_dim, num_classes, dtype=torch.float64)
        elif rotation == "random":
            g = torch.Generator().manual_seed(int(seed))
            U = random_point(feature_dim, num_classes, generator=g, dtype=torch.float64)
        else:
            raise ValueError(f"rotation must be 'canonical' or 'random', got {rotation!r}")
        self.rotation = rotation
        self.register_buffer("W", etf_classifier(U).to(torch.float32))
        self.centring = build_centring(centring, feature_dim, floor=ema_floor)

    @property
    def weight(self) -> Tensor:
        return self.W

    def forward(self, features: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        self.check_dims(features)
        h = self.transform(features)
        return self.centred_logits(h, self.W, self.update_centre(h, labels))


class ImplicitETFHead(_Head):
    """The paper's implicit ETF classifier (Eq. 8 with the stochastic updates of §3.5).

    In training mode with labels, each call

    1. updates :class:`ClassMeanEMA` with the (normalised) batch features -> ``H_t``, ``h_G``;
    2. solves the proximal nearest-ETF problem ``U* = NearestETF(H_t)`` (first call: the
       paper's two-stage initialisation; later: previous solution as proximal point), in
       ``solve_dtype`` (float32 or float64) with autocast disabled;
    3. sets ``W = etf_classifier(U*)`` (unit-norm rows), ``b = -W h_G`` and returns
       ``tau (W h + b) = tau W (h - h_G)``, with ``h_G`` as ``centring`` says (:data:`CENTRINGS`:
       the EMA's running mean by default; the batch's own mean, with gradient, is the code
       release's choice).  ``class_means`` is :class:`ClassMeanEMA`'s rule.

    ``backward`` selects the DDN gradient through ``U*``: ``"closed_form"`` (polar adjoint),
    ``"kkt"`` (the paper's dense formula) or ``"none"`` (gradient off, as for ImageNet).
    ``polar`` is the route of the polar factor (:func:`guiding_nc.core.polar.polar_factor`; ``"auto"``:
    Newton–Schulz on CUDA, the SVD or the Gram matrix on the CPU).
    In eval mode (or without labels) the last ``W``/``h_G`` are used and nothing changes.
    The ``last_timing`` attribute, if a timer is attached via ``timer``, is filled by the trainer.

    Mixed precision: whatever the feature dtype or autocast dtype (bfloat16, float16), the class
    means, the nearest ETF and ``W`` are computed in ``solve_dtype`` with autocast off; the logits
    then follow the surrounding autocast like every head's.

    Host syncs in a training step (CUDA, ``polar="auto"``), audited: the class-mean update reads
    nothing back (a membership-mask product instead of ``bincount``, the EMA factors as tensors);
    the layer's input checks, which read values, run on the CPU only (:class:`NearestETF`
    ``check=None``); no ``.item()``, ``float()``, ``bool()`` or branch on a device value.  That leaves
    one read: the Newton–Schulz convergence check (one transfer of its residual bounds; two on a
    step that needs more iterations than the last ones did), which also catches non-finite class
    means (``NonFiniteInputError``).  Its backward (:func:`~guiding_nc.core.polar.polar_vjp_newton_schulz`)
    reads nothing.  The first step (the two-stage initialisation) and a fallback to the exact SVD
    route (warned) read more.  Non-finite features or losses are flagged on the device by the
    trainer and checked every ``nonfinite_check_every`` steps; :meth:`epoch_metrics` (read once per
    epoch) reports the route's iterations, fallbacks and reads per call.
    """

    def __init__(self, feature_dim: int, num_classes: int, *, tau: float = 5.0, delta: float = 1e-3,
                 backward: str = "closed_form", solver: str = "closed_form", ema_floor: float = 1e-4,
                 solve_dtype: torch.dtype = torch.float32, max_iterations: int = 30, polar: str = "auto",
                 centring: str = "running", class_means: str = "normalised_batches"):
        super().__init__(feature_dim, num_classes, tau, True)
        if centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {', '.join(CENTRINGS)}, got {centring!r}")
        if backward not in BACKWARDS:
            raise ValueError(f"unknown DDN backward {backward!r}; choose one of {BACKWARDS}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown nearest-ETF solver {solver!r}; choose one of {SOLVERS}")
        if solve_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"the nearest-ETF solve runs in float32 or float64, got {solve_dtype}")
        self.backward_mode = backward
        self.ema = ClassMeanEMA(feature_dim, num_classes, floor=ema_floor, dtype=solve_dtype, class_means=class_means)
        # "running" reads h_G from the class-mean EMA, which computes it anyway; the batch
        # centrings keep the batch mean it returns (build_centring's modules, fed by `use`).
        self.centring_mode = centring
        self.centring = None if centring in ("running", "none") else build_centring(centring, feature_dim,
                                                                                      dtype=solve_dtype)
        self.nearest = NearestETF(feature_dim, num_classes, delta=delta, method=solver, backward=backward,
                                  max_iterations=max_iterations, polar=polar)
        W0 = etf_classifier(canonical_point(feature_dim, num_classes, dtype=torch.float64))
        self.register_buffer("W", W0.to(solve_dtype))

    def epoch_metrics(self) -> Dict[str, float]:
        """The EMA's current smoothing factor ``alpha_t`` (Eq. 9), and what the Newton–Schulz
        route did once it has run (:meth:`guiding_nc.core.polar.NewtonSchulzState.metrics`)."""
        return {"ema_alpha": float(ema_alpha(int(self.ema.step), self.ema.floor)), **self.nearest.polar_state.metrics()}

    @property
    def weight(self) -> Tensor:
        return self.W

    @property
    def global_mean(self) -> Optional[Tensor]:
        if self.centring_mode == "running":
            return self.ema.global_mean
        return None if self.centring is None else self.centring.global_mean

    def eval_centre(self, h: Tensor) -> Optional[Tensor]:
        if self.centring_mode == "running":
            return self.ema.global_mean
        return None if self.centring is None else self.centring.for_eval(h)

    def forward(self, features: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        self.check_dims(features)
        h = self.transform(features)
        if not (self.training and labels is not None):
            return self.logits_from(h)
        timer = self.timer
        if timer is not None:
            timer.start("etf_forward")
        device_type = h.device.type
        autocast_off = torch.autocast(device_type=device_type, enabled=False) if device_type in ("cuda", "cpu") \
            else nullcontext()
        with autocast_off:
            differentiable = self.backward_mode != "none"
            hs = h.to(self.ema.dtype)
            H, h_g, h_batch = self.ema.update(hs, labels, differentiable=True, with_batch_mean=True)
            if self.centring_mode != "running":
                h_g = None if self.centring is None else self.centring.use(h_batch)
            H_in = H if differentiable else H.detach()
            U = self.nearest(H_in)
            if timer is not None and differentiable and torch.is_grad_enabled() and U.requires_grad:
                timer.backward_hooks(U, H_in)
            W = etf_classifier(U)
            with torch.no_grad():
                self.W.copy_(W.detach())
        if timer is not None:
            timer.stop("etf_forward")
        return self.centred_logits(h, W, h_g)


# ------------------------------------------------------------------------------ factory
def build_head(method: str, feature_dim: int, num_classes: int, *, tau: float = 5.0, delta: float = 1e-3,
               ddn_backward: str = "closed_form", solver: str = "closed_form", ema_floor: float = 1e-4,
               head_bias: bool = False, etf_seed: int = 0, solve_dtype: torch.dtype = torch.float32,
               max_iterations: int = 30, centring: str = "running",
               class_means: str = "normalised_batches") -> _Head:
    """Build the head for ``method`` (one of :data:`METHOD_NAMES`); everything else is shared.

    ``centring`` is how the head chooses ``h_G`` (:data:`CENTRINGS`, :func:`build_centring`; the
    method ``fixed-uncentred`` is always ``"none"``); ``class_means`` the implicit head's
    class-mean rule (:data:`CLASS_MEAN_RULES`).  ``C > d`` is rejected for every method (a simplex
    ETF of C vertices needs d >= C, and the comparison should be like for like).
    """
    if method not in METHOD_NAMES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHOD_NAMES)}")
    if num_classes > feature_dim:
        raise ValueError(
            f"number of classes C={num_classes} exceeds the feature dimension d={feature_dim}; "
            "a simplex ETF needs d >= C (use a larger feature_dim)"
        )
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    if centring not in CENTRINGS:
        raise ValueError(f"centring must be one of {', '.join(CENTRINGS)}, got {centring!r}")
    if class_means not in CLASS_MEAN_RULES:
        raise ValueError(f"class_means must be one of {', '.join(CLASS_MEAN_RULES)}, got {class_means!r}")
    if method == "standard":
        return LinearHead(feature_dim, num_classes, tau=tau, bias=head_bias, centring=centring, ema_floor=ema_floor)
    if method == "standard-no-norm":
        return LinearHead(feature_dim, num_classes, tau=1.0, normalize_features=False, normalize_weight=False,
                          bias=head_bias, centring=centring, ema_floor=ema_floor)
    if method in ("fixed", "fixed-uncentred"):
        return FixedETFHead(feature_dim, num_classes, tau=tau, rotation="canonical",
                            centring=centring if method == "fixed" else "none", ema_floor=ema_floor)
    if method == "fixed-random":
        return FixedETFHead(feature_dim, num_classes, tau=tau, rotation="random", seed=etf_seed, centring=centring,
                            ema_floor=ema_floor)
    return ImplicitETFHead(feature_dim, num_classes, tau=tau, delta=delta, backward=ddn_backward, solver=solver,
                           ema_floor=ema_floor, solve_dtype=solve_dtype, max_iterations=max_iterations,
                           centring=centring, class_means=class_means)
