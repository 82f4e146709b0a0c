"""make gpu-check's runner (guiding_nc.experiments.gpu_check): the plan, the caps, the refusal without CUDA."""
import json
import sys

import torch

from guiding_nc.experiments import gpu_check
from guiding_nc.experiments.gpu_check import Stage


def test_plan_runs_every_check_within_eight_minutes(capsys):
    stages = gpu_check.plan()
    assert [s.name for s in stages] == list(gpu_check.STAGES)
    commands = {s.name: " ".join(s.argv[2:]) for s in stages}
    assert "-m cuda" in commands["tests"] and "tests/test_cuda.py" in commands["tests"]
    assert "bench etf --device cuda" in commands["etf"]
    assert "overhead --cases all --device cuda" in commands["overhead"]
    assert "ufm1000 ufm200 ufm100 ufm10 " in commands["cost"]
    assert commands["ufm_scaling"].startswith("guiding_nc.experiments.reproduce ufm_scaling --device cuda --seeds 0")
    assert sum(s.cap_s for s in stages if s.cap_s) + gpu_check._MIN_LAST_STAGE_S <= gpu_check.DEFAULT_BUDGET_S
    assert gpu_check.main(["--dry-run", "--only", "etf,cost"]) == 0
    out = capsys.readouterr().out
    assert "etf_cuda.json" in out and "cost_cuda" in out and "ufm_scaling" not in out


def test_refuses_in_one_line_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no CUDA device" in err


def test_stages_run_under_their_caps_and_are_recorded(tmp_path):
    py = sys.executable
    stages = [
        Stage("quick", [py, "-c", "print('done')"], 20.0),
        # A stage that outlives its cap, with a child of its own: the whole group is stopped.
        Stage("slow", [py, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                       "'import time; time.sleep(60)']); time.sleep(60)"], 2.0),
        Stage("broken", [py, "-c", "raise SystemExit(3)"], 20.0),
        Stage("last", [py, "-c", "print('rest')"], None, outputs=["nothing/here"]),
    ]
    res = gpu_check.run(stages, budget_s=120.0, bench_dir=str(tmp_path), archive=str(tmp_path / "out.tar.gz"),
                        progress=lambda s: None)
    status = {r["stage"]: r["status"] for r in res["stages"]}
    assert status == {"quick": "ok", "slow": "stopped at its cap", "broken": "failed", "last": "ok"}
    slow = next(r for r in res["stages"] if r["stage"] == "slow")
    assert slow["wall_s"] < 15
    summary = json.loads((tmp_path / "gpu_check_cuda.json").read_text())
    assert summary["provenance"]["status"] == "completed with problems" and len(summary["stages"]) == 4
    log = (tmp_path / "gpu_check_cuda.log").read_text()
    assert "done" in log and "rest" in log and "=== slow stopped at its cap" in log
    assert (tmp_path / "out.tar.gz").exists()


def test_a_squeezed_budget_skips_the_last_stage(tmp_path):
    py = sys.executable
    stages = [Stage("first", [py, "-c", "pass"], 10.0), Stage("last", [py, "-c", "pass"], None)]
    res = gpu_check.run(stages, budget_s=30.0, bench_dir=str(tmp_path), progress=lambda s: None)
    assert res["stages"][1]["status"].startswith("skipped: only")
