"""A full-budget replay: committed full-mode runs made again through the papermill path (the
experiment pages in full mode) give the committed numbers, so the committed results still come out
of today's code.

UFM-10 seed 0, all three methods at the paper's 2000 full-batch steps: the steps to 100% accuracy and
the final accuracy must be equal and the final loss equal to 1e-5 relative (full-batch training on
UFMs is not sensitive to rounding: the same runs on a GPU give the same step counts).  Digits x MLP
seed 0 of real_offline_200 (200 epochs of AGD at gain 10 on mini-batches): AGD amplifies rounding
(chapter 9), so this run is compared bit for bit, which only the CPU model that made it can promise;
on another CPU model it is skipped, saying so.
"""
import json
import platform

import pytest

from guiding_nc.experiments.results import load_results, results_dir
from guiding_nc.experiments.notebooks import run_page
from guiding_nc.training.provenance import device_name

KEEP = ("steps_to_fit", "train_top1", "train_loss", "train_nc1", "train_nc3")


def _rows(res, config, seed):
    return {r["method"]: r for r in res["runs"] if r["config"] == config and r["seed"] == seed}


def _committed_sources(name):
    return json.loads((results_dir(name) / "provenance.json").read_text()).get("run_sources") or {}


@pytest.mark.slow
def test_ufm10_seed0_replays_through_the_notebook(tmp_path):
    committed = _rows(load_results(results_dir("ufm10")), "ufm10", 0)
    run_page("ufm10", {"QUICK": False, "SEEDS": [0], "OUT": str(tmp_path / "out"), "THREADS": 1},
             output=tmp_path / "ufm10.ipynb", progress=False)
    replay = _rows(load_results(tmp_path / "out"), "ufm10", 0)
    assert set(replay) == set(committed) == {"standard", "fixed", "implicit"}
    for m, row in committed.items():
        new = replay[m]
        assert new["steps_to_fit"] == row["steps_to_fit"], m
        assert new["train_top1"] == row["train_top1"], m
        assert new["train_loss"] == pytest.approx(row["train_loss"], rel=1e-5), m


@pytest.mark.slow
def test_a_real_offline_200_run_replays_bit_for_bit_on_its_cpu(tmp_path):
    sources = _committed_sources("real_offline_200")
    made_on = {s.get("device") for k, s in sources.items() if k.startswith("digits_mlp/default/") and k.endswith("/0")}
    here = device_name("cpu")
    if made_on != {here}:
        pytest.skip(f"the committed digits runs were made on {sorted(made_on)}; this CPU is {here!r} "
                    f"({platform.machine()}): AGD amplifies rounding, only that CPU model replays them bit for bit")
    committed = _rows(load_results(results_dir("real_offline_200")), "digits_mlp", 0)
    run_page("real_offline", {"QUICK": False, "EXPERIMENT": "real_offline_200", "CONFIGS": ["digits_mlp"],
                              "SEEDS": [0], "OUT": str(tmp_path / "out"), "THREADS": 1},
             output=tmp_path / "real.ipynb", progress=False)
    replay = _rows(load_results(tmp_path / "out"), "digits_mlp", 0)
    for m, row in committed.items():
        for k in ("train_top1@50", "train_top1@200", "test_top1@200", "train_loss"):
            assert replay[m][k] == row[k], (m, k)
