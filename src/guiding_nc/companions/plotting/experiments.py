"""Figures and tables for the experiment chapters (paper Figs. 2-5, 15-18, Tables 1-3).

Every function reads what :func:`guiding_nc.experiments.results.load_results` (or
:mod:`guiding_nc.experiments.cost`) returns and draws it; nothing here trains or computes a
metric.  Curves over seeds are drawn as the median with a shaded min-max band, as in the paper.
Tables come back as Markdown strings (``IPython.display.Markdown`` renders them in the book).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from matplotlib.figure import Figure

from ...experiments.results import is_finite_number, seed_bands
from ...core.methods import METHODS
from .collapse import method_style
from ...training.tables import band_text
from ..tables import Table, variant_label
from .style import MAX_WIDTH_IN, panel_grid, tidy_log_x, tidy_log_y

__all__ = [
    "plot_ufm_dynamics",
    "plot_step_accuracy",
    "plot_accuracy_curves",
    "plot_variant_curves",
    "plot_ablation_pairs",
    "plot_delta_sensitivity",
    "plot_cost",
    "summary_table_markdown",
    "steps_to_fit_markdown",
    "paper_table_markdown",
    "paper_comparison_markdown",
    "cost_table_markdown",
]

# Read from the registry of methods (kept as a mapping for the chapters' tables).
METHOD_LABELS = {name: m.label for name, m in METHODS.items()}


def _band(ax, xs, med, lo, hi, *, label, style, floor: Optional[float] = None):
    if floor is not None:
        med, lo, hi = (np.maximum(a, floor) for a in (med, lo, hi))
    ax.plot(xs, med, lw=1.8, label=label, **style)
    ax.fill_between(xs, lo, hi, color=style.get("color"), alpha=0.18, lw=0)


def plot_ufm_dynamics(results: Mapping[str, Any], *, num_classes: int, loss_bound: float,
                      config: Optional[str] = None, compare: Tuple[str, str] = ("implicit", "fixed"),
                      title: Optional[str] = None) -> Figure:
    """The shape of the paper's Fig. 2, with the gaps drawn where its curves would coincide.

    Panels: the loss *above* its lower bound and the average cosine margin *below* its maximum
    ``C/(C-1)`` (both on log axes, where two methods that are close still separate; the paper
    draws the loss and the margin themselves), NC1, NC3, the equinorm, the final per-sample
    margins, and -- when the methods ``compare`` both ran -- the ratio of the first to the second
    for the loss gap, the margin gap, NC1 and NC3 (medians over seeds), where a curve below 1
    means the first method is closer to collapse.

    ``results``: :func:`~guiding_nc.experiments.results.load_results` of a UFM experiment
    with ``margins.json``.  ``loss_bound``: :func:`guiding_nc.core.metric_formulas.cross_entropy_lower_bound`.
    """
    curves = results["curves"]
    where = {"config": config} if config else None
    cmax = num_classes / (num_classes - 1)
    floor = 1e-12
    panels = [
        ("train_loss", "cross-entropy above its lower bound", f"loss − {loss_bound:.3g}",
         lambda v: v - loss_bound),
        ("train_cosine_margin_mean", "average cosine margin (Eq. 16) below\nits maximum $C/(C-1)$",
         f"{cmax:.4f} − margin", lambda v: cmax - v),
        ("train_nc1", "NC1: within-class variability", r"$\mathrm{tr}(\Sigma_W\Sigma_B^\dagger)/C$", None),
        ("train_nc3", "NC3: self-duality", r"$\|W/\|W\| - \bar H^\top/\|\bar H\|\|_F$", None),
        ("train_equinorm", r"$W$–$\bar H$ equinorm", "|CV(W) − CV(H̄)|", None),
    ]
    # The loss is a float32 mean: below this gap to the bound its digits are rounding.
    resolution = {"train_loss": 1e-6 * loss_bound}
    bands_of = {key: seed_bands(curves, key, where=where) for key, *_ in panels}
    methods = [m for (_, _, m) in bands_of["train_loss"]]
    ratio = compare[0] in methods and compare[1] in methods
    fig, axes = panel_grid(7 if ratio else 6, panel_height=2.9, extra_height=0.4)
    for ax, (key, panel_title, ylabel, gap) in zip(axes, panels):
        for i, ((_, _, method), (xs, med, lo, hi)) in enumerate(bands_of[key].items()):
            if gap is not None:  # a gap shrinks as the value improves: min and max swap
                med, lo, hi = gap(med), gap(hi), gap(lo)
            _band(ax, xs, med, lo, hi, label=METHOD_LABELS.get(method, method), style=method_style(method, i),
                  floor=resolution.get(key, floor))
        lowest = min((float(np.min(gap(med) if gap else med)) for (_, (_, med, _, _)) in bands_of[key].items()),
                     default=np.inf)
        if key in resolution and lowest < 100 * resolution[key]:  # only where the curves come near it
            ax.axhline(resolution[key], color="0.5", ls=":", lw=1.0, label="float32 resolution")
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("training step (full batch)")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[5]
    margins = results.get("margins") or {}
    per_method: Dict[str, List[float]] = defaultdict(list)
    for key, vals in margins.items():
        cfg, _, method, _ = key.split("/")
        if vals and (config is None or cfg == config):
            per_method[method] += vals
    if per_method:
        lo = min(min(v) for v in per_method.values())
        bins = np.linspace(lo, cmax, 60)
        for i, (method, vals) in enumerate(per_method.items()):
            st = method_style(method, i)
            ax.hist(vals, bins=bins, histtype="step", lw=3.0 if i == 1 else 1.8, color=st["color"],
                    ls=st.get("linestyle", "-"), label=METHOD_LABELS.get(method, method))
        ax.axvline(cmax, color="k", ls=":", lw=1.3, label="ETF maximum")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_title("final margins per sample (all seeds)", fontsize=10)
    ax.set_xlabel("cosine margin")
    ax.set_ylabel("number of samples")
    ax.grid(alpha=0.3)
    if ratio:
        ax = axes[6]
        a, b = compare
        for j, (key, name) in enumerate((("train_loss", "loss gap"), ("train_cosine_margin_mean", "margin gap"),
                                         ("train_nc1", "NC1"), ("train_nc3", "NC3"))):
            gap = dict((k, g) for k, _, _, g in panels)[key]
            by = {m: (xs, med) for (_, _, m), (xs, med, _, _) in bands_of[key].items()}
            (xa, ma), (xb, mb) = by[a], by[b]
            n = min(len(xa), len(xb))
            va, vb = (gap(v[:n]) if gap else v[:n] for v in (ma, mb))
            ok = (va > 10 * resolution.get(key, floor)) & (vb > 10 * resolution.get(key, floor))
            ax.plot(xa[:n][ok], va[ok] / vb[ok], lw=1.6, color=f"C{j + 4}", ls=("-", "--", "-.", ":")[j],
                    label=name)
        ax.axhline(1.0, color="k", lw=1.0)
        ax.set_xscale("log")
        ax.set_title(f"{METHOD_LABELS.get(a, a)} ÷ {METHOD_LABELS.get(b, b)} (medians)", fontsize=10)
        ax.set_xlabel("training step (full batch)")
        ax.set_ylabel("ratio (below 1: closer to collapse)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.suptitle(title or f"UFM with $C = {num_classes}$: median over seeds, band = min–max", fontsize=11)
    return tidy_log_x(fig)


def _step_accuracy_bands(step_accuracy: Mapping[str, Sequence[float]]):
    groups: Dict[Tuple[str, str], List[np.ndarray]] = defaultdict(list)
    for key, acc in step_accuracy.items():
        cfg, _, method, _ = key.split("/")
        if acc:
            groups[(cfg, method)].append(np.asarray(acc, dtype=float))
    out = {}
    for k, runs in groups.items():
        n = min(len(a) for a in runs)
        a = np.stack([r[:n] for r in runs])
        out[k] = (np.arange(n), np.median(a, 0), a.min(0), a.max(0), len(runs))
    return out


def plot_step_accuracy(step_accuracy: Mapping[str, Sequence[float]], *, configs: Sequence[str],
                       titles: Optional[Mapping[str, str]] = None, max_steps: Optional[int] = None) -> Figure:
    """The shape of the paper's Fig. 3: exact train top-1 after each full-batch step, one panel per UFM.

    ``step_accuracy``: ``{"config/variant/method/seed": [accuracy after 0, 1, ... steps]}``.
    """
    bands = _step_accuracy_bands(step_accuracy)
    fig, axes = panel_grid(len(configs), panel_height=3.2, extra_height=0.4)
    for ax, cfg in zip(axes, configs):
        i = 0
        for (c, method), (xs, med, lo, hi, n) in bands.items():
            if c != cfg:
                continue
            if max_steps is not None:
                keep = xs <= max_steps
                xs, med, lo, hi = xs[keep], med[keep], lo[keep], hi[keep]
            _band(ax, xs + 1, 100 * med, 100 * lo, 100 * hi, label=f"{METHOD_LABELS.get(method, method)} ({n} seeds)",
                  style=method_style(method, i))
            i += 1
        ax.set_xscale("log")
        ax.set_title((titles or {}).get(cfg, cfg), fontsize=10)
        ax.set_xlabel("training step + 1 (full batch)")
        ax.set_ylabel("train top-1 accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Train accuracy against optimisation steps: median over seeds, band = min–max", fontsize=11)
    return tidy_log_x(fig)


def plot_accuracy_curves(results: Mapping[str, Any], *, configs: Sequence[str],
                         titles: Optional[Mapping[str, str]] = None) -> Figure:
    """Train and test top-1 against epoch, one column per config (the paper's Fig. 4 / Figs. 6-11)."""
    curves = results["curves"]
    # One row per config: its train and its test accuracy side by side.
    fig, flat = panel_grid(2 * len(configs), panel_height=3.0, extra_height=0.4)
    for j, cfg in enumerate(configs):
        for i, split in enumerate(("train", "test")):
            ax = flat[2 * j + i]
            bands = seed_bands(curves, f"{split}_top1", x="epoch", where={"config": cfg})
            for k, ((_, _, method), (xs, med, lo, hi)) in enumerate(bands.items()):
                _band(ax, xs, 100 * med, 100 * lo, 100 * hi, label=METHOD_LABELS.get(method, method),
                      style=method_style(method, k))
            ax.set_title(f"{(titles or {}).get(cfg, cfg)}: {split}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"{split} top-1 accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Top-1 accuracy: median over seeds, band = min–max", fontsize=11)
    return tidy_log_x(fig)


def plot_method_curves(results: Mapping[str, Any], *, config: str,
                       metrics: Sequence[Tuple[str, str, bool]], x: str = "epoch",
                       variant: str = "default", title: str = "") -> Figure:
    """Several metrics against training progress for one config, one band per method.

    ``metrics`` lists ``(column of curves.csv, axis label, log scale)``; accuracies (``*_top1``)
    are drawn in percent.  Median over seeds, band = min-max.
    """
    fig, axes = panel_grid(len(metrics), panel_height=3.0, extra_height=0.4)
    for ax, (y, ylabel, log) in zip(axes, metrics):
        bands = seed_bands(results["curves"], y, x=x, where={"config": config, "variant": variant})
        scale = 100.0 if y.endswith("top1") else 1.0
        for k, ((_, _, method), (xs, med, lo, hi)) in enumerate(bands.items()):
            _band(ax, xs, scale * med, scale * lo, scale * hi, label=METHOD_LABELS.get(method, method),
                  style=method_style(method, k), floor=1e-12 if log else None)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch" if x == "epoch" else "training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or f"{config}: median over seeds, band = min–max", fontsize=10)
    return tidy_log_x(fig)


_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_variant_curves(results: Mapping[str, Any], *, config: str, variants: Sequence[str], y: str,
                        ylabel: str, x: str = "step", log: bool = False, title: str = "",
                        ax=None, labels: Optional[Mapping[str, str]] = None) -> Figure:
    """One metric against training progress, one band per variant of an ablation.

    Variants are named by :func:`guiding_nc.companions.tables.variant_label` (or ``labels``) and
    drawn with their own colour, line style and marker, later ones thinner, so a curve that lies
    on an earlier one still shows; its legend entry then says which curve it coincides with
    (medians within 0.1% of each other at every logged point)."""
    fig = None
    if ax is None:
        fig = Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = fig.subplots()
    bands = seed_bands(results["curves"], y, x=x, where={"config": config})
    scale = 100.0 if y.endswith("top1") else 1.0
    drawn: List[Tuple[str, np.ndarray, np.ndarray]] = []
    for i, v in enumerate(variants):
        for k, (xs, med, lo, hi) in [(k, b) for k, b in bands.items() if k[1] == v]:
            name = (labels or {}).get(v) or variant_label(v)
            on = next((j for j, (_, xo, mo) in enumerate(drawn) if len(xo) == len(xs) and np.allclose(xo, xs)
                       and np.allclose(mo, scale * med, rtol=1e-3, atol=0)), None)
            if on is not None:
                name += f" (coincides with the {('first', 'second', 'third')[min(on, 2)]})"
            style = dict(color=f"C{i}", linestyle=_STYLES[i % 4])
            ax.plot(xs, np.maximum(scale * med, 1e-12) if log else scale * med, lw=max(2.4 - 0.5 * i, 1.0),
                    marker=_MARKERS[i % 6] if len(xs) <= 12 else None, ms=6 - i, label=name, **style)
            ax.fill_between(xs, scale * lo, scale * hi, color=style["color"], alpha=0.15, lw=0)
            drawn.append((name, xs, scale * med))
    if log:
        ax.set_yscale("log")
        tidy_log_y(ax)
    if x == "step":
        ax.set_xscale("log")
    ax.set_xlabel("training step (full batch)" if x == "step" else x)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    return tidy_log_x(fig if fig is not None else ax.figure)


def plot_ablation_pairs(results: Mapping[str, Any], pairs: Sequence[Tuple[str, str, str]], *,
                        configs: Sequence[Tuple[str, str, str, str, bool]]) -> Figure:
    """The ablation comparisons (paper Figs. 15, 17, 18): one row per pair ``(title, first,
    second)``, one column per ``(config, title, metric, y label, log)``."""
    fig = Figure(figsize=(MAX_WIDTH_IN, 3.3 * len(pairs) + 0.3), layout="constrained")
    axes = fig.subplots(len(pairs), len(configs), squeeze=False)
    for row, (title, a, b) in zip(axes, pairs):
        for ax, (cfg, cfg_title, y, ylabel, log) in zip(row, configs):
            plot_variant_curves(results, config=cfg, variants=[a, b], y=y, ylabel=ylabel, log=log,
                                x="step" if y == "train_loss" else "epoch", title=f"{cfg_title}: {title}", ax=ax)
    return tidy_log_x(fig)


def plot_delta_sensitivity(summary: Mapping[str, Any], *, configs: Sequence[str], deltas: Mapping[str, float],
                           metrics: Sequence[Tuple[str, str, bool]], titles: Optional[Mapping[str, str]] = None,
                           loss_bounds: Optional[Mapping[str, float]] = None) -> Figure:
    """Run-level metrics of the implicit ETF against the proximal coefficient delta (log scale):
    one column per config, one row per metric.

    ``deltas``: ``{variant name: delta}``; ``metrics``: ``(summary key, y label, log y)``.
    Points are medians over seeds, error bars min-max.  With ``loss_bounds[config]`` the loss is
    drawn above that lower bound (its changes are a small share of the loss itself).  A metric
    that is the same for every delta and seed gets a line of text instead of a flat panel."""
    fig = Figure(figsize=(MAX_WIDTH_IN, 2.6 * len(metrics) + 0.5), layout="constrained")
    axes = fig.subplots(len(metrics), len(configs), squeeze=False)
    for j, cfg in enumerate(configs):
        for i, (key, ylabel, log) in enumerate(metrics):
            ax = axes[i][j]
            scale = 100.0 if "top1" in key else 1.0
            offset = (loss_bounds or {}).get(cfg) if key == "train_loss" else None
            pts = []
            for v, dlt in deltas.items():
                cell = summary.get(f"{cfg}/{v}/implicit", {}).get(key)
                if cell and cell.get("median") is not None:
                    pts.append((dlt, *(scale * (cell[k] - (offset or 0.0)) for k in ("median", "min", "max"))))
            ax.set_title(f"{(titles or {}).get(cfg, cfg)}", fontsize=10)
            if pts and len({f"{p:.6g}" for _, *q in pts for p in q}) == 1:
                ax.axis("off")
                ax.text(0.5, 0.5, f"{ylabel}:\n{pts[0][1]:.6g} for every δ and seed", ha="center", va="center",
                        fontsize=9, transform=ax.transAxes)
                continue
            if pts:
                pts.sort()
                d, med, lo, hi = map(np.asarray, zip(*pts))
                ax.errorbar(d, med, yerr=[med - lo, hi - med], fmt="o-", color="tab:green", capsize=3, lw=1.5)
            ax.set_xscale("log")
            if log:
                ax.set_yscale("log")
                tidy_log_y(ax)
            ax.set_xlabel(r"proximal coefficient $\delta$")
            ax.set_ylabel(ylabel if offset is None else f"{ylabel}\nabove the bound {offset:.4f}", fontsize=9)
            ax.grid(alpha=0.3)
    fig.suptitle(r"Implicit ETF against $\delta$: median over seeds, bars = min–max", fontsize=11)
    return tidy_log_x(fig)


def plot_cost(rows: Sequence[Mapping[str, Any]], *, configs: Sequence[str]) -> Figure:
    """Per-step time split (stacked bars) and peak memory per variant, one group per UFM size."""
    variants: List[str] = []
    for r in rows:
        if r["variant"] not in variants:
            variants.append(r["variant"])
    fig, (ax_t, ax_m) = panel_grid(2, ncols=1, panel_height=3.6)
    width = 0.8 / len(variants)
    parts = (("time_backbone_ms", "backbone + loss (fwd + bwd)", "tab:blue"),
             ("time_etf_forward_ms", "nearest-ETF forward", "tab:orange"),
             ("time_ddn_backward_ms", "DDN backward", "tab:red"))
    hatches = ["", "//", "..", "xx", "\\\\", "++"]
    for j, v in enumerate(variants):
        for i, cfg in enumerate(configs):
            r = next((r for r in rows if r["config"] == cfg and r["variant"] == v), None)
            x = i + (j - (len(variants) - 1) / 2) * width
            if r is None or not is_finite_number(r.get("time_step_ms")):
                ax_t.text(x, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=8)
                if r is not None and is_finite_number(r.get("kkt_need_gb")):
                    ax_m.bar(x, r["kkt_need_gb"], width, color="none", edgecolor="tab:red", ls="--", lw=1.2)
                    ax_m.text(x, r["kkt_need_gb"] * 1.15, f"{r['kkt_need_gb']:,.1f}", ha="center",
                              va="bottom", fontsize=7.5, color="tab:red")
                continue
            bottom = 0.0
            for key, label, color in parts:
                val = max(float(r.get(key) or 0.0), 0.0)
                ax_t.bar(x, val, width, bottom=bottom, color=color, hatch=hatches[j % len(hatches)],
                         edgecolor="white", label=label if (i == 0 and j == 0) else None)
                bottom += val
            other = float(r["time_step_ms"]) - bottom
            if other > 0:
                ax_t.bar(x, other, width, bottom=bottom, color="tab:gray", hatch=hatches[j % len(hatches)],
                         edgecolor="white", label="optimiser, EMA, other" if (i == 0 and j == 0) else None)
            ax_m.bar(x, max(float(r["peak_extra_gb"]), 1e-4), width, color=f"C{j}", label=v if i == 0 else None)
    for ax in (ax_t, ax_m):
        ax.set_xticks(range(len(configs)), configs)
        ax.set_xlabel("unconstrained feature model (C classes)")
        ax.grid(alpha=0.3, axis="y")
        ax.set_yscale("log")
    ax_t.set_ylabel("time per training step (ms, log scale)")
    ax_t.set_title("time split per step; bar order within a group = variant order\n(" +
                   "; ".join(f"{k + 1}: {v}" for k, v in enumerate(variants)) + ")", fontsize=8)
    ax_t.legend(fontsize=8, loc="upper left")
    ax_m.set_ylabel("peak memory above\nmodel + data (GiB, log scale)")
    ax_m.set_title("peak memory per step; dashed, not run: what the dense KKT\nmatrices would need "
                   "(GiB, in the float32 the trainer solves in)", fontsize=9)
    ax_m.set_ylim(top=ax_m.get_ylim()[1] * 4)
    ax_m.legend(fontsize=8, loc="upper left")
    return tidy_log_x(fig)


def summary_table_markdown(summary: Mapping[str, Any], *, configs: Sequence[str], key_at: Sequence[str],
                           methods: Sequence[str] = ("standard", "fixed", "implicit"), variant: str = "default",
                           titles: Optional[Mapping[str, str]] = None, scale: Optional[float] = None,
                           digits: Optional[int] = None, number_format: Optional[str] = None) -> str:
    """A table shaped like the paper's Tables 1-2: one row per (config, metric@epoch), one
    column per method, cells ``median [min, max]`` over seeds, the best of each row in bold
    (:mod:`guiding_nc.companions.tables`: human labels, a band shown once where the seeds agree).

    Each key is rounded by its quantity's rule (accuracies in percent to 0.1 point, ...); with
    ``scale``, ``digits`` or ``number_format`` given, every cell is ``scale`` times the value with
    ``digits`` after the point (``number_format="f"``, default 2) or significant digits (``"g"``)."""
    from ..tables import Band, band, label, quantity, table

    custom = scale is not None or digits is not None or number_format is not None
    rows, best = [], []
    for cfg in configs:
        for key in key_at:
            cells = []
            for m in methods:
                c = summary.get(f"{cfg}/{variant}/{m}", {}).get(key)
                if custom and c and c.get("median") is not None:
                    k = 1.0 if scale is None else scale
                    cells.append(Band(k * c["median"], k * c["min"], k * c["max"],
                                      kind=f"fmt:.{2 if digits is None else digits}{number_format or 'f'}"))
                else:
                    cells.append(band(key, c))
            if all(c.median is None for c in cells):
                continue
            rows.append([(titles or {}).get(cfg, cfg), label(key)] + cells)
            best.append(quantity(key).better)
    return table(["experiment", "metric"] + [METHOD_LABELS.get(m, m) for m in methods], rows, best=best,
                 align="ll" + "r" * len(methods))


def steps_to_fit_markdown(results: Mapping[str, Mapping[str, Any]], *, configs: Sequence[str],
                          methods: Sequence[str] = ("standard", "fixed", "implicit"),
                          titles: Optional[Mapping[str, str]] = None) -> str:
    """Steps to 100% train accuracy, ``median [min, max]`` over seeds, one row per (config, result set).

    ``results``: ``{label: loaded results}`` (what :func:`guiding_nc.experiments.results.load_results`
    returns), e.g. the same runs at two step budgets.  A run that never fits within its budget is
    counted in a "not fitted" note, never given a number.  The seeds column reads ``5``, or
    ``2/2/1`` (one count per method) while a grid is part-way through its slices.
    """
    lines = ["| UFM | runs | steps budget | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods) + " | seeds |",
             "|---|---|---:|" + "---:|" * len(methods) + "---:|"]
    for c in configs:
        for label, res in results.items():
            runs = [r for r in res["runs"] if r["config"] == c]
            if not runs:
                continue
            cells, seeds = [], []
            for m in methods:
                cell = res["summary"].get(f"{c}/default/{m}", {})
                stf = cell.get("steps_to_fit")
                seeds.append(len(cell.get("seeds", [])))
                if not stf or stf["median"] is None:
                    cells.append(f"not fitted ({stf['missing'] if stf else '?'})")
                else:
                    extra = f", {stf['missing']} not fitted" if stf["missing"] else ""
                    cells.append(band_text(stf["median"], stf["min"], stf["max"], fmt="g") + extra)
            budget = max(r["steps"] for r in runs)
            lines.append(f"| {(titles or {}).get(c, c)} | {label} | {budget} | " + " | ".join(cells)
                         + f" | {seeds[0] if len(set(seeds)) == 1 else '/'.join(map(str, seeds))} |")
    return Table("\n".join(lines))


def paper_table_markdown(table: Mapping[str, Mapping[str, Sequence[float]]], *, epochs: Sequence[int] = (50, 200),
                         methods: Sequence[str] = ("standard", "fixed", "implicit")) -> str:
    """The paper's own numbers (quoted), ``table[experiment][method] = (value at epoch 50, at 200)``."""
    head = "| experiment (paper) | " + " | ".join(
        f"{METHOD_LABELS.get(m, m)} @{e}" for m in methods for e in epochs) + " |"
    lines = [head, "|---|" + "---:|" * (len(methods) * len(epochs))]
    for exp, row in table.items():
        lines.append(f"| {exp} | " + " | ".join(f"{v:.2f}" for m in methods for v in row[m]) + " |")
    return Table("\n".join(lines))


def paper_comparison_markdown(summary: Mapping[str, Any], table: Mapping[str, Mapping[str, Sequence[float]]], *,
                              metric: str, configs: Sequence[str], paper_row_of: Mapping[str, str],
                              titles: Optional[Mapping[str, str]] = None, epochs: Sequence[int] = (50, 200),
                              methods: Sequence[str] = ("standard", "fixed", "implicit"),
                              variant: str = "default", seeds: Optional[int] = None) -> str:
    """The paper's rows of one of its Tables 1-2 and this package's medians side by side.

    One column per (method, epoch) and two for *implicit minus standard*, in percentage points.
    Each of the paper's rows (``table[row][method] = (value at epochs[0], at epochs[1])``, quoted)
    is followed by the row of the config that trains the same setting (``paper_row_of[config] =
    row``) when ``summary`` holds it; configs with no row in the paper come last, marked so.
    ``metric``: ``"train_top1"`` or ``"test_top1"`` (the summary keys are ``metric@epoch``).
    """
    cols = [(m, e) for m in methods for e in epochs]
    head = ("| setting | numbers from | " + " | ".join(f"{METHOD_LABELS.get(m, m)} @{e}" for m, e in cols)
            + " | " + " | ".join(f"implicit − standard @{e}" for e in epochs) + " |")
    lines = [head, "|---|---|" + "---:|" * (len(cols) + len(epochs))]
    who = "this book" + (f" ({seeds} seeds)" if seeds else "")

    def ours(cfg):
        vals = {}
        for m, e in cols:
            c = summary.get(f"{cfg}/{variant}/{m}", {}).get(f"{metric}@{e}")
            vals[(m, e)] = 100.0 * c["median"] if c and is_finite_number(c.get("median")) else None
        return vals

    def row(setting, source, vals):
        cells = [f"{vals[k]:.2f}" if vals.get(k) is not None else "–" for k in cols]
        gaps = [f"{vals[('implicit', e)] - vals[('standard', e)]:+.2f}"
                if vals.get(("implicit", e)) is not None and vals.get(("standard", e)) is not None else "–"
                for e in epochs]
        return f"| {setting} | {source} | " + " | ".join(cells + gaps) + " |"

    config_of = {r: c for c, r in paper_row_of.items()}
    for name, paper_row in table.items():
        vals = {(m, e): float(paper_row[m][i]) for m in methods for i, e in enumerate(epochs)}
        lines.append(row(name, "paper (quoted)", vals))
        cfg = config_of.get(name)
        if cfg in configs and any(v is not None for v in ours(cfg).values()):
            lines.append(row("", who, ours(cfg)))
    for cfg in configs:
        if cfg in paper_row_of:
            continue
        vals = ours(cfg)
        if any(v is not None for v in vals.values()):
            lines.append(row((titles or {}).get(cfg, cfg), f"{who}; no row in the paper", vals))
    return Table("\n".join(lines))


def cost_table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The cost rows as a table (times in ms per step, memory in GiB); a case that was not run
    says what its dense KKT matrices would need, in GiB and the dtype the trainer solves in."""
    from ..tables import band, table

    keys = ("time_step_ms", "time_backbone_ms", "time_etf_forward_ms", "time_ddn_backward_ms", "peak_extra_gb")
    out = []
    for r in rows:
        if not is_finite_number(r.get("time_step_ms")):
            need = r.get("kkt_need_gb")
            why = (f"not run: needs {need:,.1f} GiB ({r.get('kkt_need_dtype', 'float32')})"
                   if is_finite_number(need) else r.get("status", ""))
            out.append([r["config"], r["variant"], "–", "–", "–", "–", why])
            continue
        out.append([r["config"], r["variant"]] + [band(k, r.get(k)) for k in keys])
    return table(["UFM", "variant", "step (ms)", "backbone (ms)", "ETF forward (ms)", "DDN backward (ms)",
                  "peak extra memory (GiB)"], out, align="llrrrrr")


