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

__all__ = ["evaluate_split", "gather_margins", "all_finite", "params_finite", "nonfinite_state"]


def all_finite(t: torch.Tensor) -> torch.Tensor:
    """0-dim bool tensor: every entry of ``t`` is finite, and so is its norm -- numbers so large
    that their squares overflow (a diverged run, e.g. AGD at an absurd learning rate, whose
    features are finite but meaningless: normalising them gives zeros) count as non-finite.  One
    reduction pass (``vector_norm`` propagates NaN and infinities), no full-size mask, no sync."""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    low = t.dtype in (torch.float16, torch.bfloat16)
    return torch.isfinite(torch.linalg.vector_norm(t.detach(), dtype=torch.float32 if low else None))


def params_finite(module: nn.Module) -> torch.Tensor:
    """0-dim bool tensor: :func:`all_finite` for every floating-point parameter of ``module``,
    with one fused norm over them all (no host sync)."""
    params = [p.detach() for p in module.parameters() if p.is_floating_point()]
    if not params:
        return torch.ones((), dtype=torch.bool)
    with torch.no_grad():
        norms = torch._foreach_norm(params) if hasattr(torch, "_foreach_norm") else \
            [torch.linalg.vector_norm(p) for p in params]
        return torch.isfinite(torch.stack([n.float() for n in norms])).all()


def nonfinite_state(module: nn.Module) -> List[str]:
    """The names of ``module``'s floating-point parameters and buffers that fail :func:`all_finite`
    (what a checkpoint must not hold)."""
    return [name for name, t in (*module.named_parameters(), *module.named_buffers())
            if t.is_floating_point() and not bool(all_finite(t))]


@torch.no_grad()
def evaluate_split(loader: Any, network: nn.Module, head: nn.Module, *, num_classes: int, feature_dim: int,
                   device: torch.device, cache_mode: Any, autocast: Callable[[], Any],
                   world_size: int = 1) -> Tuple[Dict[str, float], np.ndarray]:
    """Evaluate ``network`` (its ``backbone``, then ``head``) on the batches of ``loader``: loss,
    top-1/top-5, NC1-NC3, NCC mismatch (NC4), equinorm, cosine margins
    (:func:`guiding_nc.core.metrics.neural_collapse_metrics`), and the dead units of the features.

    Features are what the classifier sees (``head.transform``).  All sums are reduced over
    ranks; returns ``(metrics, per-sample cosine margins)``.  ``metrics["nonfinite_batches"]``
    counts the batches whose backbone features fail :func:`all_finite`: their metrics mean nothing
    (the trainer stops the run on any).
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
    nonfinite = torch.zeros((), dtype=torch.int64, device=dev)

    def batches():
        for x, y in loader:
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            with autocast():
                f = net.backbone(x)
            alive.logical_or_((f != 0).any(0))
            nonfinite.add_((~all_finite(f)).long())
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
    if distributed:
        all_reduce_(nonfinite)
    out["nonfinite_batches"] = int(nonfinite)
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
