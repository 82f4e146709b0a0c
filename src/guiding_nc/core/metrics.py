"""Neural-collapse metrics (paper Appendix A, Eqs. 4-5 and 10-17), streaming-friendly.

Conventions (same as the rest of the package):

* ``C`` classes, feature dimension ``d``, ``N`` samples.
* ``features`` are row-per-sample, shape ``(N, d)``; ``labels`` are integers in ``[0, C)``, shape ``(N,)``.
* The classifier ``W`` has one row per class, shape ``(C, d)``; the bias ``b`` has shape ``(C,)``.
* ``centred_means`` is the matrix ``Hbar = [hbar_1 - h_G, ..., hbar_C - h_G]`` of shape ``(d, C)``
  (one column per class, *not* normalised; Eq. 5 without the Frobenius scaling).

A dataset that does not fit in memory is handled in two passes.  The first pass feeds
:class:`ClassStatistics`, which keeps only per-class counts ``(C,)``, per-class sums ``(C, d)``
and the total second moment ``sum_i h_i h_i^T`` ``(d, d)``; every second-order quantity
(``Sigma_W``, ``Sigma_B``, NC1) is a function of these.  The second pass needs the class means
(nearest-class-centre agreement, cosine margins, accuracy); see :func:`neural_collapse_metrics`.

Individual metric functions return 0-dim tensors on the input's device (no host sync);
:func:`neural_collapse_metrics` converts everything to Python floats at the end.
Statistics and metrics are computed in float64 (float32 only on devices without float64
support, e.g. Apple MPS), whatever the input dtype.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .errors import NonFiniteInputError

__all__ = [
    "ClassStatistics",
    "nc1",
    "nc2",
    "nc3",
    "equinorm",
    "cosine_margin",
    "max_cosine_margin",
    "cross_entropy_lower_bound",
    "ncc_mismatch",
    "ncc_mismatch_count",
    "topk_accuracy",
    "topk_correct",
    "neural_collapse_metrics",
]

Batches = Union[Callable[[], Iterable[tuple[Tensor, Tensor]]], Iterable[tuple[Tensor, Tensor]]]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _compute_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everywhere else the metrics are cheap enough to afford it.
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _to_compute(x: Tensor) -> Tensor:
    return x.to(_compute_dtype(x.device))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_classifier(W: Tensor, b: Optional[Tensor] = None, *, min_classes: int = 2) -> tuple[int, int]:
    if not isinstance(W, Tensor) or W.dim() != 2:
        shape = tuple(W.shape) if isinstance(W, Tensor) else type(W).__name__
        raise ValueError(f"W must be a (C, d) matrix with one row per class, got shape {shape}")
    C, d = W.shape
    if C < min_classes:
        raise ValueError(f"W has {C} row(s) (classes); these metrics need at least {min_classes} classes")
    if not W.is_floating_point():
        raise ValueError(f"W must be floating point, got dtype {W.dtype}")
    if b is not None and (not isinstance(b, Tensor) or tuple(b.shape) != (C,)):
        shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
        raise ValueError(f"bias b must have shape (C,) = ({C},) to match W, got {shape}")
    return C, d


def _check_features(features: Tensor, dim: int, name: str = "features") -> None:
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be an (N, d) matrix with one row per sample, got shape {shape}")
    if features.shape[1] != dim:
        raise ValueError(f"{name} have feature dimension {features.shape[1]}, expected d = {dim}")
    if not features.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {features.dtype}")


def _check_labels(labels: Tensor, n: int, num_classes: int, *, check_range: bool = True) -> None:
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D (N,) tensor of class indices, got shape {shape}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(f"labels have {labels.shape[0]} entries but features have {n} rows")
    if check_range and n > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"labels out of range: found label {bad}, expected values in [0, {num_classes})")


def _check_finite(x: Tensor, name: str) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteInputError(f"{name} contain {n_bad} non-finite value(s) (NaN or Inf)")


def _etf_target(C: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(I_C - 1 1^T / C) / sqrt(C - 1)``, the unit-Frobenius standard simplex ETF, ``(C, C)``."""
    eye = torch.eye(C, dtype=dtype, device=device)
    return (eye - 1.0 / C) / math.sqrt(C - 1)


def _distance_to_etf(G: Tensor) -> Tensor:
    """``|| G / ||G||_F - ETF ||_F`` for a ``(C, C)`` matrix; NaN when ``G = 0`` (undefined)."""
    G = _to_compute(G)
    target = _etf_target(G.shape[0], G.dtype, G.device)
    return torch.linalg.matrix_norm(G / torch.linalg.matrix_norm(G) - target)


# --------------------------------------------------------------------------------------------
# first pass: sufficient statistics
# --------------------------------------------------------------------------------------------


class ClassStatistics:
    """Streaming sufficient statistics of labelled features for the second-order NC metrics.

    Holds, for ``num_classes = C`` classes and feature dimension ``dim = d``:

    * ``counts``: ``(C,)`` int64, samples per class ``n_c``;
    * ``sums``: ``(C, d)``, per-class sums ``sum_{i in c} h_i``;
    * ``second_moment``: ``(d, d)``, total uncentred second moment ``sum_i h_i h_i^T``.

    These are additive, so batches can be fed one at a time (:meth:`update`), shards can be
    combined (:meth:`merge`, :meth:`all_reduce_`) and the result checkpointed
    (:meth:`state_dict`).  Memory is ``O(C d + d^2)`` whatever ``N`` is.

    ``dtype`` is the accumulation dtype; keep the float64 default: ``Sigma_W`` is obtained as
    ``second_moment / N - (class-mean outer products)``, a difference of large nearly equal terms
    once features collapse, and float32 would lose most digits.  (float32 exists only for devices
    without float64, such as Apple MPS.)  ``device=None`` means "the device of the first batch".
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        device: Optional[Union[str, torch.device]] = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.num_classes = _check_int("num_classes", num_classes, 1)
        self.dim = _check_int("dim", dim, 1)
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype must be torch.float64 (recommended) or torch.float32, got {dtype}")
        self.dtype = dtype
        # With device=None the buffers follow the first batch, so GPU features stay on the GPU.
        self._device_fixed = device is not None
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.counts = torch.zeros(num_classes, dtype=torch.int64, device=dev)
        self.sums = torch.zeros(num_classes, dim, dtype=dtype, device=dev)
        self.second_moment = torch.zeros(dim, dim, dtype=dtype, device=dev)

    # ---- bookkeeping ------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.counts.device

    def to(self, device: Union[str, torch.device]) -> "ClassStatistics":
        """Move the buffers to ``device`` (in place) and return ``self``."""
        self.counts = self.counts.to(device)
        self.sums = self.sums.to(device)
        self.second_moment = self.second_moment.to(device)
        self._device_fixed = True
        return self

    @property
    def num_samples(self) -> int:
        """Total number of samples seen, ``N`` (a host sync)."""
        return int(self.counts.sum())

    def __repr__(self) -> str:
        return (
            f"ClassStatistics(num_classes={self.num_classes}, dim={self.dim}, "
            f"num_samples={self.num_samples}, device={self.device}, dtype={self.dtype})"
        )

    def reset(self) -> "ClassStatistics":
        """Zero all statistics in place and return ``self``."""
        self.counts.zero_()
        self.sums.zero_()
        self.second_moment.zero_()
        return self

    # ---- accumulation -----------------------------------------------------------------------

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, *, check: bool = True) -> "ClassStatistics":
        """Add a batch: ``features`` ``(n, d)``, ``labels`` ``(n,)`` integers in ``[0, C)``.

        Raises ``ValueError`` on wrong shapes, non-integer or out-of-range labels and non-finite
        features.  ``check=False`` skips the two value checks (range, finiteness), which need a
        host sync on accelerators; shape checks always run.  Returns ``self``.
        """
        _check_features(features, self.dim)
        _check_labels(labels, features.shape[0], self.num_classes, check_range=check)
        if check:
            _check_finite(features, "features")
        if features.shape[0] == 0:
            return self
        if not self._device_fixed:
            if features.device != self.device:
                self.to(features.device)
            self._device_fixed = True
        h = features.detach().to(device=self.device, dtype=self.dtype)
        y = labels.detach().to(device=self.device, dtype=torch.int64)
        self.counts += torch.bincount(y, minlength=self.num_classes)
        self.sums.index_add_(0, y, h)
        self.second_moment.addmm_(h.T, h)
        return self

    def merge(self, other: "ClassStatistics") -> "ClassStatistics":
        """Add another accumulator's statistics (e.g. another data shard) in place; returns ``self``."""
        if not isinstance(other, ClassStatistics):
            raise TypeError(f"can only merge another ClassStatistics, got {type(other).__name__}")
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                f"cannot merge statistics for (C={other.num_classes}, d={other.dim}) into "
                f"(C={self.num_classes}, d={self.dim})"
            )
        if not self._device_fixed and self.num_samples == 0:
            self.to(other.device)
        self.counts += other.counts.to(self.device)
        self.sums += other.sums.to(device=self.device, dtype=self.dtype)
        self.second_moment += other.second_moment.to(device=self.device, dtype=self.dtype)
        return self

    def all_reduce_(self, group: Optional[Any] = None) -> "ClassStatistics":
        """Sum the statistics over all ``torch.distributed`` ranks in place; no-op when not distributed.

        Every rank must call it (it is a collective).  With the NCCL backend the buffers must
        live on the rank's GPU.  Returns ``self``.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        for buf in (self.counts, self.sums, self.second_moment):
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
        return self

    # ---- checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A dict of copies of the statistics plus ``num_classes`` and ``dim`` (``torch.save``-able)."""
        return {
            "num_classes": self.num_classes,
            "dim": self.dim,
            "counts": self.counts.clone(),
            "sums": self.sums.clone(),
            "second_moment": self.second_moment.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> "ClassStatistics":
        """Replace the statistics by those of ``state`` (from :meth:`state_dict`); returns ``self``."""
        missing = {"counts", "sums", "second_moment"} - set(state)
        if missing:
            raise ValueError(f"state dict is missing key(s): {sorted(missing)}")
        C, d = self.num_classes, self.dim
        for key, shape in (("counts", (C,)), ("sums", (C, d)), ("second_moment", (d, d))):
            if tuple(state[key].shape) != shape:
                raise ValueError(f"state dict entry {key!r} has shape {tuple(state[key].shape)}, expected {shape}")
        for key, val in (("num_classes", C), ("dim", d)):
            if key in state and state[key] != val:
                raise ValueError(f"state dict is for {key}={state[key]}, this accumulator has {key}={val}")
        self.counts = state["counts"].to(device=self.device, dtype=torch.int64).clone()
        self.sums = state["sums"].to(device=self.device, dtype=self.dtype).clone()
        self.second_moment = state["second_moment"].to(device=self.device, dtype=self.dtype).clone()
        return self

    # ---- derived quantities -----------------------------------------------------------------

    def _check_all_classes_seen(self) -> None:
        empty = torch.nonzero(self.counts == 0).flatten().tolist()
        if empty:
            shown = ", ".join(map(str, empty[:20])) + (", ..." if len(empty) > 20 else "")
            raise ValueError(
                f"empty class(es): no samples seen for {len(empty)} of {self.num_classes} classes "
                f"(class indices {shown}); class means are undefined"
            )

    def class_means(self) -> Tensor:
        """Class means ``hbar_c`` (Eq. 4), shape ``(C, d)``; ``ValueError`` naming any empty class."""
        self._check_all_classes_seen()
        return self.sums / self.counts.to(self.dtype).unsqueeze(1)

    def global_mean(self) -> Tensor:
        """Global mean ``h_G`` over all samples (Eq. 4), shape ``(d,)``.

        This is the sample mean, i.e. the class means weighted by ``n_c / N``; it equals the
        plain average of the class means only for balanced classes.
        """
        n = self.counts.sum()
        if int(n) == 0:
            raise ValueError("no samples seen yet: the global mean is undefined")
        return self.sums.sum(0) / n.to(self.dtype)

    def centred_means(self) -> Tensor:
        """``Hbar = [hbar_c - h_G]_c``, shape ``(d, C)``, one column per class (Eq. 5, unnormalised)."""
        return (self.class_means() - self.global_mean()).T

    def within_class_covariance(self) -> Tensor:
        """``Sigma_W = (1/N) sum_c sum_i (h_ci - hbar_c)(h_ci - hbar_c)^T`` (Eq. 10), shape ``(d, d)``.

        Uses ``sum_i h_i h_i^T - sum_c n_c hbar_c hbar_c^T = second_moment - S^T diag(1/n) S``.
        """
        self._check_all_classes_seen()
        n = self.counts.to(self.dtype)
        scaled = self.sums / n.sqrt().unsqueeze(1)  # rows sqrt(n_c) hbar_c
        sw = (self.second_moment - scaled.T @ scaled) / n.sum()
        # Rounding makes the difference slightly asymmetric; Sigma_W is symmetric by definition.
        return 0.5 * (sw + sw.T)

    def between_class_covariance(self) -> Tensor:
        """``Sigma_B = (1/C) sum_c (hbar_c - h_G)(hbar_c - h_G)^T`` (Eq. 10), shape ``(d, d)``."""
        hbar = self.centred_means()
        return hbar @ hbar.T / self.num_classes


# --------------------------------------------------------------------------------------------
# NC1-NC3 and equinorm
# --------------------------------------------------------------------------------------------


def nc1(stats: ClassStatistics, *, rtol: Optional[float] = None) -> Tensor:
    """NC1 variability collapse, ``tr(Sigma_W Sigma_B^+) / C`` (Eq. 11); 0-dim tensor.

    ``Sigma_B = Hbar Hbar^T / C`` with ``Hbar`` the ``(d, C)`` centred means, so with the thin SVD
    ``Hbar = U S V^T`` the pseudo-inverse is ``Sigma_B^+ = U_r diag(C / s_r^2) U_r^T`` over the
    kept directions ``r`` and

        NC1 = (1/C) sum_r (C / s_r^2) u_r^T Sigma_W u_r,

    costing ``O(d^2 C)`` instead of the ``O(d^3)`` of a dense ``pinv``.  A direction is kept when
    its ``Sigma_B`` eigenvalue ``s_r^2 / C`` exceeds ``rtol`` times the largest one; the default
    ``rtol = max(d, C) * eps(dtype)`` mirrors ``torch.linalg.pinv(Sigma_B)``'s default cutoff.
    (For balanced classes ``Hbar 1 = 0``, so rank ``<= C - 1``.)  If every class mean equals the
    global mean, ``Sigma_B = 0`` and, as with ``pinv``, NC1 is 0.
    """
    if not isinstance(stats, ClassStatistics):
        raise TypeError(f"nc1 expects a ClassStatistics, got {type(stats).__name__}")
    sigma_w = stats.within_class_covariance()
    hbar = stats.centred_means()
    C = stats.num_classes
    U, S, _ = torch.linalg.svd(hbar, full_matrices=False)
    eig = S.square() / C
    if rtol is None:
        rtol = max(stats.dim, C) * torch.finfo(eig.dtype).eps
    keep = eig > rtol * eig.max()
    # Masking (rather than boolean indexing) keeps shapes static: no host sync on accelerators.
    inv = torch.where(keep, 1.0 / torch.where(keep, eig, torch.ones_like(eig)), torch.zeros_like(eig))
    quad = ((sigma_w @ U) * U).sum(0)  # u_r^T Sigma_W u_r
    return (quad * inv).sum() / C


def nc2(W: Tensor) -> Tensor:
    """NC2, ``|| W W^T / ||W W^T||_F - (I - 1 1^T / C) / sqrt(C - 1) ||_F`` (Eq. 12); 0-dim tensor.

    ``W``: ``(C, d)`` classifier, ``C >= 2``.  Zero for a simplex ETF with equal-norm rows
    (any scale).  NaN when ``W = 0`` (the normalisation is undefined).
    """
    _check_classifier(W)
    Wc = _to_compute(W)
    return _distance_to_etf(Wc @ Wc.T)


def nc3(W: Tensor, centred_means: Tensor) -> Tensor:
    """NC3 self-duality, ``|| W Hbar / ||W Hbar||_F - (I - 1 1^T / C) / sqrt(C - 1) ||_F`` (Eq. 13).

    ``W``: ``(C, d)``; ``centred_means`` ``Hbar``: ``(d, C)`` (see
    :meth:`ClassStatistics.centred_means`).  Returns a 0-dim tensor; NaN if ``W Hbar = 0``.
    """
    C, d = _check_classifier(W)
    if centred_means.dim() != 2 or tuple(centred_means.shape) != (d, C):
        raise ValueError(
            f"centred_means must be (d, C) = ({d}, {C}) with one column per class, "
            f"got shape {tuple(centred_means.shape)}"
        )
    return _distance_to_etf(_to_compute(W) @ _to_compute(centred_means))


def equinorm(W: Tensor, centred_means: Tensor) -> Tensor:
    """W-Hbar equinorm (Eq. 15), ``| std_c ||w_c|| / avg_c ||w_c|| - std_c ||hbar_c - h_G|| / avg_c ||hbar_c - h_G|| |``.

    ``W``: ``(C, d)``; ``centred_means``: ``(d, C)``.  ``std_c`` is the *population* standard
    deviation over the ``C`` classes (``unbiased=False``, divide by ``C``): the norms of all classes
    are the whole population, not a sample.  Returns a 0-dim tensor; 0 when both sets of norms
    are each constant; NaN if all norms of either set are 0.
    """
    C, d = _check_classifier(W)
    if centred_means.dim() != 2 or tuple(centred_means.shape) != (d, C):
        raise ValueError(
            f"centred_means must be (d, C) = ({d}, {C}) with one column per class, "
            f"got shape {tuple(centred_means.shape)}"
        )
    w_norms = torch.linalg.vector_norm(_to_compute(W), dim=1)
    h_norms = torch.linalg.vector_norm(_to_compute(centred_means), dim=0)

    def cv(x: Tensor) -> Tensor:  # coefficient of variation
        return x.std(unbiased=False) / x.mean()

    return (cv(w_norms) - cv(h_norms)).abs()


# --------------------------------------------------------------------------------------------
# per-sample metrics (second pass)
# --------------------------------------------------------------------------------------------


def max_cosine_margin(num_classes: int) -> float:
    """Largest possible cosine margin, ``C / (C - 1)``, attained by a simplex ETF (Eq. 17)."""
    C = _check_int("num_classes", num_classes, 2)
    return C / (C - 1)


def cross_entropy_lower_bound(num_classes: int, tau: float) -> float:
    """Smallest mean cross-entropy reachable with unit features and unit classifier rows.

    With logits ``tau * W h``, ``||h|| = 1`` and ``||w_c|| = 1``, balanced classes and
    ``d >= C - 1``, the mean cross-entropy is minimised when the features collapse onto the
    rows of a simplex ETF (``h_i = w_{y_i}``): the true logit is ``tau`` and every other one
    ``-tau / (C - 1)``, so the bound is ``log(1 + (C - 1) exp(-tau C / (C - 1)))``.  This is
    the dashed line of the paper's Fig. 2 (book: the UFM-10 chapter).
    """
    C = _check_int("num_classes", num_classes, 2)
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")
    return math.log1p((C - 1) * math.exp(-tau * C / (C - 1)))


def cosine_margin(features: Tensor, labels: Tensor, W: Tensor, global_mean: Tensor) -> Tensor:
    """Per-sample cosine margin (Eq. 16), shape ``(N,)``.

    ``CM_i = cos(h_i - h_G, w_{y_i} - w_G) - max_{j != y_i} cos(h_i - h_G, w_j - w_G)`` with
    ``w_G`` the mean of the rows of ``W``.  ``features`` ``(N, d)``, ``labels`` ``(N,)``,
    ``W`` ``(C, d)``, ``global_mean`` ``(d,)``.  Lies in ``[-2, C/(C-1)]``
    (see :func:`max_cosine_margin`); positive means the sample is classified correctly by angle.
    A feature equal to ``h_G`` (or a class vector equal to ``w_G``) has all cosines 0, margin 0.
    Computed in float64; returned on the features' device.
    """
    C, d = _check_classifier(W)
    _check_features(features, d)
    _check_labels(labels, features.shape[0], C)
    if tuple(global_mean.shape) != (d,):
        raise ValueError(f"global_mean must have shape (d,) = ({d},), got {tuple(global_mean.shape)}")
    dev = features.device
    h = _to_compute(features)
    h = h - global_mean.to(device=dev, dtype=h.dtype)
    w = W.to(device=dev, dtype=h.dtype)
    w = w - w.mean(0)
    tiny = torch.finfo(h.dtype).tiny
    h = h / torch.linalg.vector_norm(h, dim=1, keepdim=True).clamp_min(tiny)
    w = w / torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(tiny)
    cos = h @ w.T  # (N, C)
    y = labels.to(device=dev, dtype=torch.int64).unsqueeze(1)
    own = cos.gather(1, y).squeeze(1)
    rivals = cos.scatter(1, y, float("-inf")).amax(1)
    return own - rivals


def ncc_mismatch_count(features: Tensor, class_means: Tensor, predictions: Tensor) -> tuple[Tensor, int]:
    """Streaming form of NC4 (Eq. 14): ``(mismatches, total)`` for one batch.

    ``features`` ``(N, d)``, ``class_means`` ``(C, d)``, ``predictions`` ``(N,)`` the classifier's
    predicted classes (e.g. ``logits.argmax(1)``).  ``mismatches`` is a 0-dim int64 tensor (no host
    sync) counting samples whose prediction differs from the nearest class mean
    ``argmin_c ||h - hbar_c||``; ``total = N``.  Sum both over batches and divide.
    """
    if class_means.dim() != 2:
        raise ValueError(f"class_means must be (C, d), got shape {tuple(class_means.shape)}")
    C, d = class_means.shape
    _check_features(features, d)
    if predictions.dim() != 1 or predictions.shape[0] != features.shape[0]:
        raise ValueError(
            f"predictions must have shape (N,) = ({features.shape[0]},), got {tuple(predictions.shape)}"
        )
    h = _to_compute(features)
    mu = class_means.to(device=h.device, dtype=h.dtype)
    # ||h - mu||^2 = ||h||^2 - 2 h.mu + ||mu||^2; the first term does not change the argmin.
    dist2 = (mu * mu).sum(1) - 2.0 * (h @ mu.T)
    nearest = dist2.argmin(1)
    mismatches = (nearest != predictions.to(device=h.device, dtype=torch.int64)).sum()
    return mismatches, int(features.shape[0])


def ncc_mismatch(features: Tensor, W: Tensor, b: Optional[Tensor], class_means: Tensor) -> Tensor:
    """NC4 (Eq. 14): fraction of samples where ``argmax_c (W h + b)_c != argmin_c ||h - hbar_c||``.

    ``features`` ``(N, d)``, ``W`` ``(C, d)``, ``b`` ``(C,)`` or ``None``, ``class_means``
    ``(C, d)``.  Returns a 0-dim tensor in ``[0, 1]``.  To stream, sum
    :func:`ncc_mismatch_count` over batches instead.
    """
    C, d = _check_classifier(W, b, min_classes=1)
    _check_features(features, d)
    if tuple(class_means.shape) != (C, d):
        raise ValueError(f"class_means must have shape (C, d) = ({C}, {d}), got {tuple(class_means.shape)}")
    if features.shape[0] == 0:
        raise ValueError("features are empty: the NCC mismatch rate of zero samples is undefined")
    h = _to_compute(features)
    logits = h @ W.to(device=h.device, dtype=h.dtype).T
    if b is not None:
        logits = logits + b.to(device=h.device, dtype=h.dtype)
    mismatches, total = ncc_mismatch_count(h, class_means, logits.argmax(1))
    return mismatches.to(h.dtype) / total


def topk_correct(logits: Tensor, labels: Tensor, k: int = 1) -> Tensor:
    """Number of samples whose label is among the ``k`` largest logits; 0-dim int64 tensor.

    ``logits`` ``(N, C)``, ``labels`` ``(N,)``.  Streaming building block of :func:`topk_accuracy`.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    N, C = logits.shape
    _check_int("k", k, 1)
    if k > C:
        raise ValueError(f"top-{k} accuracy needs at least {k} classes, logits have C = {C}")
    _check_labels(labels, N, C, check_range=False)
    top = logits.topk(k, dim=1).indices
    return (top == labels.to(device=logits.device, dtype=torch.int64).unsqueeze(1)).any(1).sum()


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> Tensor:
    """Top-``k`` accuracy, the fraction in ``[0, 1]`` of samples whose label is among the ``k`` largest
    logits.  ``logits`` ``(N, C)``, ``labels`` ``(N,)``; 0-dim float64 tensor.  Ties are broken by
    ``torch.topk``."""
    if logits.dim() == 2 and logits.shape[0] == 0:
        raise ValueError("logits are empty: the accuracy of zero samples is undefined")
    correct = topk_correct(logits, labels, k)
    return correct.to(_compute_dtype(logits.device)) / logits.shape[0]


# --------------------------------------------------------------------------------------------
# the whole suite over a dataset
# --------------------------------------------------------------------------------------------


def _batch_source(batches: Batches) -> Callable[[], Iterator[tuple[Tensor, Tensor]]]:
    if callable(batches):
        return lambda: iter(batches())
    try:
        it = iter(batches)
    except TypeError:
        raise TypeError(
            "batches must be a zero-argument callable returning an iterable of (features, labels), "
            f"or a re-iterable collection such as a list or DataLoader; got {type(batches).__name__}"
        ) from None
    if it is batches:
        raise TypeError(
            "batches is a one-shot iterator (e.g. a generator), but the metrics need two passes; "
            "pass a zero-argument callable that returns a fresh iterator instead"
        )
    return lambda: iter(batches)


@torch.no_grad()
def neural_collapse_metrics(
    batches: Batches,
    W: Tensor,
    b: Optional[Tensor] = None,
    *,
    num_classes: int,
    logits_fn: Optional[Callable[[Tensor], Tensor]] = None,
    check: bool = True,
    cache: bool = False,
    empty_classes: str = "error",
    reduce: Optional[Callable[[Tensor], Any]] = None,
    gather: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> dict[str, Any]:
    """All the Appendix-A metrics over a dataset, in two streaming passes (the trainer's too).

    ``batches``: a zero-argument callable returning a fresh iterable of ``(features, labels)``
    batches, ``features`` ``(n, d)``, ``labels`` ``(n,)`` (a re-iterable collection such as a list or
    a ``DataLoader`` also works).  It is iterated twice and must yield the same samples both times
    (once, with ``cache=True``: the first pass keeps features, labels and predictions).
    ``W``: ``(C, d)`` classifier, ``b``: ``(C,)`` bias or ``None``.  ``logits_fn`` maps a feature
    batch to ``(n, C)`` logits; default ``features @ W.T + b``.  Use it when the network's head is
    not plain ``W h + b`` (e.g. the paper's ``tau W (h/||h|| - h_G)``); it decides the loss and the
    predictions used for accuracy and for NC4, while the geometric metrics always use ``W``.

    ``check=False`` skips the value checks that read back to the host.  ``empty_classes``: a class
    with no sample makes the class-mean metrics undefined -- ``"error"`` raises, ``"nan"`` returns
    NaN for them (a small test split, say).  Under ``torch.distributed``: ``reduce`` sums a tensor
    over the ranks in place, ``gather`` concatenates the ranks' margins.

    Pass 1 accumulates :class:`ClassStatistics` (float64, on ``W``'s device); pass 2 needs the class
    means.  Returns Python numbers: ``loss`` (mean cross-entropy of the logits), ``n`` (samples),
    ``nc1`` (Eq. 11), ``nc2`` (12), ``nc3`` (13), ``equinorm`` (15), ``ncc_mismatch`` (14, fraction),
    ``top1``, ``top5`` (only when ``C >= 5``), ``cosine_margin_mean``, ``cosine_margin_min``,
    ``cosine_margin_median`` (16), plus ``cosine_margins``: the ``(N,)`` float64 per-sample margins
    on the CPU, in dataset order.  The numbers equal the one-shot computation on the
    concatenated data, up to rounding, for any batching.

    Book: chapter 2 (the metrics).
    """
    if empty_classes not in ("error", "nan"):
        raise ValueError(f"empty_classes must be 'error' or 'nan', got {empty_classes!r}")
    C = _check_int("num_classes", num_classes, 2)
    Wc, d = _check_classifier(W, b)
    if Wc != C:
        raise ValueError(f"W has {Wc} rows but num_classes = {C}")
    source = _batch_source(batches)
    dev = W.device

    def logits_of(features: Tensor) -> Tensor:
        if logits_fn is None:
            logits = _to_compute(features) @ _to_compute(W).T
            return logits if b is None else logits + b.to(logits.dtype)
        logits = logits_fn(features)
        if logits.dim() != 2 or tuple(logits.shape) != (features.shape[0], C):
            raise ValueError(
                f"logits_fn returned shape {tuple(logits.shape)}, expected (n, C) = ({features.shape[0]}, {C})")
        return logits

    stats = ClassStatistics(C, d, device=dev, dtype=_compute_dtype(dev))
    # Sums stay on the device until the end so the loop never waits for the host.
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, top1, top5, n
    kept: list[tuple[Tensor, Tensor, Tensor]] = []
    for features, labels in source():
        _check_features(features, d)
        if features.shape[0] == 0:
            continue
        features, labels = features.to(dev), labels.to(dev)
        stats.update(features, labels, check=check)
        logits = logits_of(features)
        sums[0] += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").double()
        sums[1] += topk_correct(logits, labels, 1)
        if C >= 5:
            sums[2] += topk_correct(logits, labels, 5)
        sums[3] += labels.numel()
        if cache:
            kept.append((features, labels, logits.argmax(1)))
    if reduce is not None:
        reduce(sums)
        stats.all_reduce_()
    n_total = float(sums[3])
    if n_total == 0:
        raise ValueError("batches yielded no samples")
    out: dict[str, Any] = {"loss": float(sums[0]) / n_total, "top1": float(sums[1]) / n_total, "n": int(n_total)}
    if C >= 5:
        out["top5"] = float(sums[2]) / n_total
    out["nc2"] = float(nc2(W))
    try:
        means = stats.class_means()
    except ValueError:
        if empty_classes == "error":
            raise
        for k in ("nc1", "nc3", "equinorm", "ncc_mismatch", "cosine_margin_mean", "cosine_margin_min",
                  "cosine_margin_median"):
            out[k] = float("nan")
        out["cosine_margins"] = torch.zeros(0, dtype=torch.float64)
        return out
    h_g = stats.global_mean()
    hbar = (means - h_g).T
    out["nc1"] = float(nc1(stats))
    out["nc3"] = float(nc3(W, hbar))
    out["equinorm"] = float(equinorm(W, hbar))

    def second_pass():
        for features, labels in source():
            _check_features(features, d)
            _check_labels(labels, features.shape[0], C, check_range=False)
            if features.shape[0]:
                features, labels = features.to(dev), labels.to(dev)
                yield features, labels, logits_of(features).argmax(1)

    mismatches = torch.zeros((), dtype=torch.float64, device=dev)
    margins: list[Tensor] = []
    n_seen = 0
    for features, labels, pred in (kept if cache else second_pass()):
        m, k = ncc_mismatch_count(features, means, pred)
        mismatches += m
        n_seen += k
        margins.append(cosine_margin(features, labels, W, h_g))
    if reduce is not None:
        reduce(mismatches)
    elif n_seen != out["n"]:
        raise ValueError(
            f"batches() yielded {out['n']} samples on the first pass but {n_seen} on the second; "
            "it must return the same data each time it is called"
        )
    out["ncc_mismatch"] = float(mismatches) / n_total
    cm = torch.cat(margins).cpu().numpy() if margins else np.zeros(0)
    if gather is not None:
        cm = gather(cm)
    out["cosine_margin_mean"] = float(cm.mean())
    out["cosine_margin_min"] = float(cm.min())
    out["cosine_margin_median"] = float(np.median(cm))
    out["cosine_margins"] = torch.from_numpy(np.asarray(cm, dtype=np.float64))
    return out
