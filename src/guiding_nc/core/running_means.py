"""How a head gets its running means: the class-mean EMA of the implicit head and the ``h_G``
every head centres by (paper §3.5, Eq. 8-9; book chapter 5b, "The training method").

* :func:`ema_alpha` / :func:`ema_blend` -- the smoothing factor and one step of the EMA of Eq. 9;
* :class:`ClassMeanEMA` -- the running centred, normalised class-mean matrix ``H_t`` and its
  ``h_G`` (the implicit head's, :class:`guiding_nc.core.heads.ImplicitETFHead`); its rules for
  classes missing from a batch, and :data:`CLASS_MEAN_RULES`, are documented there;
* the centrings (:data:`CENTRINGS`, :func:`build_centring`), one class each:
  :class:`GlobalMeanEMA`, :class:`BatchMean`, :class:`DetachedBatchMean` (or none).

Under ``torch.distributed`` the sums are all-reduced over ranks (the sums through a
differentiable all-reduce), so every rank sees the global batch.  The heads that use these
modules are in :mod:`guiding_nc.core.heads`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .distributed import is_distributed

__all__ = [
    "ema_alpha",
    "ema_blend",
    "GlobalMeanEMA",
    "BatchMean",
    "DetachedBatchMean",
    "CENTRINGS",
    "CLASS_MEAN_RULES",
    "build_centring",
    "ClassMeanEMA",
]


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
