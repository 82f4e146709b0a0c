"""Every figure function of guiding_nc.companions.plotting.nearest returns a labelled Figure (fast, synthetic data)."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from guiding_nc.companions.plotting import nearest as plots  # noqa: E402

BENCH = {
    "rows": [
        {"d": 512, "C": 10, "cf_forward_ms": 1.0, "tr_forward_ms": 100.0, "tr_iterations": 4, "tr_stopped_by_time": False,
         "speedup": 100.0, "objective_gap": 1e-17},
        {"d": 1024, "C": 100, "cf_forward_ms": 5.0, "tr_forward_ms": 900.0, "tr_iterations": 3, "tr_stopped_by_time": False,
         "speedup": 180.0, "objective_gap": -1e-17},
        {"d": 2048, "C": 1000, "cf_forward_ms": 500.0, "tr_forward_ms": 30000.0, "tr_iterations": 2, "tr_stopped_by_time": True,
         "speedup": 60.0, "objective_gap": 1e-9},
    ],
    "provenance": {"command": "python -m guiding_nc.bench etf", "git_commit": "abc", "date": "2026-01-01", "device": "CPU",
                   "torch": "2.x", "python": "3.11", "pymanopt": "2.2.1"},
}


def check(fig):
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert axes
    for ax in axes:
        if ax.get_xlabel() == "" and ax.get_ylabel() == "":  # a colour bar
            continue
        assert ax.get_xlabel() and ax.get_ylabel()
        assert ax.get_title() or ax.get_legend() is not None
    fig.canvas.draw()  # mathtext in labels must render
    matplotlib.pyplot.close(fig)


def test_null_space_family():
    th = np.linspace(-3, 3, 11)
    check(plots.plot_null_space_family(th, np.zeros(11), np.full(11, 1e-15), np.cos(th) + 2, 0.5))


def test_delta_path():
    dl = np.logspace(-8, 2, 11)
    check(plots.plot_delta_path(dl, dl, 1 / (1 + dl)))


def test_convergence():
    check(plots.plot_convergence({"a": [2.0, 1.0, 0.5, 0.5], "b": [2.0, 1.5, 1.0]}, 0.5))


def test_benchmark_plot_table_and_provenance():
    check(plots.plot_benchmark(BENCH))
    md = plots.benchmark_markdown(BENCH)
    assert md.count("\n") == 1 + len(BENCH["rows"]) and "time cap" in md
    prov = plots.provenance_lines(BENCH)
    for key in ("command", "git_commit", "date", "device", "torch", "pymanopt"):
        assert key in prov


def test_gram_matrix():
    G = np.diag([1, 1, 1, 2, 2, 2.0])
    check(plots.plot_gram_matrix(G, ["j_1", "j_2", "j_3", "j_1,2", "j_1,3", "j_2,3"]))


def test_taylor_remainders():
    t = np.logspace(-4, 0, 9)
    check(plots.plot_taylor_remainders(t, {"p1": {"r1": t**2, "r2": t**3}, "p2": {"r": t**2}}))


def test_real_benchmark_file_renders_if_present():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "bench" / "etf_cpu.json"
    if not path.exists():
        pytest.skip("benchmark not run yet")
    result = json.loads(path.read_text())
    check(plots.plot_benchmark(result))
    assert plots.benchmark_markdown(result).count("|") > 10
