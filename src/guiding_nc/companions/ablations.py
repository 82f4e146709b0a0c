"""The ablation chapter's reading of its results (book chapter "Ablations"): the sentences that
quote the committed numbers, written from the summary so that no number in them is typed by hand.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from ..experiments.results import summary_cell
from .tables import Table, band, label, power_text, table

__all__ = ["DELTAS", "PAIRS", "DELTA_KEYS", "method_of", "reading", "loss_bound", "delta_tables"]

# The delta sweep: {variant: delta}; "implicit" is the paper's 1e-3.
DELTAS = {"delta_1e-5": 1e-5, "delta_1e-4": 1e-4, "implicit": 1e-3, "delta_1e-2": 1e-2, "delta_1e-1": 1e-1,
          "delta_1e0": 1.0}
# The comparisons of two variants each: (what is switched, first, second).
PAIRS = (("DDN gradient", "implicit", "implicit_no_ddn"),
         ("normalisation", "standard", "standard_no_norm"),
         ("rotation", "fixed", "fixed_random"))


# The measures of the delta table, per setup: three a column fits at 1280 px.
DELTA_KEYS = {"ufm10": ("steps_to_loss", "train_loss", "train_nc3"),
              "digits_mlp": ("train_top1", "test_top1", "train_nc3")}


def delta_tables(S: Mapping[str, Any], titles: Mapping[str, str]) -> Table:
    """One table per setup: a row per delta, a column per measure (:data:`DELTA_KEYS`), each cell
    median [min, max] over the seeds of the implicit ETF."""
    parts = []
    for config, title in titles.items():
        keys = DELTA_KEYS.get(config, ("train_loss", "train_top1", "train_nc3"))
        rows = [[f"δ = {power_text(d)}"] + [band(k, (S.get(f"{config}/{v}/implicit") or {}).get(k)) for k in keys]
                for v, d in DELTAS.items()]
        parts.append(f"**{title}**\n\n" + table(["", *(label(k) for k in keys)], rows))
    return Table("\n\n".join(parts) + "\n\nThe implicit ETF at each δ, median [min, max] over the seeds "
                 "(one number where they agree when rounded).")


def method_of(spec) -> dict:
    """``{variant: the method it trains}`` of an experiment spec (its first method)."""
    return {v: (spec.variants[v].get("methods") or spec.methods)[0] for v in spec.variants}


def _med(S, group: str, key: str, scale: float = 1.0) -> Optional[float]:
    cell = summary_cell(S, group, key, scale)
    return None if cell is None else cell[0]


def _rng(S, group: str, key: str) -> str:
    cell = summary_cell(S, group, key)
    return "–" if cell is None else f"{cell[1]:.4g}–{cell[2]:.4g}"


def reading(S: Mapping[str, Any], methods: Mapping[str, str], *, ufm: str = "ufm10",
            real: str = "digits_mlp") -> str:
    """The chapter's reading of the committed runs, as Markdown bullets."""
    u = lambda v: f"{ufm}/{v}/{methods[v]}"  # noqa: E731
    g = lambda v: f"{real}/{v}/{methods[v]}"  # noqa: E731
    te = "test_top1"

    def pct(v: str) -> str:
        m = _med(S, g(v), te, 100.0)
        return "–" if m is None else f"{m:.1f}%"

    def num(group: str, key: str, fmt: str = "g") -> str:
        m = _med(S, group, key)
        return "–" if m is None else f"{m:{fmt}}"

    lines = [
        "* **DDN gradient.** From the mean-free start on UFM-10 the implicit ETF gets within 1% of the "
        f"loss bound's gap in {num(u('implicit'), 'steps_to_loss')} steps (median; "
        f"{_rng(S, u('implicit'), 'steps_to_loss')}) with the gradient through $U^\\star$ and in "
        f"{num(u('implicit_no_ddn'), 'steps_to_loss')} ({_rng(S, u('implicit_no_ddn'), 'steps_to_loss')}) "
        f"without it; it classifies every sample after {num(u('implicit'), 'steps_to_fit')} and "
        f"{num(u('implicit_no_ddn'), 'steps_to_fit')} steps. On digits the median final test accuracy is "
        f"{pct('implicit')} with it and {pct('implicit_no_ddn')} without. The gradient through $U^\\star$ "
        "reaches the features only through the current batch's share of the moving average of class "
        "means, $\\alpha_t = 2/(t+1)$, which is small after the first steps; the summary page applies its "
        "rule.",
        "* **Normalisation.** Without feature and weight normalisation the standard method needs "
        f"{num(u('standard_no_norm'), 'steps_to_fit')} steps to fit UFM-10 against "
        f"{num(u('standard'), 'steps_to_fit')} with them, and after 500 steps its loss is "
        f"{num(u('standard_no_norm'), 'train_loss', '.3g')} against {num(u('standard'), 'train_loss', '.3g')} "
        "(there is no lower bound without the temperature and the sphere); on digits its final test "
        f"accuracy is {pct('standard_no_norm')} against {pct('standard')}.",
        "* **Rotation of the fixed ETF.** On UFM-10 the orientation is irrelevant, as it must be: the free "
        f"features align with any frame ({num(u('fixed'), 'steps_to_loss')} steps to the loss threshold with "
        f"the canonical ETF, {num(u('fixed_random'), 'steps_to_loss')} with a random one; the two loss curves "
        f"lie on top of each other). On digits the two end at {pct('fixed')} and {pct('fixed_random')} test "
        "accuracy. An earlier version of this page found the canonical ETF far behind on digits; that was "
        "the dead-unit defect explained in {chapter}`09_real_images` (the canonical ETF reads only the first C feature "
        "coordinates, which the network's final ReLU had switched off), fixed since.",
        "* **δ.** From $10^{-5}$ to $1$, the steps to the loss threshold on UFM-10 are "
        + ", ".join(f"{num(u(v), 'steps_to_loss')} (δ = {power_text(d)})" for v, d in DELTAS.items())
        + "; on digits the median final test accuracy ranges over "
        + ", ".join(pct(v) for v in DELTAS) + " for the same δ.",
    ]
    return "In the committed runs (the tables above):\n\n" + "\n".join(lines)


def loss_bound(ufm: str = "ufm10") -> Tuple[str, float]:
    """``(config, lower bound of its cross-entropy)`` from the config's classes and temperature."""
    from ..core.metric_formulas import cross_entropy_lower_bound
    from ..training.config import load_config

    cfg = load_config(ufm)
    return ufm, cross_entropy_lower_bound(cfg.num_classes, cfg.tau)
