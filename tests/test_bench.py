"""The benchmark script runs end to end on tiny sizes (its numbers are not asserted: timings are noisy)."""
import json

from guiding_nc.experiments import bench, bench_paired
def test_bench_etf_tiny(tmp_path):
    out = tmp_path / "etf.json"
    assert bench.main(["etf", "--sizes", "16x4", "--repeats", "1", "--kkt-cap-gb", "0.01", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["d"], r["C"]) for r in rows] == [(16, 4)]
    for r in rows:
        assert abs(r["objective_gap"]) < 1e-9  # trust-region and closed form reach the same optimum
        assert r["kkt_vs_cf_rel_err"] < 1e-8  # the two gradients agree
        assert r["cf_peak_mb_float32"] >= 0 and r["kkt_peak_mb_float64"] >= 0
        assert r["cf_forward_ms"] > 0 and r["tr_forward_ms"] > 0
    prov = result["provenance"]
    for key in ("command", "date", "git", "device", "device_name", "torch", "python", "wall_time_s"):
        assert key in prov
    table = bench.format_table(result)
    assert "closed form" in table and "16" in table


def test_bench_skips_kkt_above_the_memory_cap():
    result = bench.bench_etf([(40, 20)], repeats=1, kkt_cap_gb=1e-6, memory=False, progress=lambda s: None)
    row = result["rows"][0]
    assert row["kkt_fwd_bwd_ms_float64"] is None and row["kkt_need_gb"] > 1e-6
    assert "need" in bench.format_table(result)


def test_bench_rejects_bad_sizes(capsys):
    import pytest

    with pytest.raises(SystemExit):
        bench.main(["etf", "--sizes", "4x10"])
    assert "d >= C" in capsys.readouterr().err


def test_bench_overhead_tiny(tmp_path):
    out = tmp_path / "overhead.json"
    assert bench.main(["overhead", "--cases", "small_cnn", "--steps", "1", "--rounds", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["standard", "implicit, DDN off", "implicit, DDN on"]
    assert rows[0]["ratio_to_standard"] == 1.0 and all(r["step_ms"] > 0 for r in rows)


def test_bench_rejects_zero_repeats(capsys):
    import pytest

    with pytest.raises(SystemExit):
        bench.main(["etf", "--sizes", "8x4", "--tr-repeats", "0"])
    assert "--tr-repeats must be >= 1" in capsys.readouterr().err


def test_bench_records_the_polar_route_and_every_trust_region_run():
    result = bench.bench_etf([(80, 40), (20, 5)], repeats=1, tr_repeats=2, memory=False, progress=lambda s: None)
    big, small = result["rows"]
    assert big["cf_polar_route"] == "gram" and small["cf_polar_route"] == "svd"
    for row in (big, small):
        assert len(row["tr_runs_ms"]) == 2 and row["cf_svd_forward_ms"] > 0 and row["checks_ms"] > 0
        assert abs(row["objective_gap"]) < 1e-9
    assert result["provenance"]["tr_repeats"] == 2


def test_bench_without_the_trust_region_reports_float32_accuracy(tmp_path):
    out = tmp_path / "etf.json"
    assert bench.main(["etf", "--sizes", "40x8", "--repeats", "1", "--no-trust-region", "--no-memory",
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["tr_forward_ms"] is None and row["objective_gap"] is None and result["provenance"]["pymanopt"] is None
    assert row["f32_route"] == "svd" and row["f32_orth_err"] < 1e-5 and row["f32_grad_rel_err"] < 1e-4
    assert "f32 orth" in bench.format_table(result)


def test_bench_paired_against_a_second_copy_of_itself(capsys):
    from pathlib import Path

    import pytest

    src = Path(bench.__file__).resolve().parents[2]
    other = bench_paired.load_package_from(str(src), "guiding_nc_second_copy")
    assert other.nearest_etf is not bench_paired.nearest_etf  # really a second import
    cases = ((16, 4, "float64", True), (12, 3, "float32", False))
    result = bench_paired.bench_paired(other, cases=cases, calls=4, progress=lambda s: None)
    assert [(r["d"], r["C"], r["dtype"]) for r in result["rows"]] == [(16, 4, "float64"), (12, 3, "float32")]
    for r in result["rows"]:
        assert r["identical_output"] and r["calls"] == 4
        assert r["ratio_q1"] <= r["ratio_median"] <= r["ratio_q3"] and r["old_ms"] > 0 and r["new_ms"] > 0
    assert "same output" in bench_paired.format_paired(result)
    with pytest.raises(SystemExit):
        bench.main(["paired", "--other-src", str(src / "no_such_dir")])
    assert "no guiding_nc package there" in capsys.readouterr().err
