"""The unconstrained feature model (UFM): one free feature vector per training sample (paper §4,
UFM-10/100/200/1000), with the paper's Gaussian start and the ``mean_free`` start."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .common import check_int

__all__ = ["UFM", "UFM_INITS"]


UFM_INITS = ("gaussian", "mean_free")


def _mean_free_(features: Tensor, labels: Optional[Tensor], offset: float, std: float,
                generator: Optional[torch.Generator]) -> None:
    """Rewrite Gaussian rows ``features`` (N, d) in place into the ``mean_free`` start of :class:`UFM`."""
    if labels is None:
        raise ValueError("UFM init 'mean_free' needs the labels (one per sample)")
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() != features.shape[0]:
        raise ValueError(f"UFM init 'mean_free' needs {features.shape[0]} labels, got {labels.numel()}")
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not (math.isfinite(offset) and offset >= 0):
        raise ValueError(f"init_offset must be a finite number >= 0, got {offset!r}")
    classes, counts = torch.unique(labels, return_counts=True)
    odd = classes[counts % 2 == 1]
    if odd.numel():
        raise ValueError(f"UFM init 'mean_free' pairs the samples of each class: classes {odd[:5].tolist()} "
                         "have an odd number of samples")
    shifts = torch.empty(int(classes.max()) + 1, features.shape[1]).normal_(0.0, std, generator=generator)
    for c in classes.tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        half = idx.numel() // 2
        g = features[idx[:half]]
        features[idx[half:]] = -g
        features[idx] += offset * shifts[c]


class UFM(nn.Module):
    """Unconstrained feature model: one free feature vector per training sample.

    The features ``H`` are an ``nn.Parameter`` named ``features`` of shape
    ``(num_samples, feature_dim)``; ``forward(indices)`` returns the rows ``H[indices]`` of
    shape ``(B, feature_dim)``. Paper §4 ("UFM-10": C=10, N=1000, d=512; "UFM-100/200": N=5000,
    d=1024; "UFM-1000": N=10000, d=1024).

    Args:
        num_samples: N, the number of training samples (rows of ``H``).
        feature_dim: d, the feature dimension.
        init_std: standard deviation of the i.i.d. Gaussian initialisation of ``H``. Default
            ``1/sqrt(feature_dim)``, so every feature vector has expected squared norm 1.
        init: ``"gaussian"`` (the paper's: i.i.d. rows) or ``"mean_free"``: every class's rows
            come in antipodal pairs ``+g, -g`` (``g`` Gaussian as above) shifted by one small
            class offset ``init_offset * r_c`` (``r_c`` Gaussian as above), so a class mean is
            exactly ``init_offset * r_c`` and holds no trace of its own samples.  A
            nearest-class-mean classifier -- and hence the implicit ETF, built from the class
            means -- then starts at chance (measured in the book's UFM-scaling chapter) instead
            of classifying the random features before any step.  Needs ``labels`` with an even
            count in every class.
        labels: ``(num_samples,)`` class labels, for ``init="mean_free"``.
        init_offset: the class offsets' scale for ``init="mean_free"`` (default ``1e-3``; it
            must be small against ``1/sqrt(feature_dim)`` for the start to be at chance).
        generator: optional ``torch.Generator`` for a reproducible initialisation.
        check_indices: validate the index range in ``forward`` (one host-device sync per call;
            set ``False`` to skip it in a hot loop once the data pipeline is trusted).

    Under AGD (:class:`guiding_nc.training.optim.AGD`) ``H`` is one "layer": a matrix whose gradient is
    normalised by its Frobenius norm; :func:`guiding_nc.training.optim.agd_init_` leaves it untouched.
    """

    def __init__(
        self,
        num_samples: int,
        feature_dim: int,
        *,
        init_std: Optional[float] = None,
        init: str = "gaussian",
        labels: Optional[Tensor] = None,
        init_offset: float = 1e-3,
        generator: Optional[torch.Generator] = None,
        check_indices: bool = True,
    ) -> None:
        super().__init__()
        self.num_samples = check_int("num_samples", num_samples)
        self.feature_dim = check_int("feature_dim", feature_dim)
        if init_std is None:
            init_std = 1.0 / math.sqrt(feature_dim)
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)):
            raise TypeError(f"init_std must be a float, got {type(init_std).__name__}")
        if not (math.isfinite(init_std) and init_std >= 0):
            raise ValueError(f"init_std must be finite and >= 0, got {init_std}")
        self.init_std = float(init_std)
        self.check_indices = bool(check_indices)
        if init not in UFM_INITS:
            raise ValueError(f"unknown UFM init {init!r}; choose one of {', '.join(UFM_INITS)}")
        self.init = init
        features = torch.empty(num_samples, feature_dim)
        features.normal_(0.0, self.init_std, generator=generator)
        if init == "mean_free":
            _mean_free_(features, labels, init_offset, self.init_std, generator)
        self.features = nn.Parameter(features)

    def forward(self, indices: Tensor) -> Tensor:
        """Rows of the feature matrix: ``indices`` (B,) integer -> features (B, feature_dim)."""
        if not isinstance(indices, Tensor):
            raise TypeError(f"UFM expects a LongTensor of sample indices, got {type(indices).__name__}")
        if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
            raise TypeError(f"UFM expects integer sample indices, got dtype {indices.dtype}")
        if indices.dim() != 1:
            raise ValueError(
                f"UFM expects a 1-D tensor of sample indices (B,), got shape {tuple(indices.shape)}"
            )
        if self.check_indices and indices.numel() > 0:
            bad = (indices < 0) | (indices >= self.num_samples)
            if bool(bad.any()):
                lo, hi = int(indices.min()), int(indices.max())
                raise ValueError(
                    f"UFM sample indices must lie in [0, {self.num_samples}), got values in "
                    f"[{lo}, {hi}]"
                )
        return self.features.index_select(0, indices.long())

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, feature_dim={self.feature_dim}"
