"""What each difference between the two protocols does: the one-difference-at-a-time experiment
(``configs/experiments/protocol_switches.yaml``) read by the rule written in it before the runs.

Each variant ``<base>+<option>`` switches one protocol option (:mod:`guiding_nc.training.protocol`)
away from the base protocol ``<base>`` (``paper`` or ``one_switch``) toward the other, for the
methods the option touches.  The rule: a difference *matters* for a method on a dataset when
switching it alone moves that method's median final train top-1 by more than the seed range
(max - min) of the base protocol's runs of that method there, all counted in correctly
classified training samples (integers).

Book: the real-images chapter ("What each difference does").
"""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..core.methods import PAPER_METHODS
from ..training.protocol import OPTION_KEYS, protocol_values

__all__ = ["BASES", "correct_counts", "switch_effects"]

BASES = ("paper", "one_switch")


def correct_counts(runs: Sequence[Mapping[str, Any]], config: str, variant: str, method: str,
                   split: str = "train") -> Optional[List[int]]:
    """Correctly classified ``split`` samples at the end of each seed's run (integers, in seed
    order), from the recorded accuracy and sample count; ``None`` when there are no such runs."""
    out = []
    for r in sorted((r for r in runs if (r["config"], r["variant"], r["method"]) == (config, variant, method)),
                    key=lambda r: int(r["seed"])):
        frac, n = r.get(f"{split}_top1"), r.get(f"{split}_n")
        if frac is None or n is None:
            return None
        out.append(int(round(float(frac) * int(n))))
    return out or None


def _band(counts: Sequence[int], n: int) -> Dict[str, float]:
    return {"median": 100.0 * statistics.median(counts) / n, "min": 100.0 * min(counts) / n,
            "max": 100.0 * max(counts) / n}


def switch_effects(runs: Sequence[Mapping[str, Any]], config: str) -> List[Dict[str, Any]]:
    """One row per (base protocol, switched option, method) of ``config``: the base's and the
    switched runs' final train and test top-1 (%, median/min/max over seeds), the change of the
    median in correctly classified training samples, the base's seed range in samples, and
    ``matters`` (the rule above).  Rows whose runs are not all there yet have ``complete: False``
    and no verdict."""
    values = {b: protocol_values(b) for b in BASES}
    variants = list(dict.fromkeys(r["variant"] for r in runs if r["config"] == config))
    rows: List[Dict[str, Any]] = []
    n_train = next((int(r["train_n"]) for r in runs if r["config"] == config and r.get("train_n")), None)
    n_test = next((int(r["test_n"]) for r in runs if r["config"] == config and r.get("test_n")), None)
    for base in BASES:
        for option in OPTION_KEYS:
            name = f"{base}+{option}"
            if name not in variants:
                continue
            for m in PAPER_METHODS:
                switched = correct_counts(runs, config, name, m)
                if switched is None:
                    continue
                reference = correct_counts(runs, config, base, m)
                row: Dict[str, Any] = {"config": config, "base": base, "option": option, "method": m,
                                       "from": values[base][option],
                                       "to": [v for b, v in ((b, values[b][option]) for b in BASES) if b != base][0]
                                       if option != "agd_depth" else "layers",
                                       "seeds": len(switched), "complete": reference is not None
                                       and len(reference) == len(switched)}
                row["train"] = _band(switched, n_train)
                test = correct_counts(runs, config, name, m, "test")
                row["test"] = _band(test, n_test) if test and n_test else None
                if reference is not None:
                    row["base_train"] = _band(reference, n_train)
                    ref_test = correct_counts(runs, config, base, m, "test")
                    row["base_test"] = _band(ref_test, n_test) if ref_test and n_test else None
                    row["change_samples"] = statistics.median(switched) - statistics.median(reference)
                    row["base_range_samples"] = max(reference) - min(reference)
                if row["complete"]:
                    row["matters"] = abs(row["change_samples"]) > row["base_range_samples"]
                rows.append(row)
    return rows
