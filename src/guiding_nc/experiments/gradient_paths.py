"""The implicit ETF's two gradient streams into the features at the start of a run: how large the
DDN path (through ``U*`` and the class means) is against the direct one (through the logits and
``h_G``), for a given start.

The head-start-free UFM comparison starts from the mean-free features, whose class means are
about ``init_offset`` (1e-3) in norm; the class-mean matrix is then scaled to unit norm, and that
scaling divides the DDN path's gradient by the class means' small norm.  :func:`paths_at_start`
measures it for one start; :func:`start_sweep` over the class offsets, with each start's
accuracy before the first step (a start that reads its own samples is a head start).

Book: the UFM-scaling chapter ("The confounds of the head-start-free table").
"""
from __future__ import annotations

import copy
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from ..training.config import load_config

__all__ = ["paths_at_start", "start_sweep"]


def paths_at_start(config: str, overrides: Optional[Mapping[str, Any]] = None, *, seed: int = 0) -> Dict[str, float]:
    """The implicit ETF's feature gradient at step 0 of ``config`` (with ``overrides``), split into
    its direct and DDN parts: ``ddn_over_direct`` (``||g_total - g_direct|| / ||g_direct||``),
    ``cosine`` (between ``g_total`` and ``g_direct``), ``class_mean_norm`` (the Frobenius norm of
    the centred, normalised-feature class means before their unit-norm scaling) and
    ``accuracy_step0`` (the implicit head's training accuracy before any update).

    ``g_direct`` is the same head's gradient with the DDN backward off (``ddn_backward: none``),
    from the same state; the first batch of the run is used (the whole set for a full-batch UFM).
    """
    from ..training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        ov = {**dict(overrides or {}), "method": "implicit", "seed": int(seed), "epochs": 1,
              "checkpoint_every": 0, "progress": False, "verbose": False, "run_dir": tmp, "num_threads": None}
        ov.pop("num_threads")
        trainer = Trainer(load_config(config, ov))
        x, y = next(iter(trainer.train_loader))
        with torch.no_grad():
            features = trainer.network.backbone(x)
        head = trainer.head

        def gradient(ddn: bool):
            h = copy.deepcopy(head).train()
            h.backward_mode = "closed_form" if ddn else "none"
            f = features.clone().requires_grad_(True)
            logits = h(f, y)
            (g,) = torch.autograd.grad(F.cross_entropy(logits.float(), y), f)
            return g.double(), logits.detach()

        g_total, logits = gradient(True)
        g_direct, _ = gradient(False)
        hn = head.transform(features.double())
        sums = torch.zeros(head.num_classes, hn.shape[1], dtype=hn.dtype).index_add(0, y, hn)
        counts = torch.bincount(y, minlength=head.num_classes).to(hn.dtype).clamp_min(1)
        means = sums / counts[:, None]
        centred = means - hn.mean(0)
    ddn = g_total - g_direct
    return {"ddn_over_direct": float(ddn.norm() / g_direct.norm()),
            "cosine": float((g_total * g_direct).sum() / (g_total.norm() * g_direct.norm())),
            "class_mean_norm": float(centred.norm()),
            "accuracy_step0": float((logits.argmax(1) == y).double().mean())}


def start_sweep(config: str, offsets: Sequence[float], overrides: Optional[Mapping[str, Any]] = None, *,
                seeds: Sequence[int] = (0,)) -> List[Dict[str, Any]]:
    """:func:`paths_at_start` for the mean-free start at each class offset in ``offsets``
    (``model_kwargs.init_offset``), each seed: one row per (offset, seed)."""
    rows = []
    for offset in offsets:
        for s in seeds:
            ov = {**dict(overrides or {}), "model_kwargs.init": "mean_free", "model_kwargs.init_offset": float(offset)}
            rows.append({"config": config, "init_offset": float(offset), "seed": int(s),
                         **paths_at_start(config, ov, seed=s)})
    return rows
