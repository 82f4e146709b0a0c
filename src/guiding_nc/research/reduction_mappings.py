"""Curvature of the UFM under four classifier parametrisations, measured along gradient-descent runs.

The measurements behind the book chapter "Why the implicit ETF speeds training: reduction
mappings, measured" (``book/13_reduction_mappings.md``).  For every configuration (C classes,
n samples per class, feature dimension d) and seed, the unconstrained-feature model is trained
with full-batch gradient descent in float64 under four parametrisations of the classifier
(:mod:`guiding_nc.research.curvature`): ``free`` (W and b learned), ``fixed`` (a constant simplex ETF),
``implicit`` (the nearest-ETF map of the features, the reduction) and ``affine`` (W = centred
class means).  All four share one optimal value: the free problem's classifier weight decay is
:func:`~guiding_nc.research.curvature.matched_weight_decay`, so its collapsed minimiser has exactly the
ETF classifier the reductions produce.

Step rule: every ``record_every`` steps the local Hessian is measured and the step size is set to
``1 / lambda_max`` of the objective being minimised (gradient descent with step ``1/L``, using the
local ``L``); the same rule for every parametrisation.  At each of those points the run records the
objective gap ``F - f*``, ``||∇F||²``, the PL ratio ``||∇F||² / (2 (F - f*))``, the extreme Hessian
eigenvalues (exact dense Hessians for small sizes, Lanczos otherwise), the condition-number proxy
``lambda_max / PL``, the same quantities for the free problem at the lifted point ``Phi(H)``, the
spectrum in the pullback metric and the size of the chain-rule correction term (exact sizes only).
At the collapsed minimiser it records the full spectra and the Morse–Bott constants.

Usage::

    python -m guiding_nc.experiments.reduction_mappings --threads 1          # full (about 10 min, 1 CPU thread)
    python -m guiding_nc.experiments.reduction_mappings --quick --out /tmp/rm   # seconds

Writes to ``--out`` (default ``data/results/reduction_mappings``), each file atomically after
every finished run: ``curvature.csv`` (one row per recorded point), ``convergence.json`` (the
objective gap at every step of every run), ``collapse.csv`` (Morse–Bott constants at the
minimiser), ``spectra.json`` (exact spectra), ``summary.json`` (per-run summary and the verdicts
on the reduction-mapping claims) and ``provenance.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .curvature import hessian_matrix
from .reduction.analysis import (
    curvature_at,
    generalized_eigenvalues,
    matched_weight_decay,
    morse_bott_constant,
    optimal_value,
    pullback_metric,
)
from .reduction.descent import gradient_descent
from .reduction.objective import PARAMETRISATIONS, class_block_labels, ufm_objective
from ..training.provenance import atomic_write_json, atomic_write_text, collect_provenance
from ..training.tables import csv_text

__all__ = [
    "CONFIGS", "QUICK_CONFIGS", "GAP_FLOOR", "TOLERANCE", "LATE_WINDOW",
    "build_objectives", "initial_points", "run_trajectory", "collapse_constants",
    "summarize_run", "verdicts", "run", "load_results", "main",
]

#: Full-mode configurations: sizes, how the Hessian is measured, steps, seeds.
CONFIGS: Dict[str, Dict] = {
    "C4_d8": dict(num_classes=4, n_per_class=4, dim=8, measure="exact", steps=300, record_every=10, seeds=(0, 1, 2)),
    "C8_d16": dict(num_classes=8, n_per_class=4, dim=16, measure="exact", steps=300, record_every=20, seeds=(0, 1, 2)),
    "C16_d32": dict(num_classes=16, n_per_class=8, dim=32, measure="lanczos", steps=300, record_every=20,
                    seeds=(0, 1, 2)),
    "C32_d64": dict(num_classes=32, n_per_class=8, dim=64, measure="lanczos", steps=300, record_every=25,
                    seeds=(0, 1)),
}
#: Quick mode (tests, the book's live cell): two tiny configurations, one seed.
QUICK_CONFIGS: Dict[str, Dict] = {
    "C4_d6": dict(num_classes=4, n_per_class=3, dim=6, measure="exact", steps=100, record_every=10, seeds=(0,)),
    "C6_d12": dict(num_classes=6, n_per_class=3, dim=12, measure="lanczos", steps=60, record_every=20, seeds=(0,)),
}
TAU = 5.0
LANCZOS_STEPS = 30
_MODULE = "guiding_nc.experiments.reduction_mappings"  # the command path (a shim)
#: Gaps ``F - f*`` at or below this are rounding noise: the PL ratio is not formed there.
GAP_FLOOR = 1e-11
#: A run has converged once ``F - f* <= TOLERANCE``.
TOLERANCE = 1e-8
#: The near-optimum window of gaps in which the late-phase constants are summarised.
LATE_WINDOW = (1e-10, 1e-4)


def _check_config(cfg: Dict) -> None:
    need = ("num_classes", "n_per_class", "dim", "measure", "steps", "record_every", "seeds")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise ValueError(f"a configuration needs the keys {need}; missing {missing}")
    if cfg["measure"] not in ("exact", "lanczos"):
        raise ValueError(f"measure must be 'exact' or 'lanczos', got {cfg['measure']!r}")


def build_objectives(num_classes: int, n_per_class: int, dim: int, *, tau: float = TAU) -> Dict[str, object]:
    """The four UFM objectives of one configuration, keyed by parametrisation.

    Labels are balanced (N = C n); features are normalised; ``tau`` is the temperature;
    ``weight_decay_W = matched_weight_decay(C, tau)`` everywhere; ``free`` has a learned bias,
    ``implicit`` uses ``delta = 0`` (the prox-free reduction, a function of H alone).
    """
    y = class_block_labels(num_classes, n_per_class)
    lam = matched_weight_decay(num_classes, tau)
    out = {}
    for p in PARAMETRISATIONS:
        kw = {"bias": True} if p == "free" else ({"delta": 0.0} if p == "implicit" else {})
        out[p] = ufm_objective(p, y, num_classes, dim, tau=tau, weight_decay_W=lam, **kw)
    return out


def initial_points(objectives: Dict[str, object], seed: int) -> Dict[str, torch.Tensor]:
    """Starting points sharing the features: ``H0 ~ N(0, 1/d)`` (rows of norm about 1) for all four;
    ``free`` also gets ``W0 ~ N(0, 1/d)`` and ``b0 = 0``."""
    any_obj = next(iter(objectives.values()))
    N, d, C = any_obj.num_samples, any_obj.dim, any_obj.num_classes
    g = torch.Generator().manual_seed(int(seed))
    H0 = torch.randn(N * d, generator=g, dtype=torch.float64) / math.sqrt(d)
    W0 = torch.randn(C * d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return {p: (torch.cat([H0, W0, torch.zeros(C, dtype=torch.float64)]) if p == "free" else H0.clone())
            for p in objectives}


def run_trajectory(obj, x0: torch.Tensor, f_star: float, *, steps: int, record_every: int, measure: str,
                   k_iter: int = LANCZOS_STEPS, seed: int = 0, callback=None) -> Dict:
    """Gradient descent with the local ``1/lambda_max`` step; landscape numbers at every recorded point.

    Returns ``{"rows": [dict per recorded point], "gaps": [F(x_t) - f*, t = 0..steps], "lrs": [...],
    "diverged": bool, "final_point": Tensor}``.  Each row holds ``step`` and the keys of
    :func:`guiding_nc.research.curvature.curvature_at`; the PL ratio and ``kappa`` are NaN where the gap is at
    or below :data:`GAP_FLOOR`.
    """
    rows: List[Dict] = []

    def measure_and_step(x):
        c = curvature_at(obj, x, f_star, method=measure, k_iter=k_iter, seed=seed,
                         pullback=(measure == "exact"))
        gap = c["value"] - f_star
        c["gap"] = gap
        if not gap > GAP_FLOOR:
            for k in ("pl", "base_pl", "pb_pl", "kappa"):
                if k in c:
                    c[k] = float("nan")
        c["residual"] = obj.reduction_residual(x)
        lam = c["lambda_max"]
        if not (math.isfinite(lam) and lam > 0):
            raise FloatingPointError(f"non-positive or non-finite lambda_max = {lam} at a recorded point")
        c["lr"] = 1.0 / lam
        rows.append(c)
        return c["lr"]

    res = gradient_descent(obj, x0, measure_and_step, steps, record_every=record_every, callback=callback)
    for r, t in zip(rows, res.record_steps):
        r["step"] = t
    return {"rows": rows, "gaps": [float(v) - f_star for v in res.values], "lrs": res.lr,
            "diverged": res.diverged, "final_point": res.points[-1]}


def collapse_constants(objectives: Dict[str, object], *, rel_tol: float = 1e-7) -> Dict[str, Dict]:
    """Exact spectra at the collapsed minimiser of every parametrisation and their Morse–Bott constants.

    Returns ``{parametrisation: {"euclidean": morse_bott_constant(...), "pullback": ... or None,
    "spectrum": [eigenvalues], "pullback_spectrum": [...] or None}}`` (dense Hessians: small sizes only).
    """
    out = {}
    for p, obj in objectives.items():
        xc = obj.collapsed_point()
        Hm = hessian_matrix(obj, xc)
        ev = torch.linalg.eigvalsh(0.5 * (Hm + Hm.T))
        entry = {"euclidean": morse_bott_constant(ev, rel_tol=rel_tol), "spectrum": ev.tolist(),
                 "pullback": None, "pullback_spectrum": None}
        if p != "free":
            evg = generalized_eigenvalues(Hm, pullback_metric(obj, xc))
            entry["pullback"] = morse_bott_constant(evg, rel_tol=rel_tol)
            entry["pullback_spectrum"] = evg.tolist()
        out[p] = entry
    return out


def _finite(vals):
    return [v for v in vals if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]


def _median(vals):
    v = _finite(vals)
    return statistics.median(v) if v else float("nan")


def summarize_run(rows: Sequence[Dict], gaps: Sequence[float]) -> Dict:
    """Per-run summary: steps to :data:`TOLERANCE`, smallest gap, and medians of the landscape numbers
    in the near-optimum window :data:`LATE_WINDOW` (NaN when no recorded point falls in it)."""
    steps_to_tol = next((t for t, g in enumerate(gaps) if g <= TOLERANCE), None)
    late = [r for r in rows if LATE_WINDOW[0] <= r["gap"] <= LATE_WINDOW[1]]
    out = {
        "steps_to_tol": steps_to_tol,
        "final_gap": gaps[-1],
        "min_gap": min(gaps),
        "late_points": len(late),
        "max_lambda_max": max(_finite([r["lambda_max"] for r in rows]), default=float("nan")),
    }
    for key in ("lambda_max", "lambda_min", "pl", "kappa", "base_lambda_max", "pb_lambda_max", "pb_pl"):
        out[f"late_{key}"] = _median([r.get(key) for r in late])
    return out


def _ratio_stats(rows, num, den):
    r = _finite([row[num] / row[den] for row in rows
                 if row.get(num) is not None and row.get(den) is not None and row[den] > 0])
    if not r:
        return None
    return {"min": min(r), "median": statistics.median(r), "max": max(r), "n": len(r)}


def verdicts(curv_rows: Sequence[Dict], runs: Sequence[Dict], collapse: Dict[str, Dict]) -> List[Dict]:
    """Check the reduction-mapping claims against the measurements; fixed rules, stated in each entry.

    ``curv_rows``: every recorded point (keys of :func:`run_trajectory` rows plus ``config``,
    ``method``, ``seed``, ``measure``); ``runs``: per-run summaries (:func:`summarize_run` plus
    ``config``, ``method``, ``seed``); ``collapse``: ``{config: collapse_constants(...)}``.
    Each verdict is ``{"claim", "rule", "verdict" (agree/disagree/inconclusive), "evidence"}``.
    """
    out = []
    exact = [r for r in curv_rows if r.get("measure") == "exact"]
    # --- Claim 1: affine reductions (fixed is the constant special case) lower smoothness.
    ev = {}
    for m in ("fixed", "affine"):
        rows = [r for r in exact if r["method"] == m]
        ev[m] = {"pullback_over_base": _ratio_stats(rows, "pb_lambda_max", "base_lambda_max"),
                 "euclidean_over_base_all_sizes": _ratio_stats([r for r in curv_rows if r["method"] == m],
                                                                "lambda_max", "base_lambda_max")}
    worst = max((e["pullback_over_base"]["max"] for e in ev.values() if e["pullback_over_base"]), default=None)
    out.append({
        "claim": "An affine reduction has a strictly smaller smoothness constant than the full problem "
                 "(top Hessian eigenvalue in the pullback metric below the full problem's at the lifted point).",
        "rule": "agree if max over all exact points of lambda_max_pullback / lambda_max_full < 1; "
                "disagree if it exceeds 1; inconclusive without exact points",
        "verdict": "inconclusive" if worst is None else ("agree" if worst < 1 else "disagree"),
        "evidence": ev,
    })
    # --- Claim 2: the argmin (implicit) reduction adds a correction term; smoothness still below the full problem.
    rows = [r for r in exact if r["method"] == "implicit"]
    # The correction term multiplies ∂f/∂(W, b), which vanishes at a minimiser: it is looked for
    # away from the minimiser (gap > LATE_WINDOW[1]); near it, it must shrink to zero.
    away = [r for r in rows if r["gap"] > LATE_WINDOW[1]]
    near = [r for r in rows if r["gap"] <= LATE_WINDOW[1]]
    corr = _finite([r.get("correction_norm") for r in away])
    corr_near = _finite([r.get("correction_norm") for r in near])
    rel_corr = _finite([r["correction_norm"] / r["lambda_max"] for r in away
                        if r.get("correction_norm") is not None and r["lambda_max"] > 0])
    aff_corr = _finite([r.get("correction_norm") for r in exact if r["method"] == "affine"])
    pb = _ratio_stats(rows, "pb_lambda_max", "base_lambda_max")
    e2 = {"implicit_correction_norm_away": {"min": min(corr), "median": statistics.median(corr), "max": max(corr),
                                            "n": len(corr)} if corr else None,
          "implicit_correction_norm_near_max": max(corr_near) if corr_near else None,
          "implicit_correction_over_lambda_max_away_median": statistics.median(rel_corr) if rel_corr else None,
          "affine_correction_norm_max": max(aff_corr) if aff_corr else None,
          "implicit_pullback_over_base": pb,
          "implicit_euclidean_over_base_all_sizes": _ratio_stats(
              [r for r in curv_rows if r["method"] == "implicit"], "lambda_max", "base_lambda_max")}
    if pb is None or not corr:
        v2 = "inconclusive"
    else:
        v2 = "agree" if (statistics.median(corr) > 1e-8 and pb["max"] < 1) else "disagree"
    out.append({
        "claim": "The nonlinear (argmin) implicit-ETF reduction adds a second-order correction term to the "
                 "Hessian, and its smoothness constant is still below the full problem's.",
        "rule": "agree if the median correction norm over exact points away from the minimiser (gap > 1e-4 nats) "
                "is > 1e-8 (affine: ~0) and lambda_max_pullback / lambda_max_full < 1 at every exact point; "
                "otherwise disagree",
        "verdict": v2, "evidence": e2,
    })
    # --- Claim 3: argmin reductions raise the Morse–Bott / PL constant.
    e3 = {}
    rel = []
    for cfg, cc in collapse.items():
        mb_free = cc["free"]["euclidean"]["constant"]
        mb_imp = cc["implicit"]["pullback"]["constant"]
        e3[cfg] = {"free": mb_free, "implicit_pullback": mb_imp, "implicit_euclidean": cc["implicit"]["euclidean"]["constant"],
                   "fixed": cc["fixed"]["euclidean"]["constant"], "affine_pullback": cc["affine"]["pullback"]["constant"]}
        rel.append((mb_imp - mb_free) / mb_free)
    late_pl = {m: _median([r["late_pl"] for r in runs if r["method"] == m]) for m in PARAMETRISATIONS}
    e3["late_pl_median_by_method"] = late_pl
    e3["relative_change_implicit_vs_free"] = rel
    if not rel:
        v3 = "inconclusive"
    elif all(x > 1e-6 for x in rel):
        v3 = "agree"
    elif all(abs(x) <= 1e-6 for x in rel) or all(x < 1e-6 for x in rel):
        v3 = "disagree"
    else:
        v3 = "inconclusive"
    out.append({
        "claim": "The argmin reduction strictly raises the Morse–Bott constant (smallest Hessian eigenvalue "
                 "across the solution manifold) and hence the PL constant.",
        "rule": "agree if the implicit Morse–Bott constant (pullback metric) exceeds the free problem's by more "
                "than 1e-6 (relative) in every exact configuration; disagree if it is equal or smaller in every one",
        "verdict": v3, "evidence": e3,
    })
    # --- Claim 4: better conditioning => faster gradient descent.
    pairs, consistent, faster = [], 0, 0
    by = {(r["config"], r["seed"], r["method"]): r for r in runs}
    for (cfg, seed, m), r in by.items():
        if m == "free":
            continue
        f = by.get((cfg, seed, "free"))
        if f is None:
            continue
        kf, kr = f["late_kappa"], r["late_kappa"]
        sf = f["steps_to_tol"] if f["steps_to_tol"] is not None else math.inf
        sr = r["steps_to_tol"] if r["steps_to_tol"] is not None else math.inf
        if not (math.isfinite(kr) and math.isfinite(kf)) and math.isinf(sf) and math.isinf(sr):
            continue
        better_kappa = (kr < kf) if (math.isfinite(kr) and math.isfinite(kf)) else None
        pairs.append({"config": cfg, "seed": seed, "method": m, "kappa_reduced": kr, "kappa_free": kf,
                      "steps_reduced": None if math.isinf(sr) else sr, "steps_free": None if math.isinf(sf) else sf})
        faster += sr < sf
        consistent += (better_kappa is not False) and sr < sf
    if not pairs:
        v4 = "inconclusive"
    elif consistent == len(pairs):
        v4 = "agree"
    elif faster < len(pairs) / 2:
        v4 = "disagree"
    else:
        v4 = "inconclusive"
    out.append({
        "claim": "A better-conditioned reduced objective converges faster under gradient descent.",
        "rule": "agree if, for every (config, seed, reduction), the reduction has a smaller late-phase kappa than "
                "the free problem (or the free run never reached the window) and reaches the tolerance in fewer "
                "steps; disagree if fewer than half the reductions are faster",
        "verdict": v4,
        "evidence": {"pairs": pairs, "reductions_faster": faster, "consistent": consistent, "total": len(pairs)},
    })
    return out


# ------------------------------------------------------------------------------- run + I/O
_CSV_KEYS = ("config", "num_classes", "n_per_class", "dim", "method", "seed", "measure", "step", "value", "gap",
             "grad_norm_sq", "pl", "lambda_max", "lambda_min", "kappa", "lr", "base_lambda_max", "base_lambda_min",
             "base_pl", "pb_lambda_max", "pb_lambda_min", "pb_pl", "correction_norm", "residual")


def _collapse_rows(collapse: Dict[str, Dict]) -> List[Dict]:
    rows = []
    for cfg, cc in collapse.items():
        for m, e in cc.items():
            for metric in ("euclidean", "pullback"):
                if e[metric] is None:
                    continue
                rows.append({"config": cfg, "method": m, "metric": metric, **e[metric]})
    return rows


def run(configs: Optional[Dict[str, Dict]] = None, *, quick: bool = False, out: Optional[Path] = None,
        progress: bool = True, num_threads: Optional[int] = None, argv: Optional[Sequence[str]] = None) -> Dict:
    """Run every configuration, seed and parametrisation; write the results after each run.

    ``configs`` defaults to :data:`CONFIGS` (or :data:`QUICK_CONFIGS` with ``quick=True``).
    Returns ``{"curvature": rows, "convergence": {...}, "runs": [...], "collapse": {...},
    "spectra": {...}, "verdicts": [...]}``.
    """
    from tqdm.auto import tqdm

    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")
        torch.set_num_threads(num_threads)
    if configs is None:
        configs = QUICK_CONFIGS if quick else CONFIGS
    if not isinstance(configs, dict) or not configs:
        raise ValueError("configs must be a non-empty dict {name: configuration}")
    for cfg in configs.values():
        _check_config(cfg)
    argv = list(argv) if argv is not None else ["python", "-m", _MODULE] + sys.argv[1:]
    start = time.time()
    curv_rows: List[Dict] = []
    convergence: Dict[str, Dict] = {}
    runs: List[Dict] = []
    collapse: Dict[str, Dict] = {}
    spectra: Dict[str, Dict] = {}
    jobs = [(name, seed, m) for name, cfg in configs.items() for seed in cfg["seeds"] for m in PARAMETRISATIONS]
    total_steps = sum(configs[n]["steps"] for n, _, _ in jobs)
    bar = tqdm(total=total_steps, desc="reduction mappings", disable=not progress, dynamic_ncols=True)
    result = {}

    def write(status):
        result.update(curvature=curv_rows, convergence=convergence, runs=runs, collapse=collapse, spectra=spectra,
                      verdicts=verdicts(curv_rows, runs, collapse))
        if out is None:
            return
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        atomic_write_text(o / "curvature.csv", csv_text(curv_rows, _CSV_KEYS, nan_empty=True))
        atomic_write_json(o / "convergence.json", convergence, indent=None)
        atomic_write_text(o / "collapse.csv", csv_text(_collapse_rows(collapse), (
            "config", "method", "metric", "constant", "kernel_dim", "most_negative", "max", "next_above_kernel"),
            nan_empty=True))
        atomic_write_json(o / "spectra.json", spectra, indent=None)
        atomic_write_json(o / "summary.json", {"runs": runs, "verdicts": result["verdicts"],
                                               "constants": {"gap_floor": GAP_FLOOR, "tolerance": TOLERANCE,
                                                             "late_window": list(LATE_WINDOW), "tau": TAU,
                                                             "lanczos_steps": LANCZOS_STEPS}})
        cfg_json = {"configs": {k: dict(v, seeds=list(v["seeds"])) for k, v in configs.items()}, "quick": quick,
                    "num_threads": torch.get_num_threads(), "tau": TAU, "step_rule": "1 / lambda_max (local)",
                    "dtype": "float64"}
        seeds = sorted({s for v in configs.values() for s in v["seeds"]})
        prov = collect_provenance(cfg_json, seed=seeds, device="cpu", argv=argv,
                                  extra={"status": status, "runs_done": len(runs), "runs_total": len(jobs),
                                         "wall_time_s": time.time() - start})
        atomic_write_json(o / "provenance.json", prov)

    for name, cfg in configs.items():
        objs = build_objectives(cfg["num_classes"], cfg["n_per_class"], cfg["dim"])
        f_star = optimal_value(objs["fixed"])
        if cfg["measure"] == "exact":
            cc = collapse_constants(objs)
            collapse[name] = {m: {k: v for k, v in e.items() if not k.endswith("spectrum")} for m, e in cc.items()}
            spectra.setdefault(name, {})["collapse"] = {m: {"euclidean": e["spectrum"],
                                                            "pullback": e["pullback_spectrum"]} for m, e in cc.items()}
        for seed in cfg["seeds"]:
            x0s = initial_points(objs, seed)
            for m in PARAMETRISATIONS:
                bar.set_postfix_str(f"{name} seed {seed} {m}")
                t0 = time.time()
                traj = run_trajectory(objs[m], x0s[m], f_star, steps=cfg["steps"], record_every=cfg["record_every"],
                                      measure=cfg["measure"], seed=seed, callback=lambda t: bar.update(1))
                meta = {"config": name, "num_classes": cfg["num_classes"], "n_per_class": cfg["n_per_class"],
                        "dim": cfg["dim"], "method": m, "seed": seed, "measure": cfg["measure"]}
                for r in traj["rows"]:
                    curv_rows.append({**meta, **r})
                convergence[f"{name}/{m}/{seed}"] = {"gap": traj["gaps"], "lr": traj["lrs"]}
                runs.append({**meta, "f_star": f_star, "steps_budget": cfg["steps"], "diverged": traj["diverged"], "wall_time_s": time.time() - t0,
                             **summarize_run(traj["rows"], traj["gaps"])})
                if cfg["measure"] == "exact" and seed == cfg["seeds"][0]:
                    for label, x in (("start", x0s[m]), ("end", traj["final_point"])):
                        Hm = hessian_matrix(objs[m], x)
                        spectra[name].setdefault(label, {})[m] = torch.linalg.eigvalsh(0.5 * (Hm + Hm.T)).tolist()
                write("running")
    bar.close()
    write("completed")
    return result


def load_results(path) -> Dict:
    """Read a results directory written by :func:`run` (``curvature`` rows as dicts with floats, NaN for blanks)."""
    p = Path(path)
    if not (p / "summary.json").exists():
        raise ValueError(f"{p} has no summary.json (run `python -m guiding_nc.experiments.reduction_mappings`)")
    rows = []
    with open(p / "curvature.csv", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            conv = {}
            for k, v in r.items():
                if k in ("config", "method", "measure"):
                    conv[k] = v
                elif k in ("num_classes", "n_per_class", "dim", "seed", "step"):
                    conv[k] = int(v)
                else:
                    conv[k] = float(v) if v != "" else float("nan")
            rows.append(conv)
    summary = json.loads((p / "summary.json").read_text())
    collapse_rows = []
    with open(p / "collapse.csv", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            collapse_rows.append({k: (v if k in ("config", "method", "metric") else
                                      (int(v) if k == "kernel_dim" else (float(v) if v != "" else float("nan"))))
                                  for k, v in r.items()})
    return {"curvature": rows, "convergence": json.loads((p / "convergence.json").read_text()),
            "runs": summary["runs"], "verdicts": summary["verdicts"], "constants": summary["constants"],
            "collapse": collapse_rows, "spectra": json.loads((p / "spectra.json").read_text()),
            "provenance": json.loads((p / "provenance.json").read_text())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guiding_nc.experiments.reduction_mappings",
                                     description="Curvature of the UFM under free / fixed / implicit / affine classifiers.")
    parser.add_argument("--quick", action="store_true", help="two tiny configurations, one seed (seconds)")
    parser.add_argument("--out", default="data/results/reduction_mappings")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--configs", nargs="+", default=None, help="a subset of the configuration names")
    parser.add_argument("--steps", type=int, default=None, help="override the number of gradient steps")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    table = QUICK_CONFIGS if args.quick else CONFIGS
    configs = dict(table)
    if args.configs:
        unknown = [c for c in args.configs if c not in table]
        if unknown:
            parser.error(f"unknown configuration(s) {unknown}; choose from {list(table)}")
        configs = {c: table[c] for c in args.configs}
    if args.steps is not None:
        if args.steps < 1:
            parser.error("--steps must be >= 1")
        configs = {k: dict(v, steps=args.steps) for k, v in configs.items()}
    full_argv = ["python", "-m", _MODULE] + (list(argv) if argv is not None else sys.argv[1:])
    res = run(configs, quick=args.quick, out=Path(args.out), progress=not args.no_progress,
              num_threads=args.threads, argv=full_argv)
    for v in res["verdicts"]:
        print(f"[{v['verdict']}] {v['claim']}")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
