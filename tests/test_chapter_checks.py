"""The checks the chapters show, asserted: the shared table helper (labels, rounding, bold), the
simplex-ETF chapter's formulas (guiding_nc.companions.etf_checks), the gradient chapter's polar
derivative, delta = 0 and collapse checks, the cost chapter's memory in one unit, and the readings
of the committed results (ablations, forward gradients) that the chapters print."""
import json

import pytest
import torch

from guiding_nc.companions import ablations, cost_tables, etf_checks, tables
from guiding_nc.companions import forward_gradient_reading as fgr
from guiding_nc.companions import gradient_checks as gck
from guiding_nc.experiments.results import load_results, results_dir
from guiding_nc.training.config import project_root

NBSP = tables.NBSP


# ---------------------------------------------------------------------------------- tables
def test_result_keys_have_one_human_label():
    assert tables.label("steps_to_fit") == "steps to 100% train"
    assert tables.label("train_nc1") == "NC1 (train)"
    assert tables.label("test_top1@200") == "test top-1 (%), epoch 200"
    assert tables.label("train_top1@2000", at="step") == "train top-1 (%), step 2000"
    assert tables.label("something_new") == "something new"


def test_values_are_rounded_to_what_the_seeds_support_and_a_tight_band_is_shown_once():
    loss = {"median": 0.0342369, "min": 0.03423690, "max": 0.03423698}
    assert tables.band("train_loss", loss).text == "0.0342"
    acc = {"median": 0.97345, "min": 0.9612, "max": 0.9801}
    assert tables.band("test_top1", acc).text == "97.3 [96.1, 98.0]"
    assert tables.band("steps_to_fit", [2, 2, 2]).text == "2"
    assert tables.band("steps_to_fit", {"median": 7.5, "min": 7, "max": 8}).text == "7.5 [7.0, 8.0]"
    assert tables.band("steps_to_fit", {"median": 3, "min": 2, "max": 9, "missing": 1}).text == "3 [2, 9] (1 never)"
    assert tables.band("time_step_ms", 62579.9).text == "62,580" and tables.band("time_step_ms", 9.9996).text == "10.0"


def test_the_best_of_a_row_is_bold_ties_included_and_cells_do_not_wrap():
    summary = {g: {"seeds": [0, 1], "train_loss": {"median": v, "min": v, "max": v},
                   "test_top1": {"median": a, "min": a - 0.01, "max": a + 0.01}}
               for g, v, a in (("a", 0.5, 0.9), ("b", 0.5, 0.8), ("c", 0.7, 0.9))}
    t = tables.seed_table(summary, {"A": "a", "B": "b", "C": "c"}, ["train_loss", "test_top1", "train_nc1"])
    rows = t.split("\n\n")[0].splitlines()[2:]
    assert len(rows) == 2  # no group has train_nc1: no row
    loss, acc = ([c.strip() for c in r.split("|")[1:-1]] for r in rows)
    assert loss == ["train loss", "**0.5**", "**0.5**", "0.7"]  # a tie: both bold
    assert acc[1].startswith("**90.0") and acc[3].startswith("**90.0") and not acc[2].startswith("**")
    assert f"90.0{NBSP}[89.0,{NBSP}91.0]" in acc[1]  # a numeric cell never wraps
    same = tables.seed_table({g: {"x_ms": {"median": 1.0}} for g in "ab"}, {"A": "a", "B": "b"}, ["x_ms"])
    assert "**" not in same  # no direction, no best
    assert isinstance(t, str) and t._repr_markdown_() == str(t)


# ---------------------------------------------------------------------------------- chapter 02
@pytest.fixture(scope="module")
def ex():
    return etf_checks.extremes(C=6, d=12, per_class=20, s=3.0, gen=torch.Generator().manual_seed(0))


def test_the_simplex_etf_identities():
    gen = torch.Generator().manual_seed(0)
    for v in etf_checks.construction(10, 16, gen).values.values():
        assert v["orth"] < 1e-12 and abs(v["fro"] - 1) < 1e-12 and v["eq1"] < 1e-12 and v["classifier"] < 1e-12
        assert abs(v["norm_lo"] - 1) < 1e-12 and abs(v["norm_hi"] - 1) < 1e-12
    for (C, _), v in etf_checks.identities((3, 4, 10, 100), gen).values.items():
        assert max(v["norm"], v["cos"], v["sum"], v["gram"]) < 1e-10 and v["rank"] == C - 1
    r = etf_checks.reflection(5, 9, gen).values
    assert r["orth"] < 1e-12 and r["moved"] > 0.1 and r["etf"] < 1e-12
    for C, v in etf_checks.cosine_bound((3, 4, 10), gen).values.items():
        assert v["sum_sq"] < 1e-20 and v["lam_below"] < 0 and v["holds"]
    gammas = torch.tensor([-0.6, -0.5, -0.4], dtype=torch.float64)
    smallest = etf_checks.gram_spectrum((3,), gammas)[3]
    assert smallest[0] < 0 and abs(smallest[1]) < 1e-12 and smallest[2] > 0


def test_the_collapse_metrics_on_the_two_extremes(ex):
    gen = torch.Generator().manual_seed(1)
    cov = etf_checks.covariances(ex).values
    assert cov["collapsed"]["sw"] < 1e-12 and cov["collapsed"]["rank_sb"] == 5 and cov["sb_collapsed"] < 1e-12
    assert max(cov[k]["sum"] for k in ("collapsed", "random")) < 1e-12
    n1 = etf_checks.nc1_checks(ex, gen).values
    assert abs(n1["random"] - n1["formula"]) < 1e-10 and abs(n1["scaled"] - n1["random"]) < 1e-10
    assert n1["collapsed"] < 1e-12 and n1["orth"] < 1e-12 and n1["orth_sw"] > 0.1
    n2 = etf_checks.nc2_checks(ex, gen).values
    assert max(n2["etf"], n2["scaled_rotated"], n2["canonical"], n2["means_collapsed"]) < 1e-12
    assert n2["random"] > 0.1 and n2["means_random"] > 0.1
    n3 = etf_checks.nc3_checks(ex).values
    assert n3["own"] < 1e-12 and n3["canonical_nc2"] < 1e-12 and n3["canonical"] > 0.1
    n4 = etf_checks.nc4_checks(ex).values
    assert n4["collapsed"] == 0 and n4["random"] > 0.3
    eq = etf_checks.equinorm_checks(ex).values
    assert eq["collapsed"] < 1e-12 and abs(eq["stretched"] - eq["cv"]) < 1e-12
    m = etf_checks.margin_checks(ex, gen).values
    assert abs(m["collapsed"][0] - m["max"]) < 1e-12 and abs(m["collapsed"][1] - m["max"]) < 1e-12
    assert m["random_vs_etf"] <= m["max"] + 1e-12
    suite = etf_checks.metric_suite(ex).values
    assert suite["collapsed"]["nc1"] < 1e-12 and suite["collapsed"]["top1"] == 1.0


def test_the_live_ufm_helper_trains_and_snapshots(tmp_path):
    sizes = dict(num_classes=3, num_samples=15, feature_dim=6, epochs=4, eval_every=2)
    result, snaps, labels = etf_checks.train_ufm("implicit", sizes, seed=0, out=tmp_path, snapshot_steps=(0, 2))
    assert [s for s, _, _ in snaps] == [0, 2] and len(labels) == 15 and result["global_step"] == 4
    t = etf_checks.collapse_steps({"implicit": result}, {"train_nc1": 10.0}, 3)
    assert t.values["implicit"] == [2] and etf_checks.plane_steps(100) == [0, 2, 6, 20, 100]


# ---------------------------------------------------------------------------------- chapter 05
def test_the_polar_derivative_and_the_delta_zero_and_collapse_checks():
    from guiding_nc import nearest_etf, random_class_means

    H0 = random_class_means(6, 3, seed=0)
    P = nearest_etf(H0, None, 1e-3)
    H = random_class_means(6, 3, seed=1) * 0.2 + H0
    H = H / H.norm()
    v = gck.polar_derivative_checks(H, nearest_etf(H, P, 1e-3), P, 1e-3, seed=3).values
    assert max(v["polar_vs_nearest"], v["normal"], v["S_sym"], v["omega_skew"], v["sylvester"]) < 1e-10
    assert v["jvp_fd"] < 1e-6 and abs(v["adjoint"]) < 1e-9
    z = gck.delta_zero_checks(12, 5)
    assert z["zero_eigenvalues"] > 0 and all(z["errors"].values())
    c = gck.collapse_checks(12, 5, 1e-3)
    assert c["svd_finite"] < c["entries"] == c["closed_finite"] and c["closed_vs_fd"] < 1e-6
    assert all(abs(s - c["expected"]) < 1e-12 for s in c["singular_values"][:-1])


def test_the_memory_table_and_curves_read_the_benchmark():
    bench = project_root() / "data" / "bench" / "etf_cpu.json"
    t = gck.memory_table(bench)
    assert "dense KKT need, float64 (GiB)" in t and "(MiB" not in t
    curves, points = gck.memory_curves(bench, measured=[(256, 24, 10.0)])
    assert len(curves) == 2 and any(24 in cs for cs, _ in points.values())


# ---------------------------------------------------------------------------------- chapter 11
def test_the_cost_chapter_gives_memory_in_gib_and_says_which_precision():
    t = cost_tables.memory_scaling().replace(NBSP, " ")
    ufm200 = next(line for line in t.splitlines() if line.startswith("| UFM-200"))
    assert "| 33.7 | 67.4 |" in ufm200  # float32 and float64: one formula, two precisions
    rows = json.loads((results_dir("cost") / "cost.json").read_text())["rows"]
    bench = json.loads((project_root() / "data" / "bench" / "etf_cpu.json").read_text())
    text = cost_tables.reading(rows, bench)
    assert "GiB" in text and "MiB" not in text and " GB " not in text.replace("70.3 GB", "")
    assert "in float32, twice that in float64" in text
    assert "×" in cost_tables.step_ratios(rows)


# ---------------------------------------------------------------------------------- readings
def test_the_ablation_reading_quotes_the_committed_results():
    from guiding_nc.experiments.spec import load_experiment

    res = load_results(results_dir("ablations"))
    text = ablations.reading(res["summary"], ablations.method_of(load_experiment("ablations")))
    assert text.count("\n* **") == 4 and "δ = 10⁻⁵" in text and "–" not in text.split("δ.**")[1][:40]
    _, bound = ablations.loss_bound("ufm10")
    assert 0.03 < bound < 0.04


def test_the_forward_gradient_reading_computes_every_quoted_number():
    from guiding_nc.research.forward_gradients import experiment as fgx

    res, _ = fgx.load_results(project_root() / "data" / "results" / "forward_gradients")
    summary = fgx.training_summary(res["training"]["runs"])
    bench = json.loads((project_root() / "data" / "bench" / "forward_gradients_cpu.json").read_text())
    numbers = {**fgr.spectra_numbers(res), **fgr.quality_numbers(res), **fgr.training_numbers(res, summary),
               **fgr.bench_numbers(bench)}
    assert {"sp5_rank", "var_gain_lo", "mnist5k_ua_lo", "bp_peak"} <= set(numbers)
    t = fgr.comparison_table(res, summary, bench)
    assert t.count("\n|") == 13 and "**agrees**" in t
