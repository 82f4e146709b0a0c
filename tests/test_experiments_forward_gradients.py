"""End-to-end tests of guiding_nc.research.forward_gradients.experiment (quick mode, into tmp_path)."""
import csv
import json

import pytest
import torch

from guiding_nc.research.forward_gradients import experiment as exp


def test_quick_reproduction_command_writes_tidy_files(tmp_path, capsys):
    out = tmp_path / "fg"
    assert exp.main(["--quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    assert "saved" in capsys.readouterr().out
    for f in ("results.json", "runs.csv", "quality.csv", "provenance.json"):
        assert (out / f).is_file()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "completed" and prov["config"]["quick"] is True
    for key in ("command", "git", "date", "device", "torch", "python", "numpy", "wall_time_s", "seeds"):
        assert key in prov
    assert "-m guiding_nc.experiments.forward_gradients" in prov["command"]
    res = json.loads((out / "results.json").read_text())
    cfg = res["config"]
    n_runs = len(cfg["datasets"]) * len(cfg["widths"]) * len(cfg["seeds"]) * len(exp.TRAIN_METHODS)
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == len(res["training"]["runs"]) == n_runs == len(res["training"]["curves"])
    assert {r["method"] for r in rows} == set(exp.TRAIN_METHODS)
    for r in res["training"]["runs"]:
        assert 0 <= r["final_test_accuracy"] <= 1
        if r["method"] == "backprop":
            assert r["mean_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert {r["stage"] for r in res["spectra"]} == {"init", "trained"}
    assert res["energy"] and res["quality"]
    assert {r["method"] for r in res["quality"]} == set(exp.QUALITY_METHODS)
    summary = exp.training_summary(res["training"]["runs"])
    assert "backprop" in exp.format_training_summary(summary)


def test_interrupted_run_keeps_finished_work(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = exp.run_training_job

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(exp, "run_training_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        exp.run(quick=True, out=tmp_path, progress=False, parts=["training"])
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["status"] == "running" and prov["training_runs_done"] == 2
    assert len(json.loads((tmp_path / "results.json").read_text())["training"]["runs"]) == 2


def test_benchmark_rows_and_provenance(tmp_path):
    out = tmp_path / "bench.json"
    res = exp.run_benchmark([8], batch_sizes=[4], in_features=5, repeats=1, max_svd_size=10, out=out, progress=False)
    data = json.loads(out.read_text())
    assert data["provenance"]["status"] == "completed" and len(data["rows"]) == len(exp.BENCH_METHODS)
    by = {r["method"]: r for r in res["rows"]}
    assert by["upstream"]["skipped"] and by["upstream"]["ms"] is None  # 4 * 8 * 8 > 10
    assert by["backprop"]["time_ratio_to_backprop"] == pytest.approx(1.0)
    assert by["backprop"]["saved_for_backward_bytes"] > 0
    for m in ("weight", "activation", "wt", "upstream_ns"):
        assert by[m]["peak_bytes"] > 0 and by[m]["ms"] > 0
    assert "skipped" in exp.format_benchmark(res["rows"])


def test_load_tensors_and_validation():
    xtr, ytr, xte, yte = exp.load_tensors("mnist5k")
    assert xtr.shape == (4000, 784) and xte.shape == (1000, 784) and ytr.shape == (4000,)
    assert abs(float(xtr.mean())) < 0.05 and xtr.dtype == torch.float32
    with pytest.raises(ValueError, match="offline"):
        exp.load_tensors("cifar10")
    with pytest.raises(ValueError, match="unknown parts"):
        exp.run(quick=True, parts=["nope"], progress=False)
    with pytest.raises(ValueError, match="unknown config key"):
        exp.run(quick=True, overrides={"epochs": 3}, progress=False)
    assert exp.method_label("upstream", 4) == "upstream (k=4)" and exp.method_label("wt", None) == "wt"
