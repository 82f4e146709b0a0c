"""Several (method, seed) runs of one config and their summary table (median and min-max over
seeds per method, the shape of the paper's Tables 1-2): what ``python -m guiding_nc.train``
runs when a config lists several methods or seeds.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union


from .config import TrainConfig, load_config
from ..core.distributed import world
from .provenance import atomic_write_json, atomic_write_text
from .tables import band_text, csv_text, seed_summary
from .trainer import train_run

__all__ = ["run_seeds", "summarize_runs"]


def _summary_metrics(cfg: TrainConfig, result: Dict[str, Any]) -> Dict[str, float]:
    vals: Dict[str, float] = {}
    epochs = sorted(set([e for e in cfg.report_epochs if e <= cfg.epochs] + [cfg.epochs]))
    for e in epochs:
        row = result["at_epochs"].get(str(e))
        if not row:
            continue
        for key in ("train_top1", "test_top1"):
            if key in row and row[key] is not None:
                vals[f"{key}@{e}"] = 100.0 * row[key]
    fe = result.get("final_eval") or {}
    for key in ("train_loss", "train_nc1", "train_nc2", "train_nc3", "train_equinorm", "train_ncc_mismatch",
                "train_cosine_margin_mean", "test_loss", "test_top5"):
        if key in fe and fe[key] is not None:
            vals[f"{key}@final"] = fe[key]
    vals["wall_time_s"] = result["wall_time_s"]
    if result.get("peak_mem_gb") is not None:
        vals["peak_mem_gb"] = result["peak_mem_gb"]
    return vals


def summarize_runs(per_run: Sequence[Tuple[str, int, Dict[str, float]]]) -> Dict[str, Any]:
    """Median and min-max over seeds per (method, metric): ``{"rows": [...], "table": {...}}``.

    ``per_run`` holds ``(method, seed, {metric: value})``.  ``rows`` is tidy (one row per
    method and metric); ``table`` is shaped like the paper's Tables 1-2: ``table[method][metric]
    = "median [min, max]"``.
    """
    grouped: Dict[str, Dict[str, List[Tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for method, seed, vals in per_run:
        for k, v in vals.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                grouped[method][k].append((seed, float(v)))
    rows, table = [], {}
    for method, metrics in grouped.items():
        table[method] = {}
        for metric, pairs in metrics.items():
            stats = seed_summary([v for _, v in pairs])
            row = {"method": method, "metric": metric, **{k: stats[k] for k in ("n", "median", "min", "max")},
                   "seeds": [s for s, _ in pairs], "values": stats["values"]}
            rows.append(row)
            table[method][metric] = band_text(row["median"], row["min"], row["max"], fmt=".2f")
    return {"rows": rows, "table": table}


def _format_table(table: Dict[str, Dict[str, str]], metrics: Sequence[str]) -> str:
    if not table:
        return ""
    cols = [m for m in metrics if any(m in t for t in table.values())]
    widths = [max(len("method"), *(len(m) for m in table))] + [max(len(c), *(len(t.get(c, "")) for t in table.values()))
                                                             for c in cols]
    lines = ["  ".join(h.ljust(w) for h, w in zip(["method", *cols], widths))]
    for method, t in table.items():
        lines.append("  ".join(v.ljust(w) for v, w in zip([method, *(t.get(c, "-") for c in cols)], widths)))
    return "\n".join(lines)


def run_seeds(config: Union[TrainConfig, Dict[str, Any], str], *, callbacks: Optional[Sequence[Callable]] = None,
          argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run every (method, seed) the config names; write ``summary.json``/``summary.csv``.

    Returns ``{"runs": [results...], "summary": {"rows": [...], "table": {...}}, "summary_dir": str}``.
    Each run lives in ``output_dir/name/method/seed<k>`` (or ``run_dir`` for a single run).
    """
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    cfg = cfg.apply_quick()
    cfg.validate()
    runs, per_run = [], []
    for method in cfg.method_list:
        for seed in cfg.seed_list:
            one = cfg.replace(method=method, methods=None, seed=seed, seeds=None)
            res = train_run(one, callbacks=callbacks, argv=argv)
            runs.append(res)
            per_run.append((method, seed, _summary_metrics(one, res)))
    summary = summarize_runs(per_run)
    out_dir = Path(cfg.run_dir) if cfg.run_dir else Path(cfg.output_dir) / cfg.name
    rank, _ = world()
    if rank == 0:
        atomic_write_json(out_dir / "summary.json", {"name": cfg.name, "methods": cfg.method_list,
                                                     "seeds": cfg.seed_list, "stratified": cfg.stratified_batches, **summary})
        atomic_write_text(out_dir / "summary.csv", csv_text(
            [{**r, "seeds": " ".join(map(str, r["seeds"])), "values": " ".join(f"{v:.6g}" for v in r["values"])}
             for r in summary["rows"]], ["method", "metric", "n", "median", "min", "max", "seeds", "values"]))
        if cfg.verbose and len(runs) > 1:
            metrics = sorted({r["metric"] for r in summary["rows"] if "top1@" in r["metric"]},
                             key=lambda m: (m.split("@")[0] != "train_top1", int(m.split("@")[1])))
            print(_format_table(summary["table"], metrics + ["train_nc1@final"]), flush=True)
    return {"runs": runs, "summary": summary, "summary_dir": str(out_dir)}
