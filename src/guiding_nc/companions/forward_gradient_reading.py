"""The forward-gradient chapter's reading of its committed results (book chapter "Gradients without
backpropagation"): the numbers its prose quotes (glued into the text, never typed), and the table
that sets the paper's statements beside this book's measurements.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

from .tables import Table, table

__all__ = ["DATASETS", "UP", "WT", "ACT", "NS", "spectra_numbers", "quality_numbers", "training_numbers",
           "bench_numbers", "comparison_table"]

DATASETS = ("mnist5k", "mnist1d")
UP, WT, ACT, NS = "upstream (k=16)", "wt", "activation", "upstream_ns (k=16)"


def spectra_numbers(res: Mapping[str, Any]) -> Dict[str, float]:
    """How low-rank the batch weight gradients are, and how much of each per-example gradient the
    top-k upstream subspace holds (the two wide hidden layers, layers 0 and 1)."""
    sp = {ds: [r for r in res["spectra"] if r["dataset"] == ds] for ds in DATASETS}
    wide = [e for e in res["energy"] if e["layer"] in (0, 1)]
    at = {k: [e for e in wide if e["k"] == k] for k in (16, 64)}
    return {"sp5_rank": max(r["energy_rank"] for r in sp["mnist5k"]),
            "sp5_stable": max(r["stable_rank"] for r in sp["mnist5k"]),
            "sp1_rank_lo": min(r["energy_rank"] for r in sp["mnist1d"]),
            "sp1_rank_hi": max(r["energy_rank"] for r in sp["mnist1d"]),
            "sp_batch": res["config"]["spectra_batch"],
            "en16_lo": min(e["energy"] for e in at[16]), "en16_hi": max(e["energy"] for e in at[16]),
            "en16_rand": at[16][0]["random_energy"], "en64_lo": min(e["energy"] for e in at[64])}


class _Quality:
    """The single-gradient sweep of layer 0, by (width, estimator)."""

    def __init__(self, res: Mapping[str, Any]):
        self.q = {(r["width"], r["label"]): r for r in res["quality"] if r["layer"] == 0}
        self.widths = sorted({w for w, _ in self.q})

    def col(self, label: str, key: str):
        return [self.q[w, label][key] for w in self.widths]

    def cos(self, w: int, label: str) -> float:
        return self.q[w, label]["mean_cosine"]


def quality_numbers(res: Mapping[str, Any]) -> Dict[str, float]:
    """Bias, variance and cosine of each estimator against width (layer 0)."""
    Q = _Quality(res)
    W = Q.widths
    out = {"qw_lo": W[0], "qw_hi": W[-1],
           "wp_cos_lo": min(Q.col("weight", "mean_cosine")), "wp_cos_hi": max(Q.col("weight", "mean_cosine")),
           "wp_var_lo": min(Q.col("weight", "relative_variance")),
           "wp_var_hi": max(Q.col("weight", "relative_variance")),
           "act_cos_lo": Q.cos(W[0], ACT), "act_cos_hi": Q.cos(W[-1], ACT), "up_cos_hi": Q.cos(W[-1], UP),
           "up_act_lo": Q.cos(W[0], UP) / Q.cos(W[0], ACT), "up_act_hi": Q.cos(W[-1], UP) / Q.cos(W[-1], ACT)}
    ahead = [w for w in W if all(Q.cos(v, UP) > Q.cos(v, WT) for v in W if v >= w)]
    out["up_wt_from"] = ahead[0] if ahead else float("nan")
    out["up_wt_hi"] = Q.cos(W[-1], UP) / Q.cos(W[-1], WT)
    for key, lab in (("wt", WT), ("up", UP)):
        for stat in ("exact_relative_bias", "relative_variance", "expectation_cosine"):
            out[f"{key}_{stat}_lo"] = min(Q.col(lab, stat))
            out[f"{key}_{stat}_hi"] = max(Q.col(lab, stat))
    var_gain = [a / b for a, b in zip(Q.col(WT, "relative_variance"), Q.col(UP, "relative_variance"))]
    out["var_gain_lo"], out["var_gain_hi"] = min(var_gain), max(var_gain)
    out["ns_gap"] = max(abs(Q.cos(w, f"upstream_ns (k={k})") - Q.cos(w, f"upstream (k={k})"))
                        for w in W for k in (16, 64) if (w, f"upstream (k={k})") in Q.q)
    out["ns4_hi"] = Q.cos(W[-1], "upstream_ns (k=4)")
    out["svd4_hi"] = Q.cos(W[-1], "upstream (k=4)")
    out["pre_var_lo"] = Q.q[W[0], "upstream_precond"]["relative_variance"]
    out["pre_var_hi"] = Q.q[W[-1], "upstream_precond"]["relative_variance"]
    return out


class _Training:
    def __init__(self, res: Mapping[str, Any], summary: Sequence[Mapping[str, Any]]):
        self.S = {(s["dataset"], s["width"], s["label"]): s for s in summary}
        self.widths = sorted(res["config"]["widths"])
        self.summary = summary

    def acc(self, d: str, w: int, label: str) -> float:
        return 100 * self.S[d, w, label]["acc_mean"]


def training_numbers(res: Mapping[str, Any], summary: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    """Test accuracy of each gradient source against width, and the upstream guess's cost."""
    T = _Training(res, summary)
    W, acc = T.widths, T.acc
    wp_acc = [100 * s["acc_mean"] for s in summary if s["method"] == "weight"]
    out = {"wp_acc_lo": min(wp_acc), "wp_acc_hi": max(wp_acc), "tw_hi": W[-1], "tw_lo": W[0]}
    for d in DATASETS:
        gap = [acc(d, w, UP) - acc(d, w, ACT) for w in W]
        out[f"{d}_ua_lo"], out[f"{d}_ua_hi"] = min(gap), max(gap)
        out[f"{d}_uw_max"] = max(abs(acc(d, w, UP) - acc(d, w, WT)) for w in W)
        for lab, key in ((UP, "up"), (WT, "wt"), (ACT, "act")):
            out[f"{d}_{key}_top"] = acc(d, W[-1], lab)
            out[f"{d}_{key}_gap_lo"] = acc(d, W[0], "backprop") - acc(d, W[0], lab)
            out[f"{d}_{key}_gap_hi"] = acc(d, W[-1], "backprop") - acc(d, W[-1], lab)
    out["m5_cos_up"] = T.S["mnist5k", W[-1], UP]["cos_mean"]
    out["m5_cos_wt"] = T.S["mnist5k", W[-1], WT]["cos_mean"]
    step_s = [T.S[d, W[-1], UP]["ms_per_step"] / 1e3 for d in DATASETS]
    out["up_s_lo"], out["up_s_hi"] = min(step_s), max(step_s)
    out["m1_bp_lo"] = min(acc("mnist1d", w, "backprop") for w in W)
    out["m1_bp_hi"] = max(acc("mnist1d", w, "backprop") for w in W)
    return out


def bench_numbers(bench: Mapping[str, Any]) -> Dict[str, float]:
    """Memory and time of each estimator against backprop, at the largest benchmarked size."""
    BR = [r for r in bench["rows"] if not r["skipped"]]
    big = max((r["batch_size"], r["width"]) for r in BR)
    top = {r["label"]: r for r in BR if (r["batch_size"], r["width"]) == big}
    out = {"bp_saved": top["backprop"]["saved_for_backward_bytes"] / 2 ** 20,
           "bp_peak": top["backprop"]["peak_bytes"] / 2 ** 20, "bench_b": top["backprop"]["batch_size"],
           "bench_w": top["backprop"]["width"]}
    groups = {"wp": ["weight"], "aw": [ACT, WT], "ns": [NS], "svd": [UP], "up": [UP, NS]}
    for key, labels in groups.items():
        for what in ("memory", "time"):
            v = [r[f"{what}_ratio_to_backprop"] for r in BR if r["label"] in labels]
            out[f"{key}_{what}_lo"], out[f"{key}_{what}_hi"] = min(v), max(v)
    return out


def comparison_table(res: Mapping[str, Any], summary: Sequence[Mapping[str, Any]],
                     bench: Mapping[str, Any]) -> Table:
    """What arXiv 2511.03110 states in the parts this book has read (its abstract and §1) beside
    what this book used or measured."""
    D = res["config"]
    Q, T = _Quality(res), _Training(res, summary)
    QW, TW, acc = Q.widths, T.widths, T.acc
    BR = [r for r in bench["rows"] if not r["skipped"]]
    mem = [r["memory_ratio_to_backprop"] for r in BR if r["label"] != "backprop"]
    up_wt = [acc(d, w, UP) - acc(d, w, WT) for d in DATASETS for w in TW]
    up_act = {d: [acc(d, w, UP) - acc(d, w, ACT) for w in TW] for d in DATASETS}
    wt_var, up_var = Q.col(WT, "relative_variance"), Q.col(UP, "relative_variance")
    gain = [a / b for a, b in zip(wt_var, up_var)]

    def f2(v):
        return f"{min(v):.2f}–{max(v):.2f}"

    def f1(v):
        return f"{min(v):.1f}–{max(v):.1f}"

    NR = "not in the parts read"
    rows = [
        ("motivation", 'forward-mode AD "avoids the memory cost of storing intermediate activations"; backprop is '
                       "also called biologically implausible (§1)",
         f"every estimator's peak memory is {f1(mem)} times backprop's here: the memory advantage is **not shown**"),
        ("estimators", 'guesses made by "manipulating upstream Jacobian matrices" (abstract); backpropagation-free '
                       "work cited in §1 (Singhal et al., Baydin et al., Silver et al., Chandra); exact forms " + NR,
         "weight and activation perturbation, $W^\\top$, upstream top-$k$ (SVD and Newton–Schulz), "
         "preconditioned; reconstructions"),
        ("architecture", NR, f"ReLU MLP, {D['depth']} hidden layers of equal width"),
        ("datasets", NR, "MNIST-1D and a 5k MNIST sample (4,000 train / 1,000 test), offline"),
        ("widths", '"performing better as the network width is increased" (abstract); widths used ' + NR,
         f"training {', '.join(map(str, TW))}; single gradients {', '.join(map(str, QW))}"),
        ("$k$, optimiser, budget", NR,
         f"$k={D['k']}$ (sweep {', '.join(map(str, D['quality_ks']))}); Adam, lr {D['lr']:g}, batch "
         f"{D['batch_size']}, {D['steps']} steps, {len(D['seeds'])} seeds"),
        ("what is measured", '"analyses of bias and variance" (abstract)',
         "exact bias (closed form), Monte-Carlo variance, single-guess cosine, test accuracy, peak memory, time"),
        ("variance of forward gradients",
         'they "struggle to scale beyond small networks due to the high variance" (abstract)',
         f"weight perturbation: cosine ≤ {max(Q.col('weight', 'mean_cosine')):.3f}, training near chance; "
         f"activation perturbation: cosine {Q.cos(QW[0], ACT):.2f} → {Q.cos(QW[-1], ACT):.2f} from width "
         f"{QW[0]} to {QW[-1]} — **agrees**"),
        ("bias of earlier fixes", 'they "introduced significant bias" (abstract)',
         f"$W^\\top$: relative bias {f1(Q.col(WT, 'exact_relative_bias'))}, mostly in scale (expectation "
         f"cosine {f2(Q.col(WT, 'expectation_cosine'))}) — **agrees** in norm"),
        ("the new guess", 'reduces "both bias and variance" (abstract)',
         f"against $W^\\top$ ($k=16$): relative bias {f2(Q.col(UP, 'exact_relative_bias'))}, variance "
         f"{min(gain):.0f}–{max(gain):.0f} times lower — **agrees**; against unbiased activation perturbation "
         "it trades variance for bias"),
        ("width", '"performing better as the network width is increased" (abstract)',
         f"single gradients: cosine over activation perturbation {Q.cos(QW[0], UP) / Q.cos(QW[0], ACT):.1f}× → "
         f"{Q.cos(QW[-1], UP) / Q.cos(QW[-1], ACT):.1f}× — **agrees**; training (widths {TW[0]}–{TW[-1]}): "
         f"accuracy gain over activation perturbation {f1(up_act['mnist5k'])} points (MNIST 5k), no growth — "
         "**not shown**"),
        ("results", 'it "shows promising results" (abstract)',
         f"beats activation perturbation by {f1(up_act['mnist5k'])} (MNIST 5k) and {f1(up_act['mnist1d'])} "
         f"points (MNIST-1D); within {max(map(abs, up_wt)):.1f} points of $W^\\top$; far from backprop after "
         f"{D['steps']} steps — **partly**"),
    ]
    return table(["", "arXiv 2511.03110 (abstract, §1)", "this book (committed results)"], rows, align="lll")
