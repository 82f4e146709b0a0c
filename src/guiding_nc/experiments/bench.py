"""Benchmarks that print tables (never timed tests).

``python -m guiding_nc.bench etf`` measures, side by side in one run, for each
``(d, C)``:

* forward time of the exact closed form vs pymanopt's Riemannian trust-region
  (the paper's solver; float64, warm-started at the previous solution as in
  training; skipped past a time cap, or altogether with ``--no-trust-region``), and
  the objective gap between them.  Both solvers are timed without input checks,
  which are timed on their own; the closed form is timed on the route
  ``polar="auto"`` picks (as a layer in training calls it: on the Newton–Schulz
  route with its memory of the last iteration count), on the SVD route and, on
  CUDA, on the gesvda route;
* the accuracy of the float32 factor the default route gives (``max |U^T U - I|``,
  distance to the float64 factor) and of its gradient (relative to float64);
* forward + backward time and extra peak memory of the closed-form adjoint vs
  the paper's dense implicit-function (KKT) gradient (skipped past a memory cap,
  with the memory it would need printed instead).

Peak memory on the CPU is measured in a fresh subprocess per case (peak
resident set size minus the resident size once the inputs exist); on CUDA with
``torch.cuda.max_memory_allocated``.  The table is saved as JSON with its
provenance so the book can render it.  Book: chapter 3 and chapter 5.

``python -m guiding_nc.bench overhead`` times one training step of each method
(:func:`bench_overhead`); ``python -m guiding_nc.bench paired`` times ``nearest_etf`` of
this checkout against another's (:mod:`guiding_nc.experiments.bench_paired`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

from ..core.reference import kkt_gradient as ddn
from ..core.memory import process_memory_bytes, reset_peak_rss
from ..core.etf import orthonormality_error, random_class_means
from ..core.nearest import check_inputs, nearest_etf, nearest_etf_objective, procrustes_matrix
from ..core.polar import NewtonSchulzState, polar_factor
from ..training.provenance import collect_provenance, commit_label, device_name, local_path

DEFAULT_SIZES = ((512, 10), (1024, 100), (1024, 200), (1024, 1000), (2048, 1000))


def step_problem(d: int, C: int, dtype, device, seed: int = 0):
    """A realistic step: class means ``H`` close to those that produced the proximal point."""
    g = torch.Generator().manual_seed(seed)
    H0 = random_class_means(d, C, generator=g)
    P = nearest_etf(H0, None, 1e-3)
    H = H0 + 0.05 * torch.randn(d, C, generator=g, dtype=torch.float64) / math.sqrt(d * C)
    H = H - H.mean(1, keepdim=True)
    H = H / H.norm()
    return H.to(dtype=dtype, device=device), P.to(dtype=dtype, device=device)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats: int) -> float:
    """Median wall time in seconds over ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _fwd_bwd(H, P, backward):
    Hr = H.clone().requires_grad_()
    U = nearest_etf(Hr, P, 1e-3, backward=backward)
    U.backward(torch.ones_like(U))
    return Hr.grad


def _peak_child(kind: str, d: int, C: int, dtype_name: str) -> dict:
    """Runs in a fresh process: extra peak resident memory of one forward+backward."""
    dtype = getattr(torch, dtype_name)
    H, P = step_problem(d, C, dtype, "cpu")
    _fwd_bwd(*step_problem(8, 4, dtype, "cpu"), kind)  # load kernels and libraries on a tiny case
    base = reset_peak_rss()
    _fwd_bwd(H, P, kind)
    peak = process_memory_bytes("VmHWM")
    return {"extra_peak_bytes": max(0, peak - base)}


def peak_memory_mb(kind: str, d: int, C: int, dtype, device="cpu") -> float:
    """Extra peak memory in MB of one forward+backward (inputs excluded)."""
    if torch.device(device).type == "cuda":
        H, P = step_problem(d, C, dtype, device)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _fwd_bwd(H, P, kind)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    dtype_name = str(dtype).replace("torch.", "")
    # A fixed mmap threshold makes glibc return large freed blocks at once, so the child's
    # peak resident size counts every large tensor it allocates.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, "-m", "guiding_nc.experiments.bench", "_peak", kind, str(d), str(C), dtype_name],
        capture_output=True, text=True, check=True, env=env,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["extra_peak_bytes"] / 2**20


def _device_name(device) -> str:
    return f"{device_name(device)}, {torch.get_num_threads()} threads"


def _blas_threads() -> dict:
    """Thread counts of every BLAS/OpenMP library loaded (torch's and NumPy's can differ)."""
    from threadpoolctl import threadpool_info

    return {f"{i['prefix']} ({i['user_api']})": i["num_threads"] for i in threadpool_info()}


def limit_threads(n: int) -> None:
    """Run torch and every loaded BLAS/OpenMP pool (NumPy's OpenBLAS too) on ``n`` threads.

    Without it, ``torch.set_num_threads(1)`` leaves NumPy's BLAS on all cores, so the
    pymanopt reference would get more threads than the solver it is compared with.
    """
    # Load NumPy's and SciPy's BLAS first (pymanopt pulls both in): the limit reaches only loaded pools.
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    try:
        import pymanopt  # noqa: F401
    except ImportError:  # the trust-region reference is optional (--no-trust-region)
        pass

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)  # the peak-memory subprocesses inherit it
    os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    threadpool_limits(limits=n)


def bench_provenance(device) -> dict:
    """What every benchmark table records about how it was produced: the package's one provenance
    record (:func:`~guiding_nc.training.provenance.collect_provenance`: command, commit, date,
    device, versions, threads) and the thread pools of torch and the BLAS."""
    return collect_provenance({}, device=device, argv=["python", "-m", "guiding_nc.bench", *sys.argv[1:]],
                              extra={"thread_pools": _blas_threads(), "status": "completed",
                                     "device_name": _device_name(device)})


def bench_etf(
    sizes=DEFAULT_SIZES,
    *,
    device: str = "cpu",
    repeats: int = 5,
    tr_repeats: int = 3,
    tr_cap_s: float = 60.0,
    kkt_cap_gb: float = 4.0,
    memory: bool = True,
    trust_region: bool = True,
    progress=print,
) -> dict:
    """Run the nearest-ETF benchmark and return ``{"rows": [...], "provenance": {...}}``.

    ``trust_region=False`` skips the paper's solver (and needs no pymanopt): its columns are ``None``.
    """
    if trust_region:
        import pymanopt  # noqa: F401  (fail early if the reference solver is missing)

    rows = []
    start = time.time()
    for d, C in sizes:
        row = {"d": d, "C": C}
        # Forward, float64: closed form vs trust-region.  Both solvers are timed without the
        # input checks (the trust-region call has none); the checks are their own column.
        H, P = step_problem(d, C, torch.float64, device)
        row["cf_polar_route"] = polar_factor(procrustes_matrix(H, P, 1e-3), return_route=True)[3]
        state = NewtonSchulzState()  # a layer's memory of its iteration count (used on the Newton–Schulz route)
        row["cf_forward_ms"] = 1e3 * _time(lambda: nearest_etf(H, P, 1e-3, check=False, polar_state=state),
                                           device, repeats)
        row["cf_svd_forward_ms"] = 1e3 * _time(lambda: nearest_etf(H, P, 1e-3, polar="svd", check=False), device, repeats)
        if torch.device(device).type == "cuda":
            row["cf_gesvda_forward_ms"] = 1e3 * _time(
                lambda: nearest_etf(H, P, 1e-3, polar="gesvda", check=False), device, repeats)
        row["checks_ms"] = 1e3 * _time(
            lambda: check_inputs(H, P, 1e-3, "closed_form", "closed_form", check=True), device, repeats
        )
        U_cf = nearest_etf(H, P, 1e-3)
        f_cf = float(nearest_etf_objective(U_cf, H, P, 1e-3))
        if trust_region:
            from ..core.reference.trust_region import trust_region_solve

            # Median of a few runs: one trust-region solve varies by tens of percent between runs.
            tr_times = []
            for _ in range(tr_repeats):
                t = time.perf_counter()
                U_tr, res = trust_region_solve(H, P, 1e-3, max_iterations=30, max_time=tr_cap_s, return_result=True)
                tr_times.append(time.perf_counter() - t)
                if tr_times[-1] >= tr_cap_s:
                    break  # capped: another run would only repeat the cap
            tr_s = statistics.median(tr_times)
            f_tr = float(nearest_etf_objective(U_tr, H, P, 1e-3))
            row.update(
                tr_forward_ms=1e3 * tr_s,
                tr_runs_ms=[1e3 * x for x in tr_times],
                tr_iterations=int(res.iterations),
                tr_stopped_by_time=bool(tr_s >= tr_cap_s),
                tr_stopping_criterion=str(res.stopping_criterion),
                speedup=tr_s / (row["cf_forward_ms"] / 1e3),
                objective_cf=f_cf,
                objective_tr=f_tr,
                objective_gap=f_tr - f_cf,
            )
            progress(f"  (d={d}, C={C}) forward: closed form {row['cf_forward_ms']:.2f} ms, trust-region {1e3 * tr_s:.0f} ms")
        else:
            row.update(tr_forward_ms=None, tr_runs_ms=[], tr_iterations=None, tr_stopped_by_time=None,
                       tr_stopping_criterion=None, speedup=None, objective_cf=f_cf, objective_tr=None,
                       objective_gap=None)
            progress(f"  (d={d}, C={C}) forward: closed form {row['cf_forward_ms']:.2f} ms ({row['cf_polar_route']})")
        row.update(float32_accuracy(d, C, device))
        # Forward + backward, float32 (the training dtype) and float64.
        for dtype in (torch.float32, torch.float64):
            name = str(dtype).replace("torch.", "")
            H, P = step_problem(d, C, dtype, device)
            row[f"cf_fwd_bwd_ms_{name}"] = 1e3 * _time(lambda: _fwd_bwd(H, P, "closed_form"), device, repeats)
        H, P = step_problem(d, C, torch.float64, device)
        need = ddn.kkt_memory_bytes(d, C, 8)
        row["kkt_need_gb"] = need / 2 ** 30  # GiB, as every memory figure of the package
        if need <= kkt_cap_gb * 2 ** 30:
            row["kkt_fwd_bwd_ms_float64"] = 1e3 * _time(lambda: _fwd_bwd(H, P, "kkt"), device, max(1, repeats // 2))
            g_cf, g_kkt = _fwd_bwd(H, P, "closed_form"), _fwd_bwd(H, P, "kkt")
            row["kkt_vs_cf_rel_err"] = float((g_kkt - g_cf).norm() / g_cf.norm())
        else:
            row["kkt_fwd_bwd_ms_float64"] = None
            row["kkt_vs_cf_rel_err"] = None
        if memory:
            row["cf_peak_mb_float32"] = peak_memory_mb("closed_form", d, C, torch.float32, device)
            row["cf_peak_mb_float64"] = peak_memory_mb("closed_form", d, C, torch.float64, device)
            row["kkt_peak_mb_float64"] = (
                peak_memory_mb("kkt", d, C, torch.float64, device) if row["kkt_fwd_bwd_ms_float64"] is not None else None
            )
        rows.append(row)
    provenance = {
        **bench_provenance(device),
        "pymanopt": __import__("pymanopt").__version__ if trust_region else None,
        "repeats": repeats,
        "tr_repeats": tr_repeats,
        "tr_cap_s": tr_cap_s,
        "kkt_cap_gb": kkt_cap_gb,
        "wall_time_s": time.time() - start,
        "notes": (
            "forward timings in float64 (trust-region works in float64 NumPy), both solvers without input checks "
            "(checks_ms: the finiteness and orthonormality checks nearest_etf runs by default); closed form via the "
            "route polar='auto' picks (cf_polar_route) and via the SVD (cf_svd_forward_ms); "
            "fwd+bwd (default call, checks included) in float32 and float64; "
            "f32_*: the float32 factor of the default route (f32_route) against the float64 one on the CPU "
            "(orthonormality, max entry error, gradient relative error for a fixed random upstream gradient); "
            "median over repeats after a warm-up; trust-region: median of tr_repeats runs (tr_runs_ms), warm-started at "
            "the previous solution, "
            "30 iterations max; peak memory: extra resident memory of one fwd+bwd in a fresh subprocess (CPU) "
            "or torch.cuda.max_memory_allocated (CUDA)"
        ),
    }
    return {"rows": rows, "provenance": provenance}


def float32_accuracy(d: int, C: int, device="cpu") -> dict:
    """The float32 factor the default route gives on ``device`` against float64 on the CPU: its
    orthonormality ``max |U^T U - I|``, ``max |U32 - U64|`` and the relative error of its gradient
    (one fixed random upstream gradient, the closed-form adjoint of each route)."""
    H, P = step_problem(d, C, torch.float64, "cpu")
    G = torch.randn(d, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grad(H, P, G):
        Hr = H.clone().requires_grad_()
        U = nearest_etf(Hr, P, 1e-3, check=False)
        (U * G).sum().backward()
        return U.detach(), Hr.grad

    U64, g64 = grad(H, P, G)
    dev = torch.device(device)
    U32, g32 = grad(H.to(dev, torch.float32), P.to(dev, torch.float32), G.to(dev, torch.float32))
    route = polar_factor(procrustes_matrix(H, P, 1e-3).to(dev, torch.float32), return_route=True)[3]
    U32, g32 = U32.double().cpu(), g32.double().cpu()
    return {
        "f32_route": route,
        "f32_orth_err": orthonormality_error(U32),
        "f32_u_err": float((U32 - U64).abs().max()),
        "f32_grad_rel_err": float((g32 - g64).norm() / g64.norm()),
    }


OVERHEAD_CASES = {
    # name: the training settings of the case (on top of TrainConfig's, the paper's defaults: AGD
    # gain 10, tau 5, delta 1e-3, stratified batches); only the classifier method varies.
    "small_cnn": {"dataset": "synthetic10", "model": "small_cnn", "feature_dim": 128, "batch_size": 128},
    "ufm100": {"dataset": "ufm", "model": "ufm", "num_classes": 100, "num_samples": 5000, "feature_dim": 1024,
               "batch_size": 5000},
    # The CIFAR/ImageNet widths on 32x32 inputs: the head's cost at C = 1000 is ImageNet's.
    "resnet18_c10": {"dataset": "synthetic10", "model": "resnet18", "batch_size": 256},
    "resnet50_c100": {"dataset": "synthetic100", "model": "resnet50", "batch_size": 256},
    "resnet50_c1000": {"dataset": "synthetic1000", "model": "resnet50", "batch_size": 256},
}
#: The cases run by default (the ResNets take minutes a step on a CPU: ask for them, or use a GPU).
DEFAULT_OVERHEAD_CASES = ("small_cnn", "ufm100")
OVERHEAD_VARIANTS = (
    ("standard", "standard", "closed_form"),
    ("implicit, DDN off", "implicit", "none"),
    ("implicit, DDN on", "implicit", "closed_form"),
)


def _overhead_step_fn(case: str, method: str, ddn: str, device, seed: int = 0):
    """One training step of ``case`` with ``method``: :meth:`guiding_nc.training.trainer.Trainer.train_step`
    on one fixed batch of the case's data, the very step the trainer takes."""
    import tempfile

    from ..training.config import load_config
    from ..training.trainer import Trainer

    if case not in OVERHEAD_CASES:
        raise ValueError(f"unknown overhead case {case!r}; choose from {', '.join(OVERHEAD_CASES)}")
    tmp = tempfile.mkdtemp(prefix="bench_overhead_")
    cfg = load_config(None, {**OVERHEAD_CASES[case], "method": method, "ddn_backward": ddn, "seed": seed,
                             "epochs": 1, "augment": False, "eval_train": False, "eval_test": False,
                             "checkpoint_every": 0, "progress": False, "verbose": False, "timing": "off",
                             "device": str(device), "run_dir": tmp})
    trainer = Trainer(cfg)
    trainer.network.train()
    x, y = next(iter(trainer.train_loader))
    x, y = x.to(trainer.device), y.to(trainer.device)

    def step():
        return trainer.train_step(x, y)[0]

    return step


def bench_overhead(cases=DEFAULT_OVERHEAD_CASES, *, device: str = "cpu", steps: int = 20, rounds: int = 3,
                   progress=print) -> dict:
    """Per-step time of each method, measured in interleaved rounds; ratios to ``standard``."""
    rows = []
    start = time.time()
    for case in cases:
        fns = {label: _overhead_step_fn(case, method, ddn, device) for label, method, ddn in OVERHEAD_VARIANTS}
        times = {label: [] for label in fns}
        for fn in fns.values():  # warm-up (first nearest-ETF call runs the two-stage initialisation)
            fn(); fn()
        for _ in range(rounds):  # interleave so drifts in machine load hit every variant alike
            for label, fn in fns.items():
                times[label].append(_time(fn, device, steps) * 1e3)
        base = statistics.median(times["standard"])
        for label, _, _ in OVERHEAD_VARIANTS:
            ms = statistics.median(times[label])
            rows.append({"case": case, "variant": label, "step_ms": ms, "ratio_to_standard": ms / base})
        progress(f"  {case}: " + ", ".join(f"{r['variant']} {r['ratio_to_standard']:.2f}x" for r in rows if r["case"] == case))
    provenance = {
        **bench_provenance(device),
        "steps_per_timing": steps,
        "rounds": rounds,
        "wall_time_s": time.time() - start,
        "notes": "median over rounds of the median step time over `steps` steps; AGD gain 10; "
                 + "; ".join(f"{c}: {OVERHEAD_CASES[c]}" for c in cases)
                 + " (Trainer.train_step on one fixed batch; the paper's defaults otherwise)",
    }
    return {"rows": rows, "provenance": provenance}


def format_overhead(result: dict) -> str:
    width = max([10] + [len(r["case"]) for r in result["rows"]])
    lines = [f"{'case':<{width}} {'variant':<18} {'step ms':>9} {'x standard':>11}", "-" * (width + 41)]
    for r in result["rows"]:
        lines.append(f"{r['case']:<{width}} {r['variant']:<18} {r['step_ms']:>9.2f} {r['ratio_to_standard']:>10.2f}x")
    p = result["provenance"]
    lines.append("")
    lines.append(f"device: {p['device']}; torch {p['torch']}; commit {commit_label(p)}; {p['date']}")
    return "\n".join(lines)


_ROUTE_LABELS = {"newton_schulz": "NS", "gesvda": "gesvda", "gram": "gram", "svd": "svd"}


def format_table(result: dict) -> str:
    """The benchmark as a plain-text table."""
    head = (
        f"{'d':>5} {'C':>5} | {'CF fwd ms':>9} {'route':>6} {'SVD ms':>8} {'checks':>7} {'TR fwd ms':>10} {'speedup':>8} {'obj gap':>9} | "
        f"{'CF f+b ms f32':>13} {'CF MB f32':>9} | {'CF f+b ms f64':>13} {'CF MB f64':>9} | "
        f"{'KKT f+b ms':>10} {'KKT MB':>9} {'KKT rel err':>11} | {'f32 orth':>8} {'f32 grad':>8}"
    )
    lines = [head, "-" * len(head)]

    def num(value, fmt, missing="-"):
        return missing if value is None else format(value, fmt)

    for r in result["rows"]:
        if r.get("tr_forward_ms") is None:
            tr = "-"
        else:
            tr = f"{r['tr_forward_ms']:.0f}" + ("*" if r["tr_stopped_by_time"] else "")
        kkt_ms = f"{r['kkt_fwd_bwd_ms_float64']:.1f}" if r["kkt_fwd_bwd_ms_float64"] is not None else "skipped"
        if r.get("kkt_peak_mb_float64") is not None:
            kkt_mb = f"{r['kkt_peak_mb_float64']:.1f}"
        else:
            kkt_mb = f"need {r['kkt_need_gb']:.1f}GiB" if r["kkt_fwd_bwd_ms_float64"] is None else "-"
        err = f"{r['kkt_vs_cf_rel_err']:.1e}" if r["kkt_vs_cf_rel_err"] is not None else "-"
        mb32 = f"{r['cf_peak_mb_float32']:.1f}" if "cf_peak_mb_float32" in r else "-"
        mb64 = f"{r['cf_peak_mb_float64']:.1f}" if "cf_peak_mb_float64" in r else "-"
        route = _ROUTE_LABELS.get(r.get("cf_polar_route", "svd"), r.get("cf_polar_route"))
        speedup = "-" if r.get("speedup") is None else f"{r['speedup']:.0f}x"
        lines.append(
            f"{r['d']:>5} {r['C']:>5} | {r['cf_forward_ms']:>9.2f} {route:>6} "
            f"{r.get('cf_svd_forward_ms', float('nan')):>8.2f} {r.get('checks_ms', float('nan')):>7.2f} "
            f"{tr:>10} {speedup:>8} {num(r.get('objective_gap'), '>9.1e'):>9} | "
            f"{r['cf_fwd_bwd_ms_float32']:>13.1f} {mb32:>9} | {r['cf_fwd_bwd_ms_float64']:>13.1f} {mb64:>9} | "
            f"{kkt_ms:>10} {kkt_mb:>9} {err:>11} | {num(r.get('f32_orth_err'), '.1e'):>8} "
            f"{num(r.get('f32_grad_rel_err'), '.1e'):>8}"
        )
    p = result["provenance"]
    lines.append("")
    lines.append("* trust-region stopped by the time cap before converging.  obj gap = f(TR) - f(closed form).")
    lines.append("CF fwd: closed form by the route polar='auto' picks (gram: eigh of A^T A; svd: thin SVD; NS: Newton-Schulz), "
                 "SVD ms: forced SVD route; checks: nearest_etf's input checks (not in either solver's time).")
    lines.append("f32 orth: max |U^T U - I| of the float32 factor by the default route; f32 grad: its gradient's error "
                 "relative to float64.")
    if any("cf_gesvda_forward_ms" in r for r in result["rows"]):
        lines.append("gesvda ms (CUDA): " + ", ".join(f"{r['d']}x{r['C']} {r['cf_gesvda_forward_ms']:.2f}"
                                                     for r in result["rows"] if "cf_gesvda_forward_ms" in r))
    lines.append(f"device: {p['device']}; torch {p['torch']}; commit {commit_label(p)}; {p['date']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_peak":
        print(json.dumps(_peak_child(argv[1], int(argv[2]), int(argv[3]), argv[4])))
        return 0
    parser = argparse.ArgumentParser(prog="python -m guiding_nc.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="which", required=True)
    p = sub.add_parser("etf", help="nearest-ETF forward/backward: closed form vs trust-region vs dense KKT")
    p.add_argument("--sizes", default=",".join(f"{d}x{C}" for d, C in DEFAULT_SIZES),
                   help="comma-separated dxC list (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tr-cap-s", type=float, default=60.0, help="time cap for one trust-region solve (s)")
    p.add_argument("--tr-repeats", type=int, default=3, help="trust-region runs per size; the median is reported")
    p.add_argument("--kkt-cap-gb", type=float, default=4.0, help="skip the dense KKT gradient above this memory (GiB)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-trust-region", action="store_true",
                   help="skip the paper's trust-region solver (it runs on the CPU through pymanopt, which this needs)")
    p.add_argument("--threads", type=int, default=None, help="threads for torch and for NumPy's BLAS alike (default: each library's choice)")
    p.add_argument("--out", default=None, help="write the table as JSON here (e.g. data/bench/etf_cpu.json)")
    q = sub.add_parser("overhead", help="per-step time of implicit over standard (small CNN, UFM-100; ResNets on request)")
    q.add_argument("--cases", default=",".join(DEFAULT_OVERHEAD_CASES),
                   help="comma-separated, from: " + ", ".join(OVERHEAD_CASES) + " ('all' for every one)")
    q.add_argument("--device", default="cpu")
    q.add_argument("--steps", type=int, default=20)
    q.add_argument("--rounds", type=int, default=3)
    q.add_argument("--out", default=None, help="write the table as JSON here (e.g. data/bench/overhead_cpu.json)")
    q.add_argument("--threads", type=int, default=None, help="threads for torch and for NumPy's BLAS alike (default: each library's choice)")
    a = sub.add_parser("paired", help="nearest_etf of this checkout against another's, call by call in one process")
    a.add_argument("--other-src", required=True, help="the src/ folder of the other checkout (e.g. a git worktree)")
    a.add_argument("--calls", type=int, default=20, help="paired calls per case (a quarter of it for C x d above 3e5)")
    a.add_argument("--threads", type=int, default=None, help="threads for torch and for NumPy's BLAS alike")
    a.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        limit_threads(args.threads)
    if args.which == "paired":
        from .bench_paired import bench_paired, format_paired, load_package_from

        if args.calls < 4:
            parser.error(f"--calls must be >= 4, got {args.calls}")
        try:
            other = load_package_from(args.other_src)
        except ValueError as err:
            parser.error(str(err))
        result = bench_paired(other, calls=args.calls, progress=lambda s: print(s, flush=True))
        result["other_src"] = local_path(args.other_src)
        print()
        print(format_paired(result))
        _save(result, args.out)
        return 0
    for name in ("repeats", "tr_repeats", "steps", "rounds"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.which == "overhead":
        cases = list(OVERHEAD_CASES) if args.cases == "all" else [c for c in args.cases.split(",") if c]
        unknown = [c for c in cases if c not in OVERHEAD_CASES]
        if unknown:
            parser.error(f"unknown case(s) {unknown}; choose from {sorted(OVERHEAD_CASES)}")
        result = bench_overhead(cases, device=args.device, steps=args.steps, rounds=args.rounds,
                                progress=lambda s: print(s, flush=True))
        print()
        print(format_overhead(result))
        _save(result, args.out)
        return 0
    try:
        sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
        assert all(len(s) == 2 and s[0] >= s[1] >= 2 for s in sizes)
    except (ValueError, AssertionError):
        parser.error(f"--sizes must look like 512x10,1024x100 with d >= C >= 2, got {args.sizes!r}")
    if not args.no_trust_region:
        import importlib.util

        if importlib.util.find_spec("pymanopt") is None:
            parser.error("pymanopt is not installed: the trust-region reference needs it; pass --no-trust-region to skip it")
    print(f"nearest-ETF benchmark on {_device_name(args.device)}", flush=True)
    result = bench_etf(
        sizes, device=args.device, repeats=args.repeats, tr_repeats=args.tr_repeats, tr_cap_s=args.tr_cap_s,
        kkt_cap_gb=args.kkt_cap_gb, memory=not args.no_memory, trust_region=not args.no_trust_region,
        progress=lambda s: print(s, flush=True),
    )
    print()
    print(format_table(result))
    _save(result, args.out)
    return 0


def _save(result: dict, path) -> None:
    if path:
        from ..training.provenance import atomic_write_json

        atomic_write_json(path, result)  # never leaves a half-written table behind
        print(f"\nsaved {path}")


if __name__ == "__main__":
    sys.exit(main())
