"""Figures for chapter 14, "Gradients without backpropagation" (``book/14_forward_gradients.md``).

Every function takes plain records (lists of dicts as produced by
:mod:`guiding_nc.research.forward_gradients` and :mod:`guiding_nc.research.forward_gradients.experiment`) and
returns a :class:`matplotlib.figure.Figure` with labelled axes. Nothing is computed here
except means over seeds and layers.
"""
from __future__ import annotations

import math
import statistics
from typing import List, Mapping, Optional, Sequence

from matplotlib.figure import Figure

from .style import MAX_WIDTH_IN, panel_grid, subplots

__all__ = [
    "plot_running_mean_error",
    "plot_gradient_spectra",
    "plot_subspace_energy",
    "plot_quality_vs_width",
    "plot_quality_vs_k",
    "plot_training_curves",
    "plot_width_scaling",
    "plot_benchmark",
]

_ORDER = ("backprop", "weight", "activation", "wt", "upstream", "upstream_ns", "upstream_precond")
_COLORS = {"backprop": "k", "weight": "C7", "activation": "C0", "wt": "C1", "upstream": "C3",
           "upstream_ns": "C2", "upstream_precond": "C4"}
_NAMES = {"backprop": "backprop", "weight": "weight perturbation", "activation": "activation perturbation",
          "wt": r"$W^\top$ guess", "upstream": r"upstream $\tilde W^\perp$ (SVD)",
          "upstream_ns": r"upstream $\tilde W^\perp$ (Newton–Schulz)", "upstream_precond": "preconditioned"}


def _nonempty(records, what: str) -> List[Mapping]:
    records = list(records)
    if not records:
        raise ValueError(f"{what} is empty")
    return records


def _pretty(method: str, k: Optional[int] = None) -> str:
    base = _NAMES.get(method, method)
    return base if k is None else f"{base}, k={k}"


def _method_key(method: str) -> int:
    return _ORDER.index(method) if method in _ORDER else len(_ORDER)


def plot_running_mean_error(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Relative error of the mean of n single-guess estimates vs n (log-log).

    ``curves[label] = {"n": [...], "error": [...], "bias": float}`` with ``error`` =
    ``||mean_n - grad|| / ||grad||`` and ``bias`` the exact relative bias (drawn dashed): an
    unbiased estimator follows ``1/sqrt(n)``, a biased one levels off at its bias.
    """
    curves = dict(curves)
    if not curves:
        raise ValueError("curves is empty")
    fig, ax = subplots(figsize=(MAX_WIDTH_IN, 4.2))
    for i, (label, c) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot(c["n"], c["error"], marker="o", ms=3, color=color, label=label)
        if c.get("bias") is not None and c["bias"] > 1e-8:  # exact zeros come out as ~1e-16
            ax.axhline(c["bias"], color=color, ls="--", lw=1)
    n = list(next(iter(curves.values()))["n"])
    first = next(iter(curves.values()))["error"][0]
    ax.plot(n, [first * math.sqrt(n[0] / v) for v in n], color="0.5", ls=":", label=r"$\propto 1/\sqrt{n}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of guesses n averaged")
    ax.set_ylabel(r"$\|\bar g_n - \nabla f\| / \|\nabla f\|$")
    ax.set_title("Mean of n forward gradients vs the true gradient (dashed: exact bias)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_gradient_spectra(spectra: Sequence[Mapping], *, dataset: Optional[str] = None) -> Figure:
    """Normalised singular values ``s_i / s_1`` of the true weight gradient of each layer.

    ``spectra``: records of :func:`guiding_nc.research.forward_gradients.experiment.run_spectra`
    (keys ``dataset, stage, layer, singular_values, energy_rank``). One panel per stage.
    """
    recs = [r for r in _nonempty(spectra, "spectra") if dataset is None or r["dataset"] == dataset]
    if not recs:
        raise ValueError(f"no spectra for dataset {dataset!r}")
    stages = list(dict.fromkeys(r["stage"] for r in recs))
    fig, axes = panel_grid(len(stages), panel_height=3.6, sharey=True)
    for ax, st in zip(axes, stages):
        for r in (r for r in recs if r["stage"] == st):
            s = r["singular_values"]
            s1 = s[0] if s and s[0] > 0 else 1.0
            ax.plot(range(1, len(s) + 1), [max(v / s1, 1e-12) for v in s], marker=".", ms=3,
                    label=f"layer {r['layer']} ({r['shape'][0]}x{r['shape'][1]}),\n90% energy in {r['energy_rank']}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(1e-8, 2)
        ax.set_xlabel("singular value index i")
        ax.set_title(f"{recs[0]['dataset'] if dataset is None else dataset}: {st}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel(r"$s_i / s_1$ of $\partial F/\partial W_l$")
    return fig


def plot_subspace_energy(energy: Sequence[Mapping], *, dataset: Optional[str] = None) -> Figure:
    """Fraction of per-example gradient inside the top-k upstream subspace vs k, per hidden layer.

    ``energy``: records of :func:`guiding_nc.research.forward_gradients.upstream_subspace_energy` with
    ``dataset`` and ``stage`` keys; dashed: a random k-dimensional subspace (k / d_l).
    """
    recs = [r for r in _nonempty(energy, "energy") if dataset is None or r["dataset"] == dataset]
    if not recs:
        raise ValueError(f"no energy records for dataset {dataset!r}")
    stages = list(dict.fromkeys(r["stage"] for r in recs))
    fig, axes = panel_grid(len(stages), panel_height=3.4, sharey=True)
    for ax, st in zip(axes, stages):
        layers = sorted({r["layer"] for r in recs if r["stage"] == st})
        for i, l in enumerate(layers):
            rs = sorted((r for r in recs if r["stage"] == st and r["layer"] == l), key=lambda r: r["k"])
            ks = [r["k"] for r in rs]
            ax.plot(ks, [r["energy"] for r in rs], marker="o", ms=3, color=f"C{i}", label=f"layer {l}, top-k upstream")
            ax.plot(ks, [r["random_energy"] for r in rs], ls="--", color=f"C{i}", lw=1, label=f"layer {l}, random k-dim")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("subspace dimension k")
        ax.set_title(f"{recs[0]['dataset'] if dataset is None else dataset}: {st}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(r"mean $\|P_k g_{l,b}\|^2 / \|g_{l,b}\|^2$")
    return fig


def _layer_mean(records, key, layers):
    vals = [r[key] for r in records if r["layer"] in layers and r[key] is not None and math.isfinite(r[key])]
    return statistics.fmean(vals) if vals else float("nan")


def plot_quality_vs_width(quality: Sequence[Mapping], *, layers: Optional[Sequence[int]] = None,
                          k: Optional[int] = None) -> Figure:
    """Mean cosine, exact relative bias and relative variance of each estimator vs width.

    ``quality``: records of :func:`guiding_nc.research.forward_gradients.estimator_quality` with
    ``width, method, k`` keys; values averaged over ``layers`` (default: layers ``0 .. L-2``,
    the ones whose guess uses an upstream Jacobian). k-methods: only records with this ``k``
    (default: the middle one of the k values present).
    """
    recs = _nonempty(quality, "quality")
    L = max(r["layer"] for r in recs) + 1
    layers = list(range(L - 1)) if layers is None else list(layers)
    if k is None:
        kvals = sorted({r["k"] for r in recs if r["k"] is not None})
        k = kvals[len(kvals) // 2] if kvals else None
    methods = sorted({r["method"] for r in recs}, key=_method_key)
    fig, axes = panel_grid(3, panel_height=3.2, extra_height=0.5)
    for m in methods:
        rs = [r for r in recs if r["method"] == m and (r["k"] is None or r["k"] == k)]
        widths = sorted({r["width"] for r in rs})
        if not widths:
            continue
        kk = rs[0]["k"]
        for ax, key in zip(axes, ("mean_cosine", "exact_relative_bias", "relative_variance")):
            ys = [_layer_mean([r for r in rs if r["width"] == w], key, layers) for w in widths]
            ax.plot(widths, ys, marker="o", ms=4, color=_COLORS.get(m), label=_pretty(m, kk))
    axes[0].set_ylabel("mean cos(estimate, true gradient)")
    axes[1].set_ylabel(r"exact relative bias $\|E\hat g - g\| / \|g\|$")
    axes[2].set_ylabel(r"relative variance tr Cov$(\hat g)$ / $\|g\|^2$")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden width")
        ax.grid(True, which="both", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower left", bbox_to_anchor=(0.55, 0.05), fontsize=8)
    fig.suptitle(f"Single-guess estimator quality, averaged over layers {layers}\n(He init, one real batch)",
                 fontsize=11)
    return fig


def plot_quality_vs_k(quality: Sequence[Mapping], *, width: int, layer: int = 0) -> Figure:
    """Bias–variance trade-off in k for the upstream estimators at one width and layer.

    Unbiased / k-free estimators are drawn as horizontal lines for reference.
    """
    recs = [r for r in _nonempty(quality, "quality") if r["width"] == width and r["layer"] == layer]
    if not recs:
        raise ValueError(f"no quality records for width={width}, layer={layer}")
    fig, axes = panel_grid(2, panel_height=3.4, extra_height=0.3)
    for m in sorted({r["method"] for r in recs}, key=_method_key):
        rs = sorted((r for r in recs if r["method"] == m), key=lambda r: (r["k"] or 0))
        for ax, key in zip(axes, ("mean_cosine", "relative_mse")):
            if rs[0]["k"] is None:
                ax.axhline(rs[0][key], color=_COLORS.get(m), ls="--", lw=1, label=_pretty(m))
            else:
                ax.plot([r["k"] for r in rs], [r[key] for r in rs], marker="o", color=_COLORS.get(m), label=_pretty(m))
    axes[0].set_ylabel("mean cos(estimate, true gradient)")
    axes[1].set_ylabel(r"relative MSE (bias$^2$ + variance) / $\|g\|^2$")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("subspace dimension k")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Choice of k: width {width}, layer {layer}", fontsize=11)
    return fig


def plot_training_curves(curves: Mapping[str, Mapping], runs: Sequence[Mapping], *, width: int) -> Figure:
    """Test accuracy vs step for every gradient source at one width, one panel per dataset.

    ``curves[key]`` is a :func:`guiding_nc.research.forward_gradients.train_mlp` record and ``runs`` the
    matching rows (``dataset, width, label, method, seed``; key ``dataset/width/label/seed``).
    Lines: mean over seeds; band: min–max.
    """
    runs = [r for r in _nonempty(runs, "runs") if r["width"] == width]
    if not runs:
        raise ValueError(f"no runs at width {width}")
    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    fig, axes = panel_grid(len(datasets), panel_height=3.6, sharey=True)
    for ax, ds in zip(axes, datasets):
        labels = sorted({(r["method"], r["label"], r["k"]) for r in runs if r["dataset"] == ds},
                        key=lambda t: _method_key(t[0]))
        for m, lab, k in labels:
            recs = [curves[f"{ds}/{width}/{lab}/{r['seed']}"] for r in runs
                    if r["dataset"] == ds and r["label"] == lab]
            n = min(len(c["step"]) for c in recs)
            steps = recs[0]["step"][:n]
            accs = [[c["test_accuracy"][i] for c in recs] for i in range(n)]
            ax.plot(steps, [statistics.fmean(a) for a in accs], color=_COLORS.get(m), label=_pretty(m, k))
            if len(recs) > 1:
                ax.fill_between(steps, [min(a) for a in accs], [max(a) for a in accs], color=_COLORS.get(m), alpha=0.15)
        ax.set_xlabel("optimiser step (batch 64, Adam)")
        ax.set_title(f"{ds}, width {width}", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[-1].legend(fontsize=7, loc="lower right")
    return fig


def plot_width_scaling(summary: Sequence[Mapping]) -> Figure:
    """Final test accuracy (mean, min–max over seeds) vs width per method, one panel per dataset.

    ``summary``: rows of :func:`guiding_nc.research.forward_gradients.experiment.training_summary`.
    """
    rows = _nonempty(summary, "summary")
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = panel_grid(len(datasets), panel_height=3.4, sharey=True)
    for ax, ds in zip(axes, datasets):
        for lab in sorted({r["label"] for r in rows if r["dataset"] == ds},
                          key=lambda s: _method_key(s.split(" ")[0])):
            rs = sorted((r for r in rows if r["dataset"] == ds and r["label"] == lab), key=lambda r: r["width"])
            m = rs[0]["method"]
            w = [r["width"] for r in rs]
            ax.errorbar(w, [r["acc_mean"] for r in rs],
                        yerr=[[r["acc_mean"] - r["acc_min"] for r in rs], [r["acc_max"] - r["acc_mean"] for r in rs]],
                        marker="o", ms=4, capsize=3, color=_COLORS.get(m), label=lab)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden width")
        ax.set_title(ds, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("final test accuracy")
    axes[-1].legend(fontsize=7)
    return fig


def plot_benchmark(rows: Sequence[Mapping]) -> Figure:
    """Peak tensor memory and time per gradient vs width, per method; one row of panels per batch size."""
    rows = _nonempty(rows, "rows")
    batches = sorted({r["batch_size"] for r in rows})
    fig, flat = panel_grid(2 * len(batches), panel_height=3.1)
    axes = [flat[2 * i: 2 * i + 2] for i in range(len(batches))]
    for i, bs in enumerate(batches):
        for lab in sorted({r["label"] for r in rows}, key=lambda s: _method_key(s.split(" ")[0])):
            rs = sorted((r for r in rows if r["batch_size"] == bs and r["label"] == lab and r["ms"] is not None),
                        key=lambda r: r["width"])
            if not rs:
                continue
            c = _COLORS.get(rs[0]["method"])
            w = [r["width"] for r in rs]
            axes[i][0].plot(w, [r["peak_bytes"] / 2 ** 20 for r in rs], marker="o", ms=4, color=c, label=lab)
            axes[i][1].plot(w, [r["ms"] for r in rs], marker="o", ms=4, color=c, label=lab)
        bp = sorted((r for r in rows if r["batch_size"] == bs and r["method"] == "backprop"), key=lambda r: r["width"])
        if bp and "saved_for_backward_bytes" in bp[0]:
            axes[i][0].plot([r["width"] for r in bp], [r["saved_for_backward_bytes"] / 2 ** 20 for r in bp],
                            color="k", ls=":", label="backprop: saved for backward")
        axes[i][0].set_ylabel(f"peak tensor memory (MiB), batch {bs}")
        axes[i][1].set_ylabel(f"time per gradient (ms), batch {bs}")
        for ax in axes[i]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("hidden width")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return fig
