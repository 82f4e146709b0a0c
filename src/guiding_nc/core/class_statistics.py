"""Streaming sufficient statistics of labelled features (paper Appendix A, Eqs. 4-5 and 10):
:class:`ClassStatistics`, the first pass of the neural-collapse metrics, and the input checks
the metric modules share.

A dataset that does not fit in memory is handled in two passes.  The first pass feeds
:class:`ClassStatistics`, which keeps only per-class counts ``(C,)``, per-class sums ``(C, d)``
and the total second moment ``sum_i h_i h_i^T`` ``(d, d)``; every second-order quantity
(``Sigma_W``, ``Sigma_B``, NC1) is a function of these.  The formulas are in
:mod:`guiding_nc.core.metric_formulas`, the two-pass suite in :mod:`guiding_nc.core.metrics`.

Conventions: ``C`` classes, feature dimension ``d``, ``N`` samples; ``features`` are
row-per-sample ``(N, d)``, ``labels`` integers in ``[0, C)`` ``(N,)``.  Book: chapter 2 (the metrics).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from .checks import Integer
from .errors import NonFiniteInputError

__all__ = ["ClassStatistics"]


# --------------------------------------------------------------------------------------------
# input checks (shared by the metric modules)
# --------------------------------------------------------------------------------------------


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an int (not a bool) ``>= minimum`` (:class:`guiding_nc.core.checks.Integer`)."""
    return Integer(minimum)(name, value)


def check_features(features: Tensor, dim: int, name: str = "features") -> None:
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be an (N, d) matrix with one row per sample, got shape {shape}")
    if features.shape[1] != dim:
        raise ValueError(f"{name} have feature dimension {features.shape[1]}, expected d = {dim}")
    if not features.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {features.dtype}")


def check_labels(labels: Tensor, n: int, num_classes: int, *, check_range: bool = True) -> None:
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


def check_finite(x: Tensor, name: str) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteInputError(f"{name} contain {n_bad} non-finite value(s) (NaN or Inf)")


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
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.dim = check_int("dim", dim, 1)
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
        check_features(features, self.dim)
        check_labels(labels, features.shape[0], self.num_classes, check_range=check)
        if check:
            check_finite(features, "features")
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
