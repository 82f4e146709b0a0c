"""Reproduction commands run end to end in quick mode and write tidy results with provenance."""
import csv
import json

from guiding_nc.experiments import steps_to_fit


def test_first_fit_step():
    assert steps_to_fit.first_fit_step([0.1, 0.5, 1.0, 0.9, 1.0]) == 2
    assert steps_to_fit.first_fit_step([1.0]) == 0
    assert steps_to_fit.first_fit_step([0.2, 0.99]) is None


def test_summarize_counts_runs_that_never_fit():
    rows = [
        {"config": "u", "method": "m", "seed": 0, "steps_to_fit": 4},
        {"config": "u", "method": "m", "seed": 1, "steps_to_fit": None},
        {"config": "u", "method": "m", "seed": 2, "steps_to_fit": 8},
    ]
    cell = steps_to_fit.summarize(rows)["u"]["m"]
    assert (cell["median"], cell["min"], cell["max"], cell["not_fitted"]) == (6, 4, 8, 1)
    assert "1 of 3" in steps_to_fit.format_summary(steps_to_fit.summarize(rows))


def test_steps_to_fit_quick_end_to_end(tmp_path):
    out = tmp_path / "stf"
    assert steps_to_fit.main(["--quick", "--configs", "ufm10", "--seeds", "0", "--steps", "40",
                              "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert sorted(r["method"] for r in rows) == ["fixed", "implicit", "standard"]
    assert all(r["optimizer"] == "agd" and r["stratified"] == "True" for r in rows)
    curves = json.loads((out / "curves.json").read_text())
    assert all(len(c) == 40 and all(0 <= a <= 1 for a in c) for c in curves.values())
    for r in rows:  # steps_to_fit agrees with the recorded curve
        curve = curves[f"ufm10/{r['method']}/0"]
        assert r["steps_to_fit"] == ("" if steps_to_fit.first_fit_step(curve) is None else str(steps_to_fit.first_fit_step(curve)))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "completed" and prov["git"] and prov["torch"]
