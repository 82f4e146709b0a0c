"""Neural-collapse metrics over a dataset (paper Appendix A, Eqs. 4-5 and 10-17), streaming:
:func:`neural_collapse_metrics`, the whole suite in two passes (the trainer's too).

A dataset that does not fit in memory is handled in two passes.  The first pass feeds
:class:`~guiding_nc.core.class_statistics.ClassStatistics`, which keeps only per-class counts
``(C,)``, per-class sums ``(C, d)`` and the total second moment ``sum_i h_i h_i^T`` ``(d, d)``;
every second-order quantity (``Sigma_W``, ``Sigma_B``, NC1) is a function of these.  The second
pass needs the class means (nearest-class-centre agreement, cosine margins, accuracy).  The
formulas, one function each, are in :mod:`guiding_nc.core.metric_formulas`.

:func:`neural_collapse_metrics` converts everything to Python floats at the end.  Statistics
and metrics are computed in float64 (float32 only on devices without float64 support, e.g.
Apple MPS), whatever the input dtype.  Book: chapter 2 (the metrics).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .checks import Choice, Flag
from .class_statistics import ClassStatistics, check_features, check_int, check_labels
from .metric_formulas import (
    check_classifier,
    compute_dtype,
    cosine_margin,
    equinorm,
    nc1,
    nc2,
    nc3,
    ncc_mismatch_count,
    to_compute,
    topk_correct,
)

__all__ = ["neural_collapse_metrics"]

Batches = Union[Callable[[], Iterable[tuple[Tensor, Tensor]]], Iterable[tuple[Tensor, Tensor]]]


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
    Choice(("error", "nan"))("empty_classes", empty_classes)
    Flag()("check", check)
    Flag()("cache", cache)
    C = check_int("num_classes", num_classes, 2)
    Wc, d = check_classifier(W, b)
    if Wc != C:
        raise ValueError(f"W has {Wc} rows but num_classes = {C}")
    source = _batch_source(batches)
    dev = W.device

    def logits_of(features: Tensor) -> Tensor:
        if logits_fn is None:
            logits = to_compute(features) @ to_compute(W).T
            return logits if b is None else logits + b.to(logits.dtype)
        logits = logits_fn(features)
        if logits.dim() != 2 or tuple(logits.shape) != (features.shape[0], C):
            raise ValueError(
                f"logits_fn returned shape {tuple(logits.shape)}, expected (n, C) = ({features.shape[0]}, {C})")
        return logits

    stats = ClassStatistics(C, d, device=dev, dtype=compute_dtype(dev))
    # Sums stay on the device until the end so the loop never waits for the host.
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, top1, top5, n
    kept: list[tuple[Tensor, Tensor, Tensor]] = []
    for features, labels in source():
        check_features(features, d)
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
            check_features(features, d)
            check_labels(labels, features.shape[0], C, check_range=False)
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
