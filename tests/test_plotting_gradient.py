"""Figures of chapter 5 (guiding_nc.companions.plotting.gradient): a Figure with labelled axes and a legend."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from guiding_nc.companions.plotting.gradient import (  # noqa: E402
    plot_collapse_gradient_error,
    plot_delta_conditioning,
    plot_memory_vs_classes,
)


def _labelled(fig):
    assert isinstance(fig, Figure)
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
        assert ax.get_legend() is not None
    plt.close(fig)


def test_collapse_figure_handles_nan_gradients():
    sweep = {
        "distance": [1e-12, 1e-6, 1.0],
        "svd_float64": [1e-1, 1e-6, 1e-9],
        "svd_float32": [math.inf, math.inf, 1e-5],
        "closed_float64": [1e-9, 1e-9, 1e-9],
        "closed_float32": [1e-5, 1e-5, 1e-5],
    }
    fig = plot_collapse_gradient_error(sweep)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "autograd through SVD, float32" in labels and len(labels) == 4
    _labelled(fig)
    # A series that is non-finite everywhere still gets a legend entry.
    fig = plot_collapse_gradient_error({"distance": [1e-3, 1.0], "svd_float32": [math.inf, math.inf]})
    assert fig.axes[0].get_legend_handles_labels()[1] == ["autograd through SVD, float32"]
    _labelled(fig)


def test_delta_figure():
    sweep = {"delta": [1e-6, 1e-3, 1.0], "g_min": [1e-6, 1e-3, 1.0], "grad_H_norm": [10, 10, 4],
             "grad_P_norm": [3, 3, 5], "kkt_vs_closed": [1e-9, 1e-13, 1e-15]}
    fig = plot_delta_conditioning(sweep)
    assert len(fig.axes) == 2
    _labelled(fig)


def test_memory_figure_skips_missing_points():
    fig = plot_memory_vs_classes(
        {"dense": ([10, 100, 1000], [1e7, 1e10, 1e13])},
        {"paper": ([10, 100, 1000], [1e8, 9e9, None]), "empty": ([10], [None])},
        budget_gb=80,
    )
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["dense", "paper"]
    assert fig.axes[0].get_yscale() == "log" and fig.axes[0].get_xscale() == "log"
    _labelled(fig)
