"""Measures of one training run that an experiment records: how many steps until it got somewhere.

Every measure is a count of optimiser steps (an integer, or ``None`` for "not within the
budget"), so comparisons between methods are comparisons of integers, never of floats that
rounding could decide.  Book: the UFM-scaling chapter.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..core.metric_formulas import cross_entropy_lower_bound
from ..training.config import ConfigError
from ..training.tables import band_text

__all__ = ["THRESHOLD_KEYS", "first_fit_step", "steps_to_thresholds", "step_counts", "median_of", "format_steps"]

# Thresholds an experiment may fix (before its runs) for the steps-to-threshold measures.
THRESHOLD_KEYS = ("loss_gap", "nc1", "nc3")


def first_fit_step(accuracies: Sequence[float]) -> Optional[int]:
    """Steps taken before the training accuracy first reaches 100%.

    ``accuracies[i]`` is the accuracy of the parameters after ``i`` steps (it is measured in
    the forward pass of step ``i + 1``), so the answer is the first ``i`` with accuracy 1.
    """
    for i, acc in enumerate(accuracies):
        if acc >= 1.0:
            return i
    return None


def steps_to_thresholds(thresholds: Dict[str, float], step_losses: Optional[Sequence[float]],
                        history: Sequence[Dict[str, Any]], num_classes: int, tau: float) -> Dict[str, Any]:
    """Steps-to-threshold measures of one full-batch run, for the thresholds an experiment fixed.

    * ``steps_to_loss`` (``loss_gap``): the first step count ``t`` at which the training loss is
      within ``loss_gap`` of the cross-entropy lower bound ``L*``, as a fraction of the gap at
      chance-level logits: ``(L_t - L*) / (log C - L*) <= loss_gap``.  ``L_t`` is the full-batch
      loss after ``t`` steps (measured in the forward pass of step ``t + 1``), so it is exact
      at every step.
    * ``steps_to_nc1`` / ``steps_to_nc3``: the first evaluated step at which the train NC1 / NC3
      is at most the threshold (at the resolution of ``eval_every``).
    Each comes with ``reached_<name>`` (``False``: never within the budget, and the step is
    ``None``).  Integers throughout: they are compared as counts, never as floats.
    """
    out: Dict[str, Any] = {}
    unknown = sorted(set(thresholds) - set(THRESHOLD_KEYS))
    if unknown:
        raise ConfigError(f"unknown threshold(s) {', '.join(unknown)}; valid: {', '.join(THRESHOLD_KEYS)}")
    if "loss_gap" in thresholds and step_losses:
        bound = cross_entropy_lower_bound(int(num_classes), float(tau))
        scale = math.log(num_classes) - bound
        hit = next((t for t, loss in enumerate(step_losses) if (loss - bound) / scale <= thresholds["loss_gap"]), None)
        out["steps_to_loss"], out["reached_loss"] = hit, hit is not None
    for key in ("nc1", "nc3"):
        if key in thresholds:
            rows = [r for r in history if r.get(f"train_{key}") is not None]
            hit = next((int(r["step"]) for r in rows if r[f"train_{key}"] <= thresholds[key]), None)
            out[f"steps_to_{key}"], out[f"reached_{key}"] = hit, hit is not None
    return out



def step_counts(runs: Sequence[Mapping[str, Any]], config: str, variant: str, method: str,
                key: str) -> Optional[List[float]]:
    """Every seed's count of measure ``key`` (``steps_to_fit``, ``steps_to_loss``, ...) for one
    (config, variant, method) of an experiment's runs: integers, ``inf`` for a run that never got
    there; ``None`` when the runs do not record the measure."""
    flag = "fitted" if key == "steps_to_fit" else "reached_" + key[len("steps_to_"):]
    out: List[float] = []
    for r in runs:
        if (r.get("config"), r.get("variant"), r.get("method")) != (config, variant, method):
            continue
        if key not in r and flag not in r:
            return None
        v = r.get(key)
        out.append(math.inf if v is None or r.get(flag) is False else int(v))
    return out or None


def median_of(values: Sequence[float]) -> float:
    """The median (the mean of the two middle values for an even count; ``inf`` counts as largest)."""
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def format_steps(values: Optional[Sequence[float]]) -> str:
    """``median [min, max]`` of step counts, ``never`` for an infinite one, ``–`` for none."""
    if not values:
        return "–"
    return band_text(median_of(values), min(values), max(values), fmt="g")
