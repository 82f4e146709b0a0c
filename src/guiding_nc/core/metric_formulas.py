"""The neural-collapse metrics one formula each (paper Appendix A, Eqs. 11-17): NC1-NC3,
equinorm, cosine margins, NC4 (nearest-class-centre mismatch), top-k accuracy and the
cross-entropy lower bound.

Conventions (same as the rest of the package):

* ``C`` classes, feature dimension ``d``, ``N`` samples.
* ``features`` are row-per-sample, shape ``(N, d)``; ``labels`` are integers in ``[0, C)``, shape ``(N,)``.
* The classifier ``W`` has one row per class, shape ``(C, d)``; the bias ``b`` has shape ``(C,)``.
* ``centred_means`` is the matrix ``Hbar = [hbar_1 - h_G, ..., hbar_C - h_G]`` of shape ``(d, C)``
  (one column per class, *not* normalised; Eq. 5 without the Frobenius scaling).

The second-order metrics read :class:`~guiding_nc.core.class_statistics.ClassStatistics`; the
per-sample ones stream (``ncc_mismatch_count``, ``topk_correct``).  All of them over a dataset, in
two passes: :func:`guiding_nc.core.metrics.neural_collapse_metrics`.

Individual metric functions return 0-dim tensors on the input's device (no host sync).
Metrics are computed in float64 (float32 only on devices without float64 support, e.g. Apple
MPS), whatever the input dtype.  Book: chapter 2 (the metrics).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .checks import TAU
from .class_statistics import ClassStatistics, check_features, check_int, check_labels

__all__ = [
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
]


# --------------------------------------------------------------------------------------------
# helpers (compute_dtype, to_compute and check_classifier are shared with the metric suite)
# --------------------------------------------------------------------------------------------


def compute_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everywhere else the metrics are cheap enough to afford it.
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def to_compute(x: Tensor) -> Tensor:
    return x.to(compute_dtype(x.device))


def check_classifier(W: Tensor, b: Optional[Tensor] = None, *, min_classes: int = 2) -> tuple[int, int]:
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


def _etf_target(C: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(I_C - 1 1^T / C) / sqrt(C - 1)``, the unit-Frobenius standard simplex ETF, ``(C, C)``."""
    eye = torch.eye(C, dtype=dtype, device=device)
    return (eye - 1.0 / C) / math.sqrt(C - 1)


def _distance_to_etf(G: Tensor) -> Tensor:
    """``|| G / ||G||_F - ETF ||_F`` for a ``(C, C)`` matrix; NaN when ``G = 0`` (undefined)."""
    G = to_compute(G)
    target = _etf_target(G.shape[0], G.dtype, G.device)
    return torch.linalg.matrix_norm(G / torch.linalg.matrix_norm(G) - target)


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
    check_classifier(W)
    Wc = to_compute(W)
    return _distance_to_etf(Wc @ Wc.T)


def nc3(W: Tensor, centred_means: Tensor) -> Tensor:
    """NC3 self-duality, ``|| W Hbar / ||W Hbar||_F - (I - 1 1^T / C) / sqrt(C - 1) ||_F`` (Eq. 13).

    ``W``: ``(C, d)``; ``centred_means`` ``Hbar``: ``(d, C)`` (see
    :meth:`ClassStatistics.centred_means`).  Returns a 0-dim tensor; NaN if ``W Hbar = 0``.
    """
    C, d = check_classifier(W)
    if centred_means.dim() != 2 or tuple(centred_means.shape) != (d, C):
        raise ValueError(
            f"centred_means must be (d, C) = ({d}, {C}) with one column per class, "
            f"got shape {tuple(centred_means.shape)}"
        )
    return _distance_to_etf(to_compute(W) @ to_compute(centred_means))


def equinorm(W: Tensor, centred_means: Tensor) -> Tensor:
    """W-Hbar equinorm (Eq. 15), ``| std_c ||w_c|| / avg_c ||w_c|| - std_c ||hbar_c - h_G|| / avg_c ||hbar_c - h_G|| |``.

    ``W``: ``(C, d)``; ``centred_means``: ``(d, C)``.  ``std_c`` is the *population* standard
    deviation over the ``C`` classes (``unbiased=False``, divide by ``C``): the norms of all classes
    are the whole population, not a sample.  Returns a 0-dim tensor; 0 when both sets of norms
    are each constant; NaN if all norms of either set are 0.
    """
    C, d = check_classifier(W)
    if centred_means.dim() != 2 or tuple(centred_means.shape) != (d, C):
        raise ValueError(
            f"centred_means must be (d, C) = ({d}, {C}) with one column per class, "
            f"got shape {tuple(centred_means.shape)}"
        )
    w_norms = torch.linalg.vector_norm(to_compute(W), dim=1)
    h_norms = torch.linalg.vector_norm(to_compute(centred_means), dim=0)

    def cv(x: Tensor) -> Tensor:  # coefficient of variation
        return x.std(unbiased=False) / x.mean()

    return (cv(w_norms) - cv(h_norms)).abs()


# --------------------------------------------------------------------------------------------
# per-sample metrics (second pass)
# --------------------------------------------------------------------------------------------


def max_cosine_margin(num_classes: int) -> float:
    """Largest possible cosine margin, ``C / (C - 1)``, attained by a simplex ETF (Eq. 17)."""
    C = check_int("num_classes", num_classes, 2)
    return C / (C - 1)


def cross_entropy_lower_bound(num_classes: int, tau: float) -> float:
    """Smallest mean cross-entropy reachable with unit features and unit classifier rows.

    With logits ``tau * W h``, ``||h|| = 1`` and ``||w_c|| = 1``, balanced classes and
    ``d >= C - 1``, the mean cross-entropy is minimised when the features collapse onto the
    rows of a simplex ETF (``h_i = w_{y_i}``): the true logit is ``tau`` and every other one
    ``-tau / (C - 1)``, so the bound is ``log(1 + (C - 1) exp(-tau C / (C - 1)))``.  This is
    the dashed line of the paper's Fig. 2 (book: the UFM-10 chapter).
    """
    C = check_int("num_classes", num_classes, 2)
    TAU("tau", tau)
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
    C, d = check_classifier(W)
    check_features(features, d)
    check_labels(labels, features.shape[0], C)
    if tuple(global_mean.shape) != (d,):
        raise ValueError(f"global_mean must have shape (d,) = ({d},), got {tuple(global_mean.shape)}")
    dev = features.device
    h = to_compute(features)
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
    check_features(features, d)
    if predictions.dim() != 1 or predictions.shape[0] != features.shape[0]:
        raise ValueError(
            f"predictions must have shape (N,) = ({features.shape[0]},), got {tuple(predictions.shape)}"
        )
    h = to_compute(features)
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
    C, d = check_classifier(W, b, min_classes=1)
    check_features(features, d)
    if tuple(class_means.shape) != (C, d):
        raise ValueError(f"class_means must have shape (C, d) = ({C}, {d}), got {tuple(class_means.shape)}")
    if features.shape[0] == 0:
        raise ValueError("features are empty: the NCC mismatch rate of zero samples is undefined")
    h = to_compute(features)
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
    check_int("k", k, 1)
    if k > C:
        raise ValueError(f"top-{k} accuracy needs at least {k} classes, logits have C = {C}")
    check_labels(labels, N, C, check_range=False)
    top = logits.topk(k, dim=1).indices
    return (top == labels.to(device=logits.device, dtype=torch.int64).unsqueeze(1)).any(1).sum()


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> Tensor:
    """Top-``k`` accuracy, the fraction in ``[0, 1]`` of samples whose label is among the ``k`` largest
    logits.  ``logits`` ``(N, C)``, ``labels`` ``(N,)``; 0-dim float64 tensor.  Ties are broken by
    ``torch.topk``."""
    if logits.dim() == 2 and logits.shape[0] == 0:
        raise ValueError("logits are empty: the accuracy of zero samples is undefined")
    correct = topk_correct(logits, labels, k)
    return correct.to(compute_dtype(logits.device)) / logits.shape[0]
