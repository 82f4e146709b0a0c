"""The learning-rate rule of the head-start-free UFM comparison, applied to its grid's results.

The grid (``configs/experiments/ufm_lr_selection.yaml``) trains the *standard* classifier with
Adam and SGD at a few learning rates on tuning seeds; :func:`select_learning_rates` picks, for
every UFM size and optimiser, the rate the rule names, and the comparison
(``configs/experiments/ufm_no_head_start.yaml``) uses that rate for all three methods.  The rule
was fixed before the grid ran:

1. the smallest median ``steps_to_loss`` over the tuning seeds (a run that never gets within the
   threshold counts as infinitely many steps);
2. ties go to the smaller learning rate;
3. if no rate gets within the threshold, the lowest median final training loss.

Book: the UFM-scaling chapter, section "Without the head start".
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Mapping, Sequence, Tuple

__all__ = ["select_learning_rates", "selection_table"]


def _steps(row: Mapping[str, Any]) -> float:
    s = row.get("steps_to_loss")
    return math.inf if s is None or row.get("reached_loss") is False else int(s)


def _candidates(runs: Sequence[Mapping[str, Any]]) -> Dict[Tuple[str, str], Dict[float, List[Mapping[str, Any]]]]:
    out: Dict[Tuple[str, str], Dict[float, List[Mapping[str, Any]]]] = {}
    for r in runs:
        if r.get("method") != "standard":
            continue
        if r.get("lr") is None or r.get("optimizer") is None:
            raise ValueError(f"run {r.get('config')}/{r.get('variant')}/{r.get('seed')} records no optimizer/lr")
        out.setdefault((r["config"], str(r["optimizer"])), {}).setdefault(float(r["lr"]), []).append(r)
    return out


def select_learning_rates(runs: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, float]]:
    """``{config: {optimizer: lr}}`` chosen by the rule of this module from the grid's ``runs``
    (rows of its ``runs.csv``, with ``optimizer``, ``lr``, ``steps_to_loss``, ``train_loss``)."""
    chosen: Dict[str, Dict[str, float]] = {}
    for (config, opt), by_lr in _candidates(runs).items():
        def key(lr: float):
            rows = by_lr[lr]
            return statistics.median(_steps(r) for r in rows), lr

        best = min(by_lr, key=key)
        if math.isinf(key(best)[0]):
            best = min(by_lr, key=lambda lr: (statistics.median(float(r["train_loss"]) for r in by_lr[lr]), lr))
        chosen.setdefault(config, {})[opt] = best
    return chosen


def selection_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """The grid as a Markdown table: median steps to the loss threshold per (size, optimiser, lr),
    the chosen rate in bold."""
    from ..training.config import load_config

    chosen = select_learning_rates(runs)
    names = {"adam": "Adam", "sgd": "SGD, momentum 0.9", "agd": "AGD"}
    lines = ["| UFM | optimiser | learning rate | median steps to the loss threshold (seeds) | median final loss |",
             "|---|---|---:|---:|---:|"]
    for (config, opt), by_lr in sorted(_candidates(runs).items()):
        for lr in sorted(by_lr):
            rows = by_lr[lr]
            steps = statistics.median(_steps(r) for r in rows)
            loss = statistics.median(float(r["train_loss"]) for r in rows)
            mark = "**" if chosen[config][opt] == lr else ""
            k = load_config(config)
            lines.append(f"| UFM-{k.num_classes} (N={k.num_samples}) | {names.get(opt, opt)} | {mark}{lr:g}{mark} | "
                         f"{'never' if math.isinf(steps) else f'{steps:g}'} ({len(rows)}) | {loss:.4f} |")
    return "\n".join(lines)
