"""The UFM-scaling chapter's readings: what its result files say, as tables and as sentences
computed from them (nothing in the chapter's prose is typed by hand).

Book: chapter "UFM scaling".
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..core.methods import PAPER_METHODS, label as method_label
from ..core.metric_formulas import cross_entropy_lower_bound, max_cosine_margin
from ..experiments import confounds
from ..experiments.measures import median_of, step_counts
from ..experiments.results import is_finite_number
from ..training.config import load_config
from .plotting.head_start import OPTIMISER_TITLES
from .tables import Band, Table, band, table

__all__ = ["ufm_title", "completed_configs", "head_start_lines", "head_start_reading", "coverage_lines",
           "budget_agreement_lines", "end_gap_lines", "paper_budget_reading", "ufm1000_text", "no_head_start_reading",
           "timescale_table", "timescale_reading", "protocol_agreement", "depth_table", "ddn_table", "offset_table",
           "paths_table", "quick_cells_text", "confounds_reading"]


def ufm_title(config: str, *, samples: bool = True) -> str:
    """``"UFM-100 (N=5000, d=1024)"`` from the config file."""
    k = load_config(config)
    return f"UFM-{k.num_classes} (N={k.num_samples}, d={k.feature_dim})" if samples else f"UFM-{k.num_classes}"


def completed_configs(res: Mapping[str, Any], configs: Sequence[str], variant: str = "default",
                      methods: Sequence[str] = PAPER_METHODS) -> List[str]:
    """The configs for which every method has at least one finished run."""
    return [c for c in configs if all(f"{c}/{variant}/{m}" in res["summary"] for m in methods)]


def _step0(res, config: str, method: str, variant: str = "default") -> float:
    return statistics.median(a[0] for k, a in res["step_accuracy"].items()
                             if k.startswith(f"{config}/{variant}/{method}/") and a)


def _snr(config: str) -> float:
    k = load_config(config)
    n = k.num_samples // k.num_classes
    return math.sqrt(k.feature_dim / n) / math.sqrt(2 * math.log(k.num_classes))


def head_start_lines(res: Mapping[str, Any], configs: Sequence[str]) -> str:
    """Per size: chance, the ratio ``sqrt(d/n)/sqrt(2 ln C)`` and each method's training accuracy
    before the first update (median over seeds)."""
    lines = []
    for c in configs:
        k = load_config(c)
        lines.append(f"{ufm_title(c):>30}: chance {100 / k.num_classes:.1f}%, sqrt(d/n)/sqrt(2 ln C) = {_snr(c):.2f}; "
                     "at step 0: " + ", ".join(f"{m} {100 * _step0(res, c, m):.1f}%" for m in PAPER_METHODS))
    return "\n".join(lines)


def _span(values: Sequence[float]) -> str:
    if not values:
        return "never"
    lo, hi = min(values), max(values)
    return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"


def _fit_values(res, config: str, method: str, variant: str = "default") -> List[float]:
    cell = res["summary"].get(f"{config}/{variant}/{method}", {}).get("steps_to_fit") or {}
    return [v for v in cell.get("values", []) if v is not None]


def _order(res, config: str) -> Optional[Tuple[List[str], Dict[str, float]]]:
    med = {m: res["summary"][f"{config}/default/{m}"]["steps_to_fit"]["median"] for m in PAPER_METHODS}
    if any(v is None for v in med.values()):
        return None
    return sorted(PAPER_METHODS, key=lambda m: med[m]), med


def head_start_reading(res: Mapping[str, Any], configs: Sequence[str]) -> str:
    """The reading of the random start: per size the implicit classifier's accuracy at step 0 and
    its steps to fit, the others' steps, and where the paper's order holds (strictly, by median)."""
    parts = []
    for c in configs:
        k = load_config(c)
        parts.append(f"{ufm_title(c)}: $n = {k.num_samples // k.num_classes}$, $d = {k.feature_dim}$, ratio "
                     f"{_snr(c):.1f}; at step 0 the implicit classifier classifies {100 * _step0(res, c, 'implicit'):.0f}% "
                     f"of the random features correctly (chance {100 / k.num_classes:.1f}%), and it fits the training set "
                     f"after {_span(_fit_values(res, c, 'implicit'))} steps")
    others = [v for c in configs for m in ("standard", "fixed") for v in _fit_values(res, c, m)]
    text = "; ".join(parts) + ". "
    if others:
        text += f"The learned and the fixed classifiers need {min(others):g}–{max(others):g} steps across the sizes. "
    held = []
    for c in configs:
        o = _order(res, c)
        held.append(o is not None and len(set(o[1].values())) == len(PAPER_METHODS)
                    and o[0] == ["implicit", "fixed", "standard"])
    text += "The paper's order (implicit < fixed < standard, by median) holds at "
    text += "every size" if all(held) else ((", ".join(ufm_title(c, samples=False) for c, h in zip(configs, held) if h)
                                             or "no size") + " and not at " + ", ".join(
        ufm_title(c, samples=False) for c, h in zip(configs, held) if not h))
    return text + (". Where the implicit classifier is already (nearly) right at step 0, its step count measures that "
                   "head start rather than faster optimisation.")


def coverage_lines(res: Mapping[str, Any], configs: Sequence[str], seeds: Sequence[int]) -> str:
    """Which seeds of each method a (possibly partial) grid holds, per size."""
    lines = []
    for c in configs:
        by = {m: sorted(r["seed"] for r in res["runs"] if r["config"] == c and r["method"] == m) for m in PAPER_METHODS}
        if not any(by.values()):
            lines.append(f"{ufm_title(c):>30}: not run here")
        elif len({tuple(v) for v in by.values()}) == 1:
            lines.append(f"{ufm_title(c):>30}: seeds {by[PAPER_METHODS[0]]} of {list(seeds)}")
        else:
            lines.append(f"{ufm_title(c):>30}: " + ", ".join(f"{m} seeds {v}" for m, v in by.items())
                         + f" of {list(seeds)}")
    return "\n".join(lines)


def budget_agreement_lines(long: Mapping[str, Any], short: Mapping[str, Any], configs: Sequence[str]) -> str:
    """Where two budgets of the same runs overlap: the largest difference of their per-step train
    accuracy, against one sample."""
    lines = []
    for c in configs:
        diffs, steps, pairs = [], 0, 0
        for key, acc in long["step_accuracy"].items():
            other = short["step_accuracy"].get(key) if key.startswith(f"{c}/") else None
            if other:
                n = min(len(acc), len(other))
                diffs.append(max(abs(a - b) for a, b in zip(acc[:n], other[:n])))
                steps, pairs = n, pairs + 1
        if pairs:
            lines.append(f"{ufm_title(c):>30}: {pairs} runs in both sets, first {steps} steps: largest |difference| in "
                         f"train accuracy {max(diffs):.4f} (one sample = {1 / load_config(c).num_samples:.4f})")
    return "\n".join(lines)


def _gaps(cell: Mapping[str, Any], config: str) -> Tuple[float, float]:
    k = load_config(config)
    bound, cm_max = cross_entropy_lower_bound(k.num_classes, k.tau), float(max_cosine_margin(k.num_classes))
    return ((cell["train_loss"]["median"] - bound) / bound,
            (cell["train_cosine_margin_mean"]["median"] - cm_max) / cm_max)


def end_gap_lines(res: Mapping[str, Any], configs: Sequence[str]) -> str:
    """Per size and method: the final loss relative to its lower bound and the mean cosine margin
    relative to its maximum (medians over seeds)."""
    lines = []
    for c in configs:
        k = load_config(c)
        cells = []
        for m in PAPER_METHODS:
            gl, gm = _gaps(res["summary"][f"{c}/default/{m}"], c)
            cells.append(f"{m}: loss {gl:+.1e}, margin {gm:+.1e}")
        lines.append(f"{ufm_title(c):>30} (bound {cross_entropy_lower_bound(k.num_classes, k.tau):.4f}, max margin "
                     f"{float(max_cosine_margin(k.num_classes)):.4f}): " + "; ".join(cells))
    return "\n".join(lines)


def _sci(x: float) -> str:
    return f"{x:.1e}".replace("e-0", "e-").replace("e+0", "e+")


def _lo_hi(values: Sequence[float], fmt=_sci) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)} to {fmt(hi)}"


def paper_budget_reading(long: Mapping[str, Any], short: Mapping[str, Any], configs: Sequence[str]) -> str:
    """The longer budget read against the shorter: runs that fit at the same step in both, and per
    method the range over the sizes of its final gaps to the loss bound and the margin maximum,
    NC1 and NC3."""
    lines = []
    same = differ = 0
    for r in long["runs"]:
        twin = next((o for o in short["runs"] if all(o[f] == r[f] for f in ("config", "method", "seed"))), None)
        if twin is not None:
            same += twin.get("steps_to_fit") == r.get("steps_to_fit")
            differ += twin.get("steps_to_fit") != r.get("steps_to_fit")
    if same + differ:
        lines.append(f"* **The longer budget and the step counts.** Of the {same + differ} runs in both sets, {same} fit "
                     "the training set at the same step in both" + (f" and {differ} do not" if differ else "") + ".")
    for m in PAPER_METHODS:
        rows = [(_gaps(long["summary"][f"{c}/default/{m}"], c), long["summary"][f"{c}/default/{m}"]) for c in configs]
        if rows:
            lines.append(f"* **{method_label(m)}** over " + ", ".join(ufm_title(c, samples=False) for c in configs)
                         + f": final loss {_lo_hi([g[0] for g, _ in rows])} relative to the bound; mean cosine margin "
                         f"{_lo_hi([g[1] for g, _ in rows])} relative to its maximum; NC1 "
                         f"{_lo_hi([cell['train_nc1']['median'] for _, cell in rows])}; NC3 "
                         f"{_lo_hi([cell['train_nc3']['median'] for _, cell in rows])}.")
    return "\n".join(lines) if lines else "No paper-budget results to read."


def _finals(res, config: str, method: str, key: str) -> List[float]:
    return [r[key] for r in res["runs"] if r["config"] == config and r["method"] == method
            and is_finite_number(r.get(key))]


def ufm1000_text(res: Mapping[str, Any], config: str = "ufm1000") -> str:
    """The UFM-1000 runs the paper-budget files hold, per method, and which are missing."""
    k = load_config(config)
    have = {m: sorted(r["seed"] for r in res["runs"] if r["config"] == config and r["method"] == m)
            for m in PAPER_METHODS}
    missing = [m for m, s in have.items() if not s]
    text = []
    if missing:
        text.append("The committed paper-budget files hold no UFM-1000 runs of "
                    + " and ".join(method_label(m) for m in missing)
                    + ": those methods changed (every head now centres its logits by the running global mean), their "
                      "earlier runs were dropped, and a 2000-step UFM-1000 run takes about an hour on this CPU; "
                      "`make gpu-check` runs them on a GPU. The CPU-budget set above has them for 30 steps.")
    bound, cm_max = cross_entropy_lower_bound(k.num_classes, k.tau), float(max_cosine_margin(k.num_classes))
    for m, seeds in have.items():
        if not seeds:
            continue
        text.append(f"{method_label(m)} (seeds {seeds}): fits the training set after "
                    f"{_lo_hi(_finals(res, config, m, 'steps_to_fit'), lambda v: f'{v:g}')} steps; final loss "
                    f"{_lo_hi(_finals(res, config, m, 'train_loss'), lambda v: f'{v:.6f}')} (bound {bound:.6f}); mean "
                    f"cosine margin {_lo_hi(_finals(res, config, m, 'train_cosine_margin_mean'), lambda v: f'{v:.6f}')} "
                    f"(maximum {cm_max:.6f}); NC1 {_lo_hi(_finals(res, config, m, 'train_nc1'))}, NC3 "
                    f"{_lo_hi(_finals(res, config, m, 'train_nc3'))}.")
    return " ".join(text)


def no_head_start_reading(nhs: Mapping[str, Any], configs: Sequence[str], variants: Sequence[str]) -> str:
    """How often each method is the fastest (ties for each) to the loss threshold and to 100%,
    the slowest median fit of each, and the cells where the implicit ETF is not the fastest to the
    loss threshold."""
    out = []
    for key, what in (("steps_to_loss", "loss threshold"), ("steps_to_fit", "100% accuracy")):
        first, cells = {m: 0 for m in PAPER_METHODS}, 0
        for c in configs:
            for v in variants:
                counts = {m: step_counts(nhs["runs"], c, v, m, key) for m in PAPER_METHODS}
                if any(x is None for x in counts.values()):
                    continue
                med = {m: median_of(x) for m, x in counts.items()}
                cells += 1
                best = min(med.values())
                for m in PAPER_METHODS:
                    first[m] += med[m] == best and not math.isinf(best)
        out.append(f"* **{what}**: of {cells} (size, optimiser) cells, the median run of each method is the fastest "
                   "(ties counted for each) in " + ", ".join(f"{method_label(m)} {first[m]}" for m in PAPER_METHODS) + ".")
    worst: Dict[str, float] = {}
    behind = []
    for c in configs:
        for v in variants:
            fit = {m: step_counts(nhs["runs"], c, v, m, "steps_to_fit") for m in PAPER_METHODS}
            loss = {m: step_counts(nhs["runs"], c, v, m, "steps_to_loss") for m in PAPER_METHODS}
            for m, x in fit.items():
                if x is not None:
                    worst[m] = max(worst.get(m, 0), median_of(x))
            if all(x is not None for x in loss.values()):
                med = {m: median_of(x) for m, x in loss.items()}
                if med["implicit"] > min(med.values()):
                    fastest = min(med, key=med.get)
                    behind.append(f"{ufm_title(c, samples=False)} with {OPTIMISER_TITLES.get(v, v)} "
                                  f"({method_label('implicit')} {med['implicit']:g}, {method_label(fastest)} "
                                  f"{med[fastest]:g})")
    show = lambda x: "never" if math.isinf(x) else f"{x:g}"  # noqa: E731
    out.append("* **slowest median fit** over the cells: "
               + ", ".join(f"{method_label(m)} {show(worst[m])} steps" for m in PAPER_METHODS if m in worst) + ".")
    out.append("* **cells where the implicit ETF is not the fastest to the loss threshold**: "
               + ("; ".join(behind) if behind else "none") + ".")
    return "\n".join(out)


def _ts_cell(ts, variant: str, method: str) -> Mapping[str, Any]:
    c = ts["summary"].get(f"ufm10/{variant}/{method}", {})
    return c.get("epochs_to_fit" if variant == "batch_256" else "steps_to_fit") or {}


def timescale_table(ts: Mapping[str, Any], variants: Sequence[str]) -> Table:
    """Steps (epochs at batch 256) to 100% training accuracy per variant and method."""
    rows = []
    for v in variants:
        rows.append([v + (" (epochs)" if v == "batch_256" else "")]
                    + [band("steps_to_fit", _ts_cell(ts, v, m)) for m in PAPER_METHODS])
    return table(["change", *(method_label(m) for m in PAPER_METHODS)], rows, best=["lower"] * len(rows),
                 note="Steps to 100% training accuracy on UFM-10, median [min, max] over 3 seeds (800 steps at most; "
                      "\"never\": a seed that did not fit); bold: the fastest.")


def timescale_reading(ts: Mapping[str, Any], variants: Sequence[str], seeds: Sequence[int]) -> str:
    """Which changes stretch the standard classifier's time scale past 100 steps, and in how many
    variants the paper's order holds strictly (a "never" counts as slowest)."""
    def med(v, m):
        k = _ts_cell(ts, v, m)
        return None if k.get("missing") or k.get("median") is None else k["median"]

    kept, broken = [], []
    for v in variants:
        meds = {m: med(v, m) for m in PAPER_METHODS}
        ranked = sorted(meds, key=lambda m: (meds[m] is None, meds[m] or 0))
        strict = all(meds[a] is not None and (meds[b] is None or meds[a] < meds[b])
                     for a, b in (("implicit", "fixed"), ("fixed", "standard")))
        shown = ", ".join(f"{method_label(m)} " + ("never" if meds[m] is None else f"{meds[m]:g}") for m in ranked)
        (kept if strict else broken).append(f"{v} ({shown})")

    def std_fit(v):
        k = _ts_cell(ts, v, "standard")
        if k.get("median") is None:
            return "never within 800"
        if k.get("missing"):
            return f"{len(seeds) - k['missing']} of {len(seeds)} seeds fit within 800 steps, median {k['median']:g}"
        return f"median {k['median']:g} steps"

    stretch = [v for v in variants if med(v, "standard") is None or med(v, "standard") >= 100]
    return ("**Reading it.** The time scale is set by the optimiser's step and the features' scale, not by the "
            f"classifier: as here the standard classifier fits in {med('as_here', 'standard'):g} steps; the changes "
            "that stretch it past 100 steps, towards an axis like Fig. 3's, are "
            + ", ".join(f"*{v}* ({std_fit(v)})" for v in stretch) + ". Which of them (if any) the paper used, it does "
            f"not state. The paper's order (implicit fastest, then fixed, then standard) holds strictly in {len(kept)} "
            f"of {len(variants)} variants: {'; '.join(kept)}. " + (f"It does not in: {'; '.join(broken)}." if broken
                                                                  else ""))


def _steps(x: Optional[float]) -> Band:
    return Band(x, kind="count")


def depth_table(nhs_runs, conf_runs, configs: Sequence[str]) -> Table:
    """AGD's depth: steps to the loss threshold (medians) of the three methods as run, and of fixed
    and implicit with the classifier counted as a layer (equal depth), with the rule's verdict."""
    rows = []
    for c in configs:
        e = confounds.depth_effect(nhs_runs, conf_runs, c)
        if e is None:
            rows.append([ufm_title(c, samples=False)] + ["–"] * 6)
            continue
        rows.append([ufm_title(c, samples=False), _steps(e["standard"]), _steps(e["fixed"]), _steps(e["implicit"]),
                     _steps(e["fixed_equal"]), _steps(e["implicit_equal"]),
                     ("yes" if e["explained"] else "no") + f" (±{e['tolerance']})"])
    return table(["UFM", "standard (L = 2)", "fixed (L = 1)", "implicit (L = 1)", "fixed (L = 2)", "implicit (L = 2)",
                  "explained"], rows, align="lrrrrrl",
                 note="Median steps to the loss threshold under AGD from the mean-free start, 5 seeds (\"never\": not "
                      "within 300 steps). Explained: with equal depth, fixed and implicit each within ±10% (rounded "
                      "up) of the standard classifier's median.")


def ddn_table(nhs_runs, conf_runs, configs: Sequence[str], optimisers: Sequence[str] = ("agd", "adam", "sgd")) -> Table:
    """The implicit ETF with the DDN gradient on and off, per size and optimiser: median steps to
    the loss threshold, the best other method's, and the rule's verdict."""
    rows = []
    for c in configs:
        for o in optimisers:
            e = confounds.ddn_effect(nhs_runs, conf_runs, c, o)
            if e is None:
                rows.append([ufm_title(c, samples=False), OPTIMISER_TITLES.get(o, o), "–", "–", "–", "–"])
                continue
            rows.append([ufm_title(c, samples=False), OPTIMISER_TITLES.get(o, o), _steps(e["on"]), _steps(e["off"]),
                         _steps(e["best_other"]), "yes" if e["explained"] else "no"])
    return table(["UFM", "optimiser", "implicit, DDN on", "implicit, DDN off", "best of the others", "explained"],
                 rows, align="llrrrl",
                 note="Median steps to the loss threshold from the mean-free start, 5 seeds. Explained: with the DDN "
                      "gradient off the implicit ETF reaches the threshold in strictly fewer median steps.")


def offset_table(conf_runs, configs: Sequence[str]) -> Table:
    """The start with class offsets 1e-2: accuracy before the first step, steps to the loss
    threshold and to 100% per method; whether the paper's order holds."""
    rows, best = [], []
    for c in configs:
        e = confounds.offset_effect(conf_runs, c)
        if e is None:
            continue
        title = ufm_title(c, samples=False)
        rows.append([title, "train top-1 before the first step (%)"]
                    + [Band(e["accuracy_step0"][m], kind="percent") for m in PAPER_METHODS])
        best.append(None)
        rows.append([title, "steps to the loss threshold"] + [_steps(e["loss"][m]) for m in PAPER_METHODS])
        best.append("lower")
        rows.append([title, "steps to 100% train"] + [_steps(e["fit"][m]) for m in PAPER_METHODS])
        best.append("lower")
    return table(["UFM", "measure", *(method_label(m) for m in PAPER_METHODS)], rows, best=best, align="llrrr",
                 note="AGD from the mean-free start with class offsets 10⁻² (ten times the table above), medians over "
                      "5 seeds; bold: the fastest.")


def paths_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The implicit ETF's feature gradient at step 0 for each start
    (:func:`guiding_nc.experiments.gradient_paths.start_sweep` rows)."""
    return table(["UFM", "class offset", "seed", "DDN / direct", "cosine", "train top-1 at step 0 (%)"],
                 [[ufm_title(r["config"], samples=False), f"{r['init_offset']:g}", r["seed"],
                   f"{r['ddn_over_direct']:.2f}", f"{r['cosine']:.2f}", f"{100 * r['accuracy_step0']:.1f}"]
                  for r in rows], align="lrrrrr",
                 note="The norm of the DDN part of the implicit ETF's feature gradient over its direct part, and "
                      "the cosine between the whole gradient and the direct part, at step 0 from the mean-free start "
                      "(guiding_nc.experiments.gradient_paths).")


def quick_cells_text(runs) -> str:
    """The cells of the head-start-free table that fit within two steps, as one sentence."""
    cells = confounds.quick_cells(runs)
    if not cells:
        return "No cell fits within two steps."
    what = {"steps_to_loss": "the loss threshold", "steps_to_fit": "100% training accuracy"}
    return ("In " + "; ".join(f"{ufm_title(c['config'], samples=False)} with {OPTIMISER_TITLES.get(c['variant'], c['variant'])}, "
                              f"{what[c['key']]} (" + "/".join(f"{c[m]:g}" for m in PAPER_METHODS) + ")" for c in cells)
            + " every method's median is at most two steps (standard/fixed/implicit): there a one-step difference is "
              "the whole comparison, and the table separates the methods barely if at all.")


def protocol_agreement(cells: Sequence[Tuple[str, Mapping[str, Any], str, Mapping[str, Any], str, str]],
                       configs: Sequence[str]) -> str:
    """One sentence: in how many (measure, size, method) cells the code release's protocol and the
    one-switch protocol give the same median step count. ``cells`` holds
    ``(what, released, released_variant, one_switch, one_switch_variant, key)`` per comparison."""
    same, total, diff = 0, 0, []
    for what, rel, rv, one, ov, key in cells:
        for c in configs:
            for m in PAPER_METHODS:
                a, b = step_counts(rel["runs"], c, rv, m, key), step_counts(one["runs"], c, ov, m, key)
                if not a or not b:
                    continue
                total += 1
                if median_of(a) == median_of(b):
                    same += 1
                else:
                    diff.append(f"{what}, {ufm_title(c, samples=False)}, {method_label(m)}: "
                                f"{_show(median_of(a))} against {_show(median_of(b))}")
    if not total:
        return "The released protocol's UFM runs are not in yet."
    text = (f"The two protocols give the same median step count in {same} of the {total} cells (measure, size, "
            "method) that both hold")
    return text + (": on a full-batch UFM the batch mean is the mean of the whole set, the sampler has nothing to "
                   "choose and there is no backbone to end in a ReLU; the centring and class-mean rules that are "
                   "left change no median here." if not diff else "; they differ in " + "; ".join(diff) + ".")


def confounds_reading(nhs_runs, conf_runs, configs: Sequence[str]) -> str:
    """The three confounds' verdicts, one sentence each."""
    depth = [confounds.depth_effect(nhs_runs, conf_runs, c) for c in configs]
    depth = [e for e in depth if e is not None]
    ddn = [e for c in configs for o in ("agd", "adam", "sgd")
           for e in [confounds.ddn_effect(nhs_runs, conf_runs, c, o)] if e is not None]
    off = [e for c in configs for e in [confounds.offset_effect(conf_runs, c)] if e is not None]
    out = []
    if depth:
        out.append("* **AGD's depth** explains the standard classifier's extra steps at "
                   + (", ".join(ufm_title(e["config"], samples=False) for e in depth if e["explained"]) or "no size")
                   + f" of {len(depth)}: with the classifier counted as a layer, the median steps of fixed / implicit "
                   + "are " + "; ".join(f"{ufm_title(e['config'], samples=False)} {_show(e['fixed_equal'])} / "
                                        f"{_show(e['implicit_equal'])} (standard {_show(e['standard'])})" for e in depth)
                   + " (never: not within the run's steps).")
    if ddn:
        out.append(f"* **The DDN path** explains {sum(e['explained'] for e in ddn)} of {len(ddn)} cells (switching it "
                   "off makes the implicit ETF strictly faster there); with it off the implicit ETF is strictly the "
                   f"fastest in {sum(e['off_fastest'] for e in ddn)} of them.")
    if off:
        out.append("* **With class offsets 10⁻²** the paper's order holds at "
                   + (", ".join(ufm_title(e["config"], samples=False) for e in off if e["order_holds"]) or "no size")
                   + f" of {len(off)}. Median steps (standard / fixed / implicit) "
                   + "; ".join(f"to {what}: " + "; ".join(f"{ufm_title(e['config'], samples=False)} "
                                                           + " / ".join(_show(e[key][m]) for m in PAPER_METHODS)
                                                           for e in off)
                               for key, what in (("loss", "the loss threshold"), ("fit", "100% training accuracy")))
                   + ".")
    return "\n".join(out) if out else "The confound runs are not in yet."


def _show(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:g}"
