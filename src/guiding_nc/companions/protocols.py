"""The real-images chapter's tables: the two protocols, their runs side by side, what each
difference does, and the paper's own Tables 1-2 (quoted, with their seed ranges).

Every table is one call and goes through :mod:`guiding_nc.companions.tables` (labels, rounding,
the best method in bold).  Book: chapter "Real images" and the reproduction summary.
"""
from __future__ import annotations

import statistics
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ..core.methods import PAPER_METHODS, label as method_label
from ..experiments import paper
from ..experiments.protocol_effects import switch_effects
from ..experiments.results import report_epoch_key
from ..experiments.spec import load_experiment
from ..training.protocol import OPTIONS
from .tables import Band, Table, band, table

__all__ = ["options_table", "protocols_table", "switches_table", "missing_switches_text", "method_switches_text",
           "matters_text", "paper_table", "PROTOCOL_LABELS"]

PROTOCOL_LABELS = {"paper": "released", "one_switch": "one-switch"}


def _choice(v: Any) -> str:
    return f"`{str(v).lower() if isinstance(v, bool) else v}`"


def options_table() -> Table:
    """Every protocol option: the code release's choice, the one-switch protocol's, and the method
    it touches."""
    rows = [[f"`{o.key}`", _choice(o.paper), _choice(o.one_switch), o.family or "every method"] for o in OPTIONS]
    return table(["option", "released (`paper`)", "`one_switch`", "applies to"], rows, align="llll")


def protocols_table(results: Mapping[str, Mapping[str, Any]], config: str,
                    keys: Sequence[str] = ("train_top1", "test_top1")) -> Table:
    """The runs of ``config`` under each protocol (``results``: {protocol: loaded results}), one
    row per (quantity, protocol), one column per method, at the last report epoch; the best
    method of each row in bold."""
    rows, best, seeds = [], [], set()
    for key in keys:
        for protocol, res in results.items():
            S = res["summary"]
            k = report_epoch_key(S, config, key) or key
            cells = [band(k, (S.get(f"{config}/default/{m}") or {}).get(k)) for m in PAPER_METHODS]
            seeds |= {len((S.get(f"{config}/default/{m}") or {}).get("seeds") or []) for m in PAPER_METHODS}
            rows.append([f"{_quantity(k)}, {PROTOCOL_LABELS.get(protocol, protocol)}"] + cells)
            best.append("higher")
    dead = [(p, res) for p, res in results.items()]
    for protocol, res in dead:
        S = res["summary"]
        cells = [band("train_dead_units", (S.get(f"{config}/default/{m}") or {}).get("train_dead_units"))
                 for m in PAPER_METHODS]
        if any(c.median for c in cells):
            rows.append([f"dead feature units, {PROTOCOL_LABELS.get(protocol, protocol)}"] + cells)
            best.append(None)
    n = "/".join(str(s) for s in sorted(seeds - {0})) or "the"
    return table(["", *(method_label(m) for m in PAPER_METHODS)], rows, best=best,
                 note=f"Median [min, max] over {n} seeds at the last report epoch; bold: the best method of the "
                      "row. Dead units: feature coordinates that are zero on every training sample.")


def _quantity(key: str) -> str:
    name, _, epoch = key.partition("@")
    what = {"train_top1": "train top-1 (%)", "test_top1": "test top-1 (%)"}.get(name, name)
    return f"{what}, epoch {epoch}" if epoch else what


def switches_table(runs: Sequence[Mapping[str, Any]], config: str, base: str) -> Table:
    """The one-difference-at-a-time table of ``config`` from the ``base`` protocol: the base's own
    runs first, then one row per (switched option, method) with its final train and test top-1,
    the change of the median in correctly classified training samples against the base, the
    base's seed range in samples, and whether the difference matters by the rule
    (:mod:`guiding_nc.experiments.protocol_effects`)."""
    rows_in = [r for r in switch_effects(runs, config) if r["base"] == base]
    rows = []
    base_rows = {}
    for r in rows_in:
        if "base_train" in r and r["method"] not in base_rows:
            base_rows[r["method"]] = r
    for m in PAPER_METHODS:
        r = base_rows.get(m)
        if r is not None:
            rows.append([f"{PROTOCOL_LABELS[base]} protocol", method_label(m), _pct(r["base_train"]),
                         _pct(r.get("base_test")), f"[{r['base_range_samples']}]", ""])
    for r in rows_in:
        change = "" if "change_samples" not in r else f"{r['change_samples']:+g} [{r['base_range_samples']}]"
        verdict = "" if "matters" not in r else ("**yes**" if r["matters"] else "no")
        who = method_label(r["method"]) + ("" if r["complete"] else f" ({r['seeds']} seeds so far)")
        rows.append([f"`{r['option']}`<br>{_plain(r['from'])} → {_plain(r['to'])}", who,
                     _pct(r["train"]), _pct(r.get("test")), change, verdict])
    return table(["switched", "method", "train top-1 (%)", "test top-1 (%)", "change [base range]", "matters"],
                 rows, align="llrrrl",
                 note="Final train and test top-1, median [min, max] over the seeds. Change: the switched runs' "
                      "median number of correctly classified training samples minus the base's, and in brackets "
                      "the base's seed range (max - min) in samples; the difference matters when the change is "
                      "larger than that range.")


def missing_switches_text(runs: Sequence[Mapping[str, Any]], config: str, experiment: str = "protocol_switches") -> str:
    """The (variant, method) cells of ``config`` that do not hold all their seeds yet, and the
    command that adds them (the runs that are there are kept); ``""`` when every run is in."""
    # The grid's own runs (ExperimentSpec.jobs: variants' methods, per-config seeds), per cell.
    want: Dict[Tuple[str, str], int] = {}
    for job in load_experiment(experiment).jobs():
        if job["config"] == config:
            want[job["variant"], job["method"]] = want.get((job["variant"], job["method"]), 0) + 1
    gaps = []
    for (name, m), n in want.items():
        have = sum(1 for r in runs if (r["config"], r["variant"], r["method"]) == (config, name, m))
        if have < n:
            gaps.append(f"`{name}` {method_label(m)} ({have} of {n})")
    if not gaps:
        return ""
    return (f"Not in yet: {', '.join(gaps)}. They have no row or no verdict above; to add them: "
            f"`python -m guiding_nc.experiments.reproduce {experiment} --configs {config} --threads 1` "
            "(the runs already made are kept).")


def _top1_dead(top1: float, runs: Sequence[Mapping[str, Any]], config: str, variant: str, method: str) -> str:
    """``"26.0% (22 dead)"``: a median top-1 and the median dead feature units of the same runs."""
    dead = [float(r["train_dead_units"]) for r in runs if (r["config"], r["variant"], r["method"]) == (config, variant, method)
            and r.get("train_dead_units") not in (None, "")]
    return f"{top1:.1f}%" + (f" ({statistics.median(dead):g} dead)" if dead else "")


def method_switches_text(runs: Sequence[Mapping[str, Any]], config: str, method: str = "fixed") -> str:
    """One method's switches on one dataset as a list, one line per base protocol: the base's median
    final train top-1 and median dead feature units, then each single switch's (rows of
    :func:`~guiding_nc.experiments.protocol_effects.switch_effects`; dead units as the runs record them)."""
    from ..training.config import config_title

    effects = [r for r in switch_effects(runs, config) if r["method"] == method]
    lines = []
    for base, label in PROTOCOL_LABELS.items():
        rows = [r for r in effects if r["base"] == base and "base_train" in r]
        if not rows:
            continue
        lines.append(f"* from the {label} protocol, "
                     f"{_top1_dead(rows[0]['base_train']['median'], runs, config, base, method)}: "
                     + "; ".join(f"`{r['option']}` alone "
                                 + _top1_dead(r["train"]["median"], runs, config, f"{base}+{r['option']}", method)
                                 for r in rows))
    if not lines:
        return ""
    return (f"The {method_label(method)} on {config_title(config)}, median final train top-1 (and median number of "
            "dead feature units):\n\n" + "\n".join(lines))


def _plain(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v).replace("_", " ")


def matters_text(effects: Sequence[Mapping[str, Any]]) -> str:
    """The switches that matter by the rule (rows of
    :func:`~guiding_nc.experiments.protocol_effects.switch_effects`), as one sentence: per dataset
    and base protocol, each option, method and change in samples; "none" where none does."""
    from ..training.config import config_title

    parts = []
    for config in dict.fromkeys(r["config"] for r in effects):
        for base in PROTOCOL_LABELS:
            hits = [r for r in effects if r["config"] == config and r["base"] == base and r.get("matters")]
            where = f"{config_title(config)}, from the {PROTOCOL_LABELS[base]} protocol"
            if not hits:
                parts.append(f"{where}: none")
                continue
            parts.append(f"{where}: " + ", ".join(
                f"`{r['option']}` for the {method_label(r['method'])} ({r['change_samples']:+g} samples, base range "
                f"{r['base_range_samples']})" for r in hits))
    return "; ".join(parts) + "."


def _pct(b: Optional[Mapping[str, float]]) -> Band:
    if not b:
        return Band(None, kind="percent")
    return Band(b["median"] / 100, b["min"] / 100, b["max"] / 100, kind="percent")  # the band kind scales fractions


def paper_table(which: str = "train", epoch: int = 200) -> Table:
    """The paper's Table 1 (``which="train"``) or 2 (``"test"``) at ``epoch`` (50 or 200), quoted:
    one row per dataset and network, the median and the seed range printed beside it, the
    best median of the row in bold (the paper's own numbers; this package did not compute them)."""
    med, rng = (paper.TABLE1, paper.TABLE1_RANGE) if which == "train" else (paper.TABLE2, paper.TABLE2_RANGE)
    i = {50: 0, 200: 1}[epoch]
    rows = [[name] + [Band(cells[m][i] / 100, rng[name][m][i][0] / 100, rng[name][m][i][1] / 100, kind="percent")
                      for m in PAPER_METHODS] for name, cells in med.items()]
    return table(["dataset, network", *(method_label(m) for m in PAPER_METHODS)], rows, best=["higher"] * len(rows),
                 note=f"The paper's Table {1 if which == 'train' else 2}, {which} top-1 (%) at epoch {epoch}: median "
                      "[min, max] over its 5 seeds, as printed; bold: the best median of the row.")
