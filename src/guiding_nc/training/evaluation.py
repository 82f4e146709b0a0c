"""Evaluation of a network on one split: loss, top-1/top-5, the neural-collapse metrics, the cosine
margins and the dead feature units.  :meth:`guiding_nc.training.trainer.Trainer.evaluate` calls
:func:`evaluate_split` with the trainer's network, head and evaluation loader."""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from ..core.distributed import all_reduce_, dist
from ..core.metrics import neural_collapse_metrics

__all__ = ["evaluate_split", "gather_margins"]


@torch.no_grad()
def evaluate_split(loader: Any, network: nn.Module, head: nn.Module, *, num_classes: int, feature_dim: int,
                   device: torch.device, cache_mode: Any, autocast: Callable[[], Any],
                   world_size: int = 1) -> Tuple[Dict[str, float], np.ndarray]:
    """Evaluate ``network`` (its ``backbone``, then ``head``) on the batches of ``loader``: loss,
    top-1/top-5, NC1-NC3, NCC mismatch (NC4), equinorm, cosine margins
    (:func:`guiding_nc.core.metrics.neural_collapse_metrics`), and the dead units of the features.

    Features are what the classifier sees (``head.transform``).  All sums are reduced over
    ranks; returns ``(metrics, per-sample cosine margins)``.
    """
    net = network
    was_training = net.training
    net.eval()
    d, dev = feature_dim, device
    if cache_mode == "auto":
        cache = len(loader.dataset) * d * 4 <= (2 * 1024 ** 3 if dev.type == "cuda" else 4 * 1024 ** 3)
    else:
        cache = bool(cache_mode)
    # Feature coordinates that are not zero on some sample; the rest are dead units (a ReLU
    # that never fires), invisible to any classifier weight on them.
    alive = torch.zeros(d, dtype=torch.bool, device=dev)

    def batches():
        for x, y in loader:
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            with autocast():
                f = net.backbone(x)
            alive.logical_or_((f != 0).any(0))
            yield head.transform(f.float()), y

    W = head.weight.detach().to(dev)
    distributed = world_size > 1
    out = neural_collapse_metrics(
        batches, W, num_classes=num_classes, logits_fn=lambda h: head.logits_from(h).float(), check=False,
        cache=cache, empty_classes="nan", reduce=all_reduce_ if distributed else None,
        gather=functools.partial(gather_margins, world_size=world_size) if distributed else None)
    margins = out.pop("cosine_margins").numpy()
    alive_any = alive.to(torch.uint8)
    if distributed:
        dist().all_reduce(alive_any, op=dist().ReduceOp.MAX)
    dead = alive_any == 0
    out["dead_units"] = int(dead.sum())
    # Share of the classifier's squared weight on dead units: 1 means it reads nothing alive.
    w2 = W.double().pow(2).sum(0)
    out["dead_weight"] = float(w2[dead].sum() / w2.sum().clamp_min(1e-300))
    net.train(was_training)
    return out, margins


def gather_margins(local: np.ndarray, world_size: int) -> np.ndarray:
    """Every rank's per-sample margins ``local``, concatenated in rank order (on every rank)."""
    gathered: List[Any] = [None] * world_size
    dist().all_gather_object(gathered, local)
    return np.concatenate(gathered)
