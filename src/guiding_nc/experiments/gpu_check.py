"""The checks that need a CUDA device, in one command: ``python -m guiding_nc.gpu_check`` (``make gpu-check``).

Within a time budget (default 8 minutes on one H200), each stage runs in its own process group
under its own time cap, its output appended to one log:

======================  ===============================================================  =========
stage                   command (``python -m ...``)                                         cap
======================  ===============================================================  =========
``tests``               ``pytest -m cuda`` on the tests that have CUDA cases                90 s
``etf``                 ``guiding_nc.experiments.bench etf --device cuda`` -> ``etf_cuda.json``          60 s
``overhead``            ``guiding_nc.experiments.bench overhead --cases all --device cuda``              75 s
                        -> ``overhead_cuda.json``
``cost``                ``guiding_nc.experiments.cost --device cuda`` (UFM-1000/200/100/10)  160 s
                        -> ``cost_cuda/``
``ufm_scaling``         ``guiding_nc.experiments.reproduce ufm_scaling --device cuda``       the rest
                        ``--seeds 0`` (the paper's budget, 2000 steps) -> ``ufm_scaling_cuda/``
======================  ===============================================================  =========

Benchmarks go to ``data/bench/``, experiment results to ``data/results/``, each with the provenance
its own command records; ``data/bench/gpu_check_cuda.json`` lists every stage (command, cap, wall
time, exit status, outputs) with this run's provenance, and ``data/bench/gpu_check_cuda.log`` holds
their output.  A stage stopped by its cap keeps what it wrote (the cost table and the experiment
are written after every case and run); the experiment resumes from its work directory
(``runs/gpu_check/``) and its output directory when run again, so the whole grid (60 runs, about
15 minutes on an H200) can be completed with ``--seeds 0 1 2 3 4 --budget-s 1500`` or in slices.
The trust-region reference is left out of the ``etf`` stage (it runs on the CPU through pymanopt;
``data/bench/etf_cpu.json`` has it).

Without a CUDA device it refuses in one line (exit status 2).  It needs only the package's runtime
dependencies and pytest: no virtual environment (``scripts/gpu_check.sh`` puts ``src`` on the path).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[3]  # the repository (src/guiding_nc/experiments/ -> ...)
DEFAULT_BUDGET_S = 480.0
#: Test files with CUDA cases (marked ``cuda``).
CUDA_TEST_FILES = ("tests/test_cuda.py", "tests/test_polar.py", "tests/test_nearest.py", "tests/test_heads.py")
STAGES = ("tests", "etf", "overhead", "cost", "ufm_scaling")
_MIN_LAST_STAGE_S = 45.0  # below this the experiment would not finish one run: skipped


@dataclass
class Stage:
    name: str
    argv: List[str]
    cap_s: Optional[float]  # None: whatever the budget leaves
    outputs: List[str] = field(default_factory=list)
    skip_reason: Optional[str] = None


def plan(*, seeds: Sequence[int] = (0,), bench_dir: str = "data/bench", results_dir: str = "data/results",
         work_dir: str = "runs/gpu_check", allow_dirty: bool = False, python: str = sys.executable) -> List[Stage]:
    """The stages, in order (commands relative to the repository root)."""
    py = [python, "-m"]
    tests = [f for f in CUDA_TEST_FILES if (ROOT / f).exists()]
    stages = [
        Stage("tests", py + ["pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *tests], 90.0),
        Stage("etf", py + ["guiding_nc.experiments.bench", "etf", "--device", "cuda", "--repeats", "10", "--kkt-cap-gb", "20",
                           "--no-trust-region", "--out", f"{bench_dir}/etf_cuda.json"], 60.0,
              [f"{bench_dir}/etf_cuda.json"]),
        Stage("overhead", py + ["guiding_nc.experiments.bench", "overhead", "--cases", "all", "--device", "cuda", "--steps", "10",
                                "--rounds", "3", "--out", f"{bench_dir}/overhead_cuda.json"], 75.0,
              [f"{bench_dir}/overhead_cuda.json"]),
        # Largest first: each case is a fresh process (about 10 s), so a cap cuts the smallest.
        Stage("cost", py + ["guiding_nc.experiments.cost", "--device", "cuda", "--configs", "ufm1000", "ufm200",
                            "ufm100", "ufm10", "--kkt-cap-gb", "20", "--out", f"{results_dir}/cost_cuda",
                            "--no-progress"], 160.0, [f"{results_dir}/cost_cuda"]),
        Stage("ufm_scaling", py + ["guiding_nc.experiments.reproduce", "ufm_scaling", "--device", "cuda",
                                   "--seeds", *[str(s) for s in seeds], "--out", f"{results_dir}/ufm_scaling_cuda",
                                   "--work-dir", f"{work_dir}/ufm_scaling", "--no-progress"]
              + (["--allow-dirty"] if allow_dirty else []), None, [f"{results_dir}/ufm_scaling_cuda"]),
    ]
    if importlib.util.find_spec("pytest") is None:
        stages[0].skip_reason = "pytest is not installed"
    return stages


def _run_stage(stage: Stage, cap: float, log, env: Dict[str, str]) -> Dict:
    """Run one stage in its own process group; on its cap the whole group is stopped."""
    log.write(f"\n=== {stage.name} (cap {cap:.0f}s) {time.strftime('%H:%M:%S')}\n$ {' '.join(stage.argv)}\n")
    log.flush()
    t0 = time.time()
    proc = subprocess.Popen(stage.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    status = "ok"
    try:
        rc = proc.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        status = "stopped at its cap"
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        rc = proc.wait()
    if status == "ok" and rc != 0:
        status = "failed"
    wall = time.time() - t0
    log.write(f"=== {stage.name} {status} rc={rc} wall={wall:.0f}s\n")
    log.flush()
    return {"stage": stage.name, "command": _command(stage), "cap_s": round(cap, 1), "wall_s": round(wall, 1),
            "rc": rc, "status": status, "outputs": stage.outputs}


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _command(stage: Stage) -> str:
    return "python -m " + " ".join(stage.argv[2:])  # argv: [python, -m, ...]


def run(stages: List[Stage], *, budget_s: float, bench_dir: str, archive: Optional[str] = None,
        argv: Optional[Sequence[str]] = None, progress=print) -> Dict:
    import torch

    from ..training.provenance import atomic_write_json, collect_provenance

    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in [env.get("PYTHONPATH")] if p])
    bench = ROOT / bench_dir
    bench.mkdir(parents=True, exist_ok=True)
    log_path, summary_path = bench / "gpu_check_cuda.log", bench / "gpu_check_cuda.json"
    start = time.time()
    rows: List[Dict] = []
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    info = collect_provenance({"budget_s": budget_s, "stages": [s.name for s in stages]}, device="cuda",
                              argv=["python", "-m", "guiding_nc.gpu_check", *(argv or [])], extra={"gpu": gpu})

    def save(status: str) -> None:
        atomic_write_json(summary_path, {"stages": rows, "provenance": {
            **info, "status": status, "wall_time_s": round(time.time() - start, 1),
            "log": _rel(log_path)}})

    with open(log_path, "a") as log:
        log.write(f"# gpu-check {time.strftime('%Y-%m-%d %H:%M:%S')} on {info['gpu']}, torch {torch.__version__}, "
                  f"budget {budget_s:.0f}s\n")
        for i, stage in enumerate(stages):
            left = budget_s - (time.time() - start)
            later = sum(s.cap_s or _MIN_LAST_STAGE_S for s in stages[i + 1:] if not s.skip_reason)
            # A fixed cap, squeezed if the stages after it would not fit; the last stage takes the rest.
            cap = min(stage.cap_s if stage.cap_s is not None else left - 5.0, left - later)
            floor = min(stage.cap_s or _MIN_LAST_STAGE_S, _MIN_LAST_STAGE_S)
            reason = stage.skip_reason or (f"only {left:.0f}s of the budget left" if cap < floor else None)
            if reason:
                rows.append({"stage": stage.name, "status": f"skipped: {reason}", "command": _command(stage),
                             "outputs": []})
                progress(f"gpu-check: {stage.name} skipped ({reason})")
                log.write(f"\n=== {stage.name} skipped: {reason}\n")
                save("running")
                continue
            progress(f"gpu-check: {stage.name} (cap {cap:.0f}s) ...")
            row = _run_stage(stage, cap, log, env)
            rows.append(row)
            progress(f"gpu-check: {stage.name} {row['status']} in {row['wall_s']:.0f}s")
            save("running")
    status = "completed" if all(r["status"] == "ok" for r in rows) else "completed with problems"
    save(status)
    if archive:
        with tarfile.open(ROOT / archive if not Path(archive).is_absolute() else archive, "w:gz") as tar:
            for rel in [_rel(log_path), _rel(summary_path)] + [o for r in rows for o in r.get("outputs", [])]:
                if (ROOT / rel).exists():
                    tar.add(ROOT / rel, arcname=rel)
    progress(f"gpu-check: {status} in {time.time() - start:.0f}s; summary {_rel(summary_path)}, "
             f"log {_rel(log_path)}" + (f", archive {archive}" if archive else ""))
    return {"stages": rows, "status": status}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m guiding_nc.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="total time (default: %(default)s)")
    parser.add_argument("--only", default=None, help="comma-separated stages, from: " + ", ".join(STAGES))
    parser.add_argument("--skip", default="", help="comma-separated stages to leave out")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the ufm_scaling stage")
    parser.add_argument("--bench-dir", default="data/bench")
    parser.add_argument("--results-dir", default="data/results")
    parser.add_argument("--work-dir", default="runs/gpu_check")
    parser.add_argument("--allow-dirty", action="store_true", help="passed on to the experiment (recorded)")
    parser.add_argument("--archive", default=None, help="also pack the summary, log and outputs into this .tar.gz")
    parser.add_argument("--dry-run", action="store_true", help="print the stages and their caps; run nothing")
    args = parser.parse_args(argv)
    chosen = STAGES if args.only is None else tuple(s for s in args.only.split(",") if s)
    unknown = [s for s in chosen + tuple(s for s in args.skip.split(",") if s) if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    stages = [s for s in plan(seeds=args.seeds, bench_dir=args.bench_dir, results_dir=args.results_dir,
                              work_dir=args.work_dir, allow_dirty=args.allow_dirty)
              if s.name in chosen and s.name not in args.skip.split(",")]
    if args.dry_run:
        for s in stages:
            cap = "rest of the budget" if s.cap_s is None else f"{s.cap_s:.0f}s"
            note = f"  [skipped: {s.skip_reason}]" if s.skip_reason else ""
            print(f"{s.name:<12} cap {cap:<18} {_command(s)}{note}")
        print(f"budget {args.budget_s:.0f}s")
        return 0
    if not (ROOT / "tests").is_dir():
        print(f"gpu-check: run it from a checkout of the repository (no tests/ beside {ROOT / 'src'})", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device (torch.cuda.is_available() is False); nothing was run", file=sys.stderr)
        return 2
    result = run(stages, budget_s=args.budget_s, bench_dir=args.bench_dir, archive=args.archive, argv=argv)
    return 0 if result["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
