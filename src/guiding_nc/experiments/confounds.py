"""The confounds of the head-start-free UFM comparison, read by the rules written in
``configs/experiments/ufm_no_head_start_confounds.yaml`` before its runs.

* **AGD's depth.** AGD divides every layer's step by the depth ``L``; the standard classifier's
  trained ``W`` makes its ``L`` 2 on a UFM against 1 for fixed and implicit.  The rule: the depth
  explains the standard classifier's extra steps to the loss threshold in a size when, with equal
  depth (``agd_depth: layers``), the median steps of fixed and of implicit each lie within
  ``ceil(10%)`` of the standard classifier's median.
* **The DDN path.** From the mean-free start the class means are about 1e-3 in norm and their
  unit-norm scaling inflates the DDN gradient.  The rule: the inflation explains an optimiser's
  cell when the implicit ETF with the DDN gradient off reaches the loss threshold in strictly
  fewer median steps than with it on.
* **A start without the inflation** (class offsets 1e-2): the paper's order holds in a size when
  the implicit ETF's median steps to the loss threshold are strictly below both others'.

Counts are integers (``inf`` for never), compared exactly.  Book: the UFM-scaling chapter.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..core.methods import PAPER_METHODS
from .measures import median_of, step_counts

__all__ = ["depth_effect", "ddn_effect", "offset_effect", "quick_cells"]

KEY = "steps_to_loss"


def _median(runs, config, variant, method, key=KEY) -> Optional[float]:
    counts = step_counts(runs, config, variant, method, key)
    return None if not counts else median_of(counts)


def depth_effect(nhs_runs: Sequence[Mapping[str, Any]], conf_runs: Sequence[Mapping[str, Any]],
                 config: str) -> Optional[Dict[str, Any]]:
    """The depth rule at one UFM size: the medians under AGD as run (``standard``, ``fixed``,
    ``implicit``) and with equal depth (``fixed_equal``, ``implicit_equal``), the tolerance and
    ``explained``; ``None`` until every run is there."""
    med = {m: _median(nhs_runs, config, "agd", m) for m in PAPER_METHODS}
    med.update({f"{m}_equal": _median(conf_runs, config, "agd_equal_depth", m) for m in ("fixed", "implicit")})
    if any(v is None for v in med.values()):
        return None
    std = med["standard"]
    tol = math.ceil(0.1 * std) if math.isfinite(std) else 0
    explained = all(abs(med[f"{m}_equal"] - std) <= tol for m in ("fixed", "implicit")) if math.isfinite(std) \
        else all(math.isinf(med[f"{m}_equal"]) for m in ("fixed", "implicit"))
    return {"config": config, **med, "tolerance": tol, "explained": explained}


def ddn_effect(nhs_runs: Sequence[Mapping[str, Any]], conf_runs: Sequence[Mapping[str, Any]], config: str,
               optimiser: str) -> Optional[Dict[str, Any]]:
    """The DDN rule in one cell: the implicit ETF's median steps to the loss threshold with the
    DDN gradient on (``ufm_no_head_start``) and off (``<optimiser>_ddn_off``), the best other
    method's median, and ``explained``; ``None`` until every run is there."""
    on = _median(nhs_runs, config, optimiser, "implicit")
    off = _median(conf_runs, config, f"{optimiser}_ddn_off", "implicit")
    others = [_median(nhs_runs, config, optimiser, m) for m in ("standard", "fixed")]
    if on is None or off is None or any(v is None for v in others):
        return None
    return {"config": config, "optimiser": optimiser, "on": on, "off": off, "best_other": min(others),
            "explained": off < on, "off_fastest": off < min(others)}


def offset_effect(conf_runs: Sequence[Mapping[str, Any]], config: str,
                  variant: str = "agd_offset_1e-2") -> Optional[Dict[str, Any]]:
    """The start with larger class offsets at one size: each method's median steps to the loss
    threshold and to 100% training accuracy, the accuracy before the first step, and whether the
    paper's order holds (implicit strictly first to the loss threshold)."""
    med = {m: _median(conf_runs, config, variant, m) for m in PAPER_METHODS}
    if any(v is None for v in med.values()):
        return None
    fit = {m: _median(conf_runs, config, variant, m, "steps_to_fit") for m in PAPER_METHODS}
    acc0 = {m: median_of([float(r["train_top1_step0"]) for r in conf_runs
                          if (r["config"], r["variant"], r["method"]) == (config, variant, m)
                          and r.get("train_top1_step0") is not None] or [math.nan]) for m in PAPER_METHODS}
    return {"config": config, "loss": med, "fit": fit, "accuracy_step0": acc0,
            "order_holds": med["implicit"] < min(med["standard"], med["fixed"])}


def quick_cells(runs: Sequence[Mapping[str, Any]], *, at_most: int = 2,
                keys: Sequence[str] = ("steps_to_loss", "steps_to_fit")) -> List[Dict[str, Any]]:
    """The (size, optimiser, measure) cells where every method's median count is at most
    ``at_most`` steps: there the comparison barely separates the methods."""
    out = []
    for config in dict.fromkeys(r["config"] for r in runs):
        for variant in dict.fromkeys(r["variant"] for r in runs if r["config"] == config):
            for key in keys:
                med = {m: _median(runs, config, variant, m, key) for m in PAPER_METHODS}
                if all(v is not None and v <= at_most for v in med.values()):
                    out.append({"config": config, "variant": variant, "key": key, **med})
    return out
