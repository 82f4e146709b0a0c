"""Figures of the reduction-mapping chapter (guiding_nc.companions.plotting.curvature)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from guiding_nc.companions.plotting import curvature as pc  # noqa: E402

METHODS = ("free", "fixed", "implicit", "affine")


def _rows():
    rows = []
    for m_i, m in enumerate(METHODS):
        for seed in (0, 1):
            for step in (0, 10, 20):
                lam = 1.0 / (1 + step) / (1 + m_i)
                rows.append({"config": "cfg", "num_classes": 3, "n_per_class": 2, "dim": 4, "measure": "exact",
                             "method": m, "seed": seed, "step": step, "lambda_max": lam, "lambda_min": -lam / 10,
                             "pl": lam / 5, "kappa": 5.0, "lr": 1 / lam, "base_lambda_max": 2.0,
                             "pb_lambda_max": lam, "correction_norm": 0.0 if m != "implicit" else lam / 3,
                             "gap": 10.0 ** (-step / 5)})
    return rows


def _conv():
    return {f"cfg/{m}/{s}": {"gap": [10.0 ** (-t / 10) for t in range(21)], "lr": [1.0] * 20}
            for m in METHODS for s in (0, 1)}


def _labelled(fig):
    assert isinstance(fig, Figure)
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
    plt.close(fig)


def test_trajectory_panels():
    fig = pc.plot_trajectory_panels(_rows(), _conv(), "cfg")
    assert len(fig.axes) == 6
    _labelled(fig)
    with pytest.raises(ValueError, match="no rows"):
        pc.plot_trajectory_panels(_rows(), _conv(), "other")
    with pytest.raises(ValueError, match="non-empty"):
        pc.plot_trajectory_panels([], _conv(), "cfg")


def test_reduction_vs_full():
    _labelled(pc.plot_reduction_vs_full(_rows()))
    with pytest.raises(ValueError, match="exact"):
        pc.plot_reduction_vs_full([{"config": "c", "pb_lambda_max": float("nan")}])


def test_collapse_spectra():
    spectra = {"free": {"euclidean": [0.0, 1e-18, 0.1, 1.0], "pullback": None},
               "implicit": {"euclidean": [0.0, 0.1, 0.5], "pullback": [0.0, 0.1, 0.4]}}
    _labelled(pc.plot_collapse_spectra(spectra))
    # Every parametrisation at a realistic size: the legend's long entries stay within the figure
    # (the legibility check of conftest measures the rendered width).
    full = {m: {"euclidean": [0.0] * 117 + [10.0 ** (-k / 100) for k in range(531)],
                "pullback": [0.0] * 116 + [10.0 ** (-k / 90) for k in range(396)]} for m in pc.METHOD_STYLE}
    _labelled(pc.plot_collapse_spectra(full, title="C8_d16: Hessian spectra at neural collapse"))
    with pytest.raises(ValueError, match="non-empty"):
        pc.plot_collapse_spectra({})
    with pytest.raises(ValueError, match="unknown method"):
        pc.plot_collapse_spectra({"learned": {"euclidean": [1.0]}})


def test_kappa_vs_steps():
    runs = [{"config": "cfg", "method": m, "late_kappa": 3.0 + i, "steps_to_tol": None if m == "free" else 50 + i,
             "steps_budget": 100} for i, m in enumerate(METHODS)]
    runs.append({"config": "cfg", "method": "free", "late_kappa": float("nan"), "steps_to_tol": None})
    _labelled(pc.plot_kappa_vs_steps(runs))
    with pytest.raises(ValueError, match="non-empty"):
        pc.plot_kappa_vs_steps([])
