"""The reduction-mapping experiment (guiding_nc.research.reduction_mappings)."""
import json
import math

import pytest
import torch

from guiding_nc.research.reduction.analysis import optimal_value
from guiding_nc.research.reduction.objective import PARAMETRISATIONS
from guiding_nc.research import reduction_mappings as rm

TINY = {"tiny": dict(num_classes=3, n_per_class=2, dim=4, measure="exact", steps=12, record_every=4, seeds=(0,))}


def test_objectives_share_the_optimum_and_the_starting_features():
    objs = rm.build_objectives(3, 2, 4)
    assert set(objs) == set(PARAMETRISATIONS)
    values = [optimal_value(o) for o in objs.values()]
    assert max(values) - min(values) < 1e-14
    x0 = rm.initial_points(objs, seed=1)
    N, d = 6, 4
    for p in PARAMETRISATIONS:
        assert torch.equal(x0[p][: N * d], x0["fixed"])
    assert x0["free"].numel() == objs["free"].numel
    assert not torch.equal(rm.initial_points(objs, seed=2)["fixed"], x0["fixed"])


def test_run_trajectory_uses_the_local_step_rule_and_never_goes_below_f_star():
    objs = rm.build_objectives(3, 2, 4)
    f_star = optimal_value(objs["implicit"])
    x0 = rm.initial_points(objs, 0)["implicit"]
    traj = rm.run_trajectory(objs["implicit"], x0, f_star, steps=10, record_every=5, measure="exact")
    assert [r["step"] for r in traj["rows"]] == [0, 5, 10]
    assert len(traj["gaps"]) == 11 and len(traj["lrs"]) == 10
    for r in traj["rows"]:
        assert r["lr"] == pytest.approx(1.0 / r["lambda_max"])
        assert r["pb_lambda_max"] <= r["base_lambda_max"]
        assert r["residual"] < 1e-10
    assert traj["lrs"][:5] == [traj["rows"][0]["lr"]] * 5
    assert traj["gaps"][-1] < traj["gaps"][0]
    assert min(traj["gaps"]) > -1e-12
    assert not traj["diverged"]


def test_collapse_constants_and_summaries():
    objs = rm.build_objectives(3, 2, 4)
    cc = rm.collapse_constants(objs)
    for p, e in cc.items():
        assert e["euclidean"]["constant"] > 0 and e["euclidean"]["kernel_dim"] > 0
        assert e["euclidean"]["most_negative"] > -1e-10  # a minimiser
        assert (e["pullback"] is None) == (p == "free")
    s = rm.summarize_run([{"gap": 1e-6, "lambda_max": 2.0, "pl": 0.5, "kappa": 4.0, "lambda_min": 0.0}],
                         [1.0, 1e-3, 1e-9])
    assert s["steps_to_tol"] == 2 and s["late_points"] == 1 and s["late_kappa"] == 4.0
    assert math.isnan(s["late_pb_pl"])


def test_end_to_end_reproduction_command(tmp_path):
    out = tmp_path / "rm"
    rc = rm.main(["--quick", "--configs", "C4_d6", "--steps", "12", "--out", str(out), "--threads", "1",
                  "--no-progress"])
    assert rc == 0
    for name in ("curvature.csv", "convergence.json", "collapse.csv", "spectra.json", "summary.json",
                 "provenance.json"):
        assert (out / name).exists(), name
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "completed" and prov["runs_done"] == prov["runs_total"] == 4
    assert "-m guiding_nc.experiments.reduction_mappings" in prov["command"] and "--quick" in prov["command"]
    for key in ("config", "seed", "git", "date", "device_name", "torch", "numpy", "python", "wall_time_s"):
        assert key in prov
    assert prov["config"]["configs"]["C4_d6"]["steps"] == 12
    res = rm.load_results(out)
    assert {r["method"] for r in res["curvature"]} == set(PARAMETRISATIONS)
    assert len(res["runs"]) == 4 and len(res["convergence"]["C4_d6/free/0"]["gap"]) == 13
    assert [v["verdict"] in ("agree", "disagree", "inconclusive") for v in res["verdicts"]] == [True] * 4
    assert "C4_d6" in res["spectra"] and {"collapse", "start", "end"} <= set(res["spectra"]["C4_d6"])
    from guiding_nc.experiments.results import provenance_caption
    assert "commit" in provenance_caption(res["provenance"])


def test_run_in_memory_and_errors(tmp_path):
    res = rm.run(TINY, progress=False)
    assert len(res["runs"]) == 4 and len(res["verdicts"]) == 4
    assert {r["measure"] for r in res["curvature"]} == {"exact"}
    with pytest.raises(ValueError, match="non-empty"):
        rm.run({}, progress=False)
    with pytest.raises(ValueError, match="measure"):
        rm.run({"x": dict(TINY["tiny"], measure="power")}, progress=False)
    with pytest.raises(ValueError, match="missing"):
        rm.run({"x": {"num_classes": 3}}, progress=False)
    with pytest.raises(ValueError, match="num_threads"):
        rm.run(TINY, progress=False, num_threads=0)
    with pytest.raises(ValueError, match="summary.json"):
        rm.load_results(tmp_path)
    with pytest.raises(SystemExit):
        rm.main(["--configs", "no_such_config", "--out", str(tmp_path / "x")])
