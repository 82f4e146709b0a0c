"""Backpropagation-free training with upstream-Jacobian guesses, measured (book chapter 14).

Reproduction of the experiments of Wang, Markou & Campbell (arXiv:2511.03110) on the
project's offline datasets, in three parts, plus a memory/time benchmark:

``spectra``
    singular values of the true weight gradients of a 3-hidden-layer MLP (at initialisation
    and after a short backprop training), and the fraction of each per-example gradient that
    lies in the top-k subspace of the upstream Jacobian (one minus the squared bias of the
    top-k guess).
``quality``
    exact bias, Monte-Carlo variance and cosine to the true gradient of every estimator, per
    layer, on one real minibatch at initialisation, as functions of the width and of k.
``training``
    an MLP with three hidden layers trained with Adam on each gradient source (backprop and
    the forward-mode estimators) on MNIST-1D and the MNIST 5k sample, at several widths:
    test-accuracy curves and the cosine of the used gradient to the true one.
``bench`` (``--bench``)
    time per gradient and peak tensor memory of every estimator against backprop at several
    widths; a table on stdout and a JSON file with provenance.

Usage::

    python -m guiding_nc.experiments.forward_gradients --threads 1          # full mode
    python -m guiding_nc.experiments.forward_gradients --quick              # seconds
    python -m guiding_nc.experiments.forward_gradients --bench --threads 1  # benchmark

Writes ``results.json`` (every part), ``runs.csv`` (one row per training run),
``quality.csv`` and ``provenance.json`` to ``--out`` (default
``data/results/forward_gradients``), atomically after every unit of work, so an interrupted
run keeps what it measured (``provenance.json`` says ``"status": "running"`` until the end).
The benchmark writes ``--bench-out`` (default ``data/bench/forward_gradients_cpu.json``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import analysis, mlp, training
from ...training.provenance import atomic_write_json, atomic_write_text, collect_provenance
from ...training.tables import csv_text

#: (gradient source, k) pairs trained in the training part; k is set from the config.
TRAIN_METHODS = ("backprop", "weight", "activation", "wt", "upstream", "upstream_ns")
QUALITY_METHODS = ("weight", "activation", "wt", "upstream", "upstream_ns", "upstream_precond")
K_METHODS = ("upstream", "upstream_ns")

FULL_CONFIG: Dict[str, object] = {
    "datasets": ["mnist1d", "mnist5k"],
    "depth": 3,
    "widths": [32, 64, 128],
    "seeds": [0, 1],
    "steps": 150,
    "batch_size": 64,
    "lr": 1e-3,
    "k": 16,
    "eval_every": 25,
    "spectra_width": 128,
    "spectra_batch": 64,
    "spectra_train_steps": 150,
    "energy_ks": [1, 2, 4, 8, 16, 32, 64, 128],
    "quality_dataset": "mnist5k",
    "quality_widths": [32, 64, 128, 256, 512],
    "quality_ks": [4, 16, 64],
    "quality_batch": 32,
    "quality_samples": 100,
}
QUICK_CONFIG: Dict[str, object] = {
    **FULL_CONFIG,
    "datasets": ["mnist5k"],
    "widths": [8, 16],
    "seeds": [0],
    "steps": 4,
    "batch_size": 16,
    "k": 4,
    "eval_every": 2,
    "spectra_width": 16,
    "spectra_batch": 16,
    "spectra_train_steps": 4,
    "energy_ks": [1, 4, 16],
    "quality_widths": [8, 16],
    "quality_ks": [2, 8],
    "quality_batch": 8,
    "quality_samples": 4,
}

_DATA_CACHE: Dict[str, Tuple[torch.Tensor, ...]] = {}


def load_tensors(name: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train (N, d_0), y_train (N,), x_test (M, d_0), y_test (M,))`` of an offline dataset.

    Standardised exactly as :func:`guiding_nc.training.datasets.build_dataset` does (no augmentation) and
    flattened; ``name`` is ``"mnist1d"`` (d_0 = 40) or ``"mnist5k"`` (d_0 = 784). Nothing is
    downloaded. Cached per process.
    """
    from ...training.datasets import build_dataset

    if name not in ("mnist1d", "mnist5k", "digits"):
        raise ValueError(f"dataset must be one of 'mnist1d', 'mnist5k', 'digits' (offline), got {name!r}")
    if name not in _DATA_CACHE:
        out = []
        for train in (True, False):
            ds = build_dataset(name, train=train, augment=False)
            out += [((ds.raw - ds.mean) / ds.std).reshape(len(ds), -1).contiguous(), ds.targets.clone()]
        _DATA_CACHE[name] = tuple(out)
    return _DATA_CACHE[name]  # type: ignore[return-value]


def _dims(d0: int, width: int, depth: int, classes: int = 10) -> List[int]:
    return [d0] + [width] * depth + [classes]


def _k_for(method: str, k: int) -> Optional[int]:
    return k if method in K_METHODS else None


def method_label(method: str, k: Optional[int]) -> str:
    """Display name, e.g. ``"upstream (k=16)"``."""
    return method if k is None else f"{method} (k={k})"


# --------------------------------------------------------------------------------------
# parts
# --------------------------------------------------------------------------------------
def run_spectra(cfg: Dict, progress: bool = True) -> Dict[str, List[Dict]]:
    """Gradient spectra and top-k energy at init and after ``spectra_train_steps`` of backprop."""
    spectra, energy = [], []
    for ds in cfg["datasets"]:
        xtr, ytr, xte, yte = load_tensors(ds)
        dims = _dims(xtr.shape[1], cfg["spectra_width"], cfg["depth"])
        B = cfg["spectra_batch"]
        for stage, steps in (("init", 0), ("trained", cfg["spectra_train_steps"])):
            if steps:
                rec = training.train_mlp("backprop", dims, xtr, ytr, xte, yte, steps=steps, batch_size=cfg["batch_size"],
                                   lr=cfg["lr"], seed=0, eval_every=steps, return_params=True)
                params = rec["params"]
            else:
                params = mlp.random_mlp(dims, generator=torch.Generator().manual_seed(0))
            xb, yb = xtr[:B], ytr[:B]
            for r in analysis.gradient_spectra(params, xb, yb):
                spectra.append({"dataset": ds, "stage": stage, "width": cfg["spectra_width"], "batch": B, **r})
            for r in analysis.upstream_subspace_energy(params, xb, yb, cfg["energy_ks"]):
                energy.append({"dataset": ds, "stage": stage, "batch": B, **r})
    return {"spectra": spectra, "energy": energy}


def quality_jobs(cfg: Dict) -> List[Tuple[int, str, Optional[int]]]:
    jobs = []
    for w in cfg["quality_widths"]:
        for m in QUALITY_METHODS:
            for k in (cfg["quality_ks"] if m in K_METHODS else [None]):
                if k is not None and k > w:
                    continue
                jobs.append((w, m, k))
    return jobs


def run_quality_job(cfg: Dict, width: int, method: str, k: Optional[int]) -> List[Dict]:
    xtr, ytr, _, _ = load_tensors(cfg["quality_dataset"])
    params = mlp.random_mlp(_dims(xtr.shape[1], width, cfg["depth"]), generator=torch.Generator().manual_seed(0))
    B = cfg["quality_batch"]
    recs = analysis.estimator_quality(method, params, xtr[:B], ytr[:B], cfg["quality_samples"], k=k,
                                generator=torch.Generator().manual_seed(1))
    return [{"dataset": cfg["quality_dataset"], "width": width, "method": method, "k": k,
             "label": method_label(method, k), "batch": B, **r} for r in recs]


def training_jobs(cfg: Dict) -> List[Tuple[str, int, str, Optional[int], int]]:
    return [(ds, w, m, _k_for(m, cfg["k"]), s) for ds in cfg["datasets"] for w in cfg["widths"]
            for s in cfg["seeds"] for m in TRAIN_METHODS]


def run_training_job(cfg: Dict, ds: str, width: int, method: str, k: Optional[int], seed: int) -> Tuple[Dict, Dict]:
    xtr, ytr, xte, yte = load_tensors(ds)
    t0 = time.time()
    rec = training.train_mlp(method, _dims(xtr.shape[1], width, cfg["depth"]), xtr, ytr, xte, yte, steps=cfg["steps"],
                       batch_size=cfg["batch_size"], lr=cfg["lr"], k=k, seed=seed, eval_every=cfg["eval_every"])
    wall = time.time() - t0
    cos = rec["cosine"]
    mean_cos = [statistics.fmean(c[l] for c in cos) for l in range(len(cos[0]))] if cos else []
    row = {"dataset": ds, "width": width, "method": method, "k": k, "label": method_label(method, k), "seed": seed,
           "steps": rec["step"][-1], "batch_size": cfg["batch_size"], "lr": cfg["lr"],
           "final_test_accuracy": rec["test_accuracy"][-1], "best_test_accuracy": max(rec["test_accuracy"]),
           "final_train_loss": rec["train_loss"][-1], "diverged": rec["diverged"],
           "mean_cosine_layers": mean_cos, "mean_cosine": statistics.fmean(mean_cos) if mean_cos else None,
           "wall_time_s": wall, "ms_per_step": 1000 * wall / max(rec["step"][-1], 1)}
    return row, rec


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------
def run(*, quick: bool = False, out: Optional[Path] = None, progress: bool = True, num_threads: Optional[int] = None,
        parts: Sequence[str] = ("spectra", "quality", "training"), overrides: Optional[Dict] = None,
        argv: Optional[Sequence[str]] = None) -> Dict:
    """Run the chosen parts and return ``{"config", "spectra", "energy", "quality", "training"}``.

    ``overrides`` replaces entries of the (quick or full) config. With ``out`` every file is
    rewritten atomically after each unit of work.
    """
    from tqdm.auto import tqdm

    bad = set(parts) - {"spectra", "quality", "training"}
    if bad:
        raise ValueError(f"unknown parts {sorted(bad)}; choose from spectra, quality, training")
    cfg = dict(QUICK_CONFIG if quick else FULL_CONFIG)
    for key in (overrides or {}):
        if key not in cfg:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(cfg)}")
    cfg.update(overrides or {})
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    argv = list(argv) if argv is not None else ["python", "-m", __name__] + sys.argv[1:]
    result: Dict = {"config": cfg, "spectra": [], "energy": [], "quality": [],
                    "training": {"runs": [], "curves": {}}}
    start = time.time()
    seeds = {"training_seeds": list(cfg["seeds"]), "init_seed_spectra_quality": 0, "guess_seed_quality": 1}

    def save(status: str) -> None:
        if out is None:
            return
        o = Path(out)
        atomic_write_json(o / "results.json", result, indent=None)
        runs = result["training"]["runs"]
        if runs:
            atomic_write_text(o / "runs.csv", csv_text(runs, list(runs[0]), list_format=".6g"))
        if result["quality"]:
            atomic_write_text(o / "quality.csv", csv_text(result["quality"], list(result["quality"][0]), list_format=".6g"))
        prov = collect_provenance({**cfg, "quick": quick, "parts": list(parts)}, device="cpu", argv=argv,
                                  extra={"status": status, "seeds": seeds, "wall_time_s": time.time() - start,
                                         "training_runs_done": len(runs), "quality_records": len(result["quality"])})
        atomic_write_json(o / "provenance.json", prov)

    if "spectra" in parts:
        result.update(run_spectra(cfg, progress))
        save("running")
    if "quality" in parts:
        for w, m, k in tqdm(quality_jobs(cfg), desc="estimator quality", disable=not progress, dynamic_ncols=True):
            result["quality"] += run_quality_job(cfg, w, m, k)
            save("running")
    if "training" in parts:
        bar = tqdm(training_jobs(cfg), desc="training", disable=not progress, dynamic_ncols=True)
        for ds, w, m, k, s in bar:
            bar.set_postfix_str(f"{ds} w={w} {method_label(m, k)} seed {s}")
            row, rec = run_training_job(cfg, ds, w, m, k, s)
            result["training"]["runs"].append(row)
            result["training"]["curves"][f"{ds}/{w}/{row['label']}/{s}"] = rec
            save("running")
    save("completed")
    return result


# --------------------------------------------------------------------------------------
# summaries used by the chapter
# --------------------------------------------------------------------------------------
def training_summary(runs: Sequence[Dict]) -> List[Dict]:
    """Mean / min / max over seeds of the final test accuracy and mean cosine per (dataset, width, method)."""
    groups: Dict[Tuple, List[Dict]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["width"], r["label"]), []).append(r)
    out = []
    for (ds, w, lab), rs in groups.items():
        acc = [r["final_test_accuracy"] for r in rs]
        cos = [r["mean_cosine"] for r in rs if r["mean_cosine"] is not None]
        out.append({"dataset": ds, "width": w, "label": lab, "method": rs[0]["method"], "seeds": len(rs),
                    "acc_mean": statistics.fmean(acc), "acc_min": min(acc), "acc_max": max(acc),
                    "cos_mean": statistics.fmean(cos) if cos else None,
                    "ms_per_step": statistics.fmean(r["ms_per_step"] for r in rs)})
    return out


def format_training_summary(summary: Sequence[Dict]) -> str:
    lines = [f"{'dataset':<8} {'width':>5} {'method':<20} {'test acc (mean [min, max])':>28} {'mean cos':>9} {'ms/step':>8}"]
    for s in summary:
        cos = "-" if s["cos_mean"] is None else f"{s['cos_mean']:.3f}"
        lines.append(f"{s['dataset']:<8} {s['width']:>5} {s['label']:<20} "
                     f"{s['acc_mean']:>10.3f} [{s['acc_min']:.3f}, {s['acc_max']:.3f}]   {cos:>9} {s['ms_per_step']:>8.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------------------
BENCH_METHODS = (("backprop", None), ("weight", None), ("activation", None), ("wt", None),
                 ("upstream", 16), ("upstream_ns", 16))


def _saved_bytes_backprop(params, x, y) -> int:
    """Bytes of the tensors autograd saves for the backward pass (distinct storages)."""
    seen: Dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        analysis.true_gradient(params, x, y)
    leaves = {t.untyped_storage().data_ptr() for W, b in params for t in (W, b) if t is not None}
    leaves.add(x.untyped_storage().data_ptr())
    return sum(n for p, n in seen.items() if p not in leaves)


def run_benchmark(widths: Sequence[int] = (64, 128, 256, 512, 1024), *, batch_sizes: Sequence[int] = (128, 1024),
                  in_features: int = 784, depth: int = 3, repeats: int = 5, max_svd_size: int = 128 * 256 * 256,
                  out: Optional[Path] = None,
                  progress: bool = True, num_threads: Optional[int] = None, argv: Optional[Sequence[str]] = None) -> Dict:
    """Time per gradient and peak tensor memory, every estimator vs backprop, per width.

    Time: median over ``repeats`` calls after one warm-up call. Memory: one separate call inside
    :class:`guiding_nc.research.forward_gradients.PeakMemoryMeter` (tensors created by the call only:
    parameters and inputs excluded). For backprop also the bytes autograd saves for the backward
    pass. ``upstream`` (batched SVD of the per-example upstream Jacobians) is skipped when
    ``batch * width^2 > max_svd_size``. Every width is run at every batch size in
    ``batch_sizes`` (a large batch makes activation memory, not weight-sized buffers, dominate).
    Returns ``{"rows": [...], "provenance": {...}}``; writes it to ``out``.
    """
    from tqdm.auto import tqdm

    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    argv = list(argv) if argv is not None else ["python", "-m", __name__] + sys.argv[1:]
    start = time.time()
    rows: List[Dict] = []
    jobs = [(bs, w, m, k) for bs in batch_sizes for w in widths for m, k in BENCH_METHODS]

    def save(status):
        if out is None:
            return
        prov = collect_provenance({"widths": list(widths), "batch_sizes": list(batch_sizes), "in_features": in_features,
                                   "depth": depth, "repeats": repeats, "max_svd_size": max_svd_size,
                                   "methods": [method_label(m, k) for m, k in BENCH_METHODS]},
                                  device="cpu", argv=argv,
                                  extra={"status": status, "wall_time_s": time.time() - start,
                                         "notes": "time: median of `repeats` calls after a warm-up; memory: peak bytes "
                                                  "of tensors created during one call (PeakMemoryMeter), parameters "
                                                  "and inputs excluded; one guess per estimate; random data"})
        atomic_write_json(Path(out), {"rows": rows, "provenance": prov})

    for batch_size, w, m, k in tqdm(jobs, desc="benchmark", disable=not progress, dynamic_ncols=True):
        g = torch.Generator().manual_seed(0)
        params = mlp.random_mlp(_dims(in_features, w, depth), generator=g)
        x = torch.randn(batch_size, in_features, generator=g)
        y = torch.randint(0, 10, (batch_size,), generator=g)
        n_params = sum(t.numel() for W, b in params for t in (W, b) if t is not None)
        k = None if k is None else min(k, w)
        row = {"width": w, "method": m, "k": k, "label": method_label(m, k), "batch_size": batch_size,
               "param_bytes": 4 * n_params}
        if m == "upstream" and batch_size * w * w > max_svd_size:
            row.update(skipped=f"SVD of {batch_size} x ({w} x {w}) matrices per layer and step: too slow here",
                       ms=None, peak_bytes=None)
            rows.append(row)
            continue
        call = lambda: training.gradient(m, params, x, y, k=k, generator=g)  # noqa: E731
        call()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        with analysis.PeakMemoryMeter() as meter:
            call()
        row.update(ms=1000 * statistics.median(times), peak_bytes=meter.peak_bytes, skipped=None)
        if m == "backprop":
            row["saved_for_backward_bytes"] = _saved_bytes_backprop(params, x, y)
        rows.append(row)
        save("running")
    base = {(r["batch_size"], r["width"]): r for r in rows if r["method"] == "backprop"}
    for r in rows:
        b = base.get((r["batch_size"], r["width"]))
        ok = r["ms"] is not None and b is not None
        r["time_ratio_to_backprop"] = r["ms"] / b["ms"] if ok else None
        r["memory_ratio_to_backprop"] = r["peak_bytes"] / b["peak_bytes"] if ok and b["peak_bytes"] else None
    save("completed")
    return {"rows": rows}


def format_benchmark(rows: Sequence[Dict]) -> str:
    lines = [f"{'batch':>5} {'width':>5} {'method':<20} {'ms/grad':>9} {'x backprop':>10} {'peak MiB':>9} {'x backprop':>10}"]
    for r in rows:
        if r["ms"] is None:
            lines.append(f"{r['batch_size']:>5} {r['width']:>5} {r['label']:<20} {'skipped':>9}")
            continue
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        tr, mr = fmt(r.get("time_ratio_to_backprop")), fmt(r.get("memory_ratio_to_backprop"))
        lines.append(f"{r['batch_size']:>5} {r['width']:>5} {r['label']:<20} {r['ms']:>9.2f} {tr:>10} "
                     f"{r['peak_bytes'] / 2**20:>9.2f} {mr:>10}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guiding_nc.experiments.forward_gradients",
                                     description="Forward-mode gradient estimators: spectra, bias/variance, "
                                                 "training on MNIST-1D / MNIST 5k, and a memory/time benchmark.")
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds)")
    parser.add_argument("--out", default="data/results/forward_gradients")
    parser.add_argument("--parts", nargs="+", default=["spectra", "quality", "training"],
                        choices=["spectra", "quality", "training"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--bench", action="store_true", help="run the memory/time benchmark instead")
    parser.add_argument("--bench-out", default="data/bench/forward_gradients_cpu.json")
    parser.add_argument("--bench-widths", nargs="+", type=int, default=[64, 128, 256, 512, 1024])
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    full_argv = ["python", "-m", "guiding_nc.experiments.forward_gradients"] + (
        list(argv) if argv is not None else sys.argv[1:])
    if args.bench:
        widths = args.bench_widths if not args.quick else [16, 32]
        res = run_benchmark(widths, repeats=5 if not args.quick else 1,
                            batch_sizes=(128, 1024) if not args.quick else (8,),
                            out=Path(args.bench_out), progress=not args.no_progress, num_threads=args.threads,
                            argv=full_argv)
        print(format_benchmark(res["rows"]))
        print(f"saved {args.bench_out}")
        return 0
    res = run(quick=args.quick, out=Path(args.out), progress=not args.no_progress, num_threads=args.threads,
              parts=args.parts, argv=full_argv)
    if res["training"]["runs"]:
        print(format_training_summary(training_summary(res["training"]["runs"])))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def load_results(out: Path = Path("data/results/forward_gradients")) -> Tuple[Dict, Dict]:
    """``(results.json, provenance.json)`` of a finished (or interrupted) run directory."""
    import json

    out = Path(out)
    if not (out / "results.json").is_file():
        raise FileNotFoundError(f"no results in {out}; run `python -m guiding_nc.experiments.forward_gradients`")
    return json.loads((out / "results.json").read_text()), json.loads((out / "provenance.json").read_text())
