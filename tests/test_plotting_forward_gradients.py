"""Tests for guiding_nc.companions.plotting.forward_gradients: every function returns a labelled Figure."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from guiding_nc.companions.plotting import forward_gradients as pf  # noqa: E402


def labelled(fig):
    assert isinstance(fig, Figure)
    for ax in fig.axes:
        assert ax.get_xlabel()
    assert any(ax.get_ylabel() for ax in fig.axes)
    plt.close(fig)


def quality_records():
    recs = []
    for w in (8, 16):
        for m, ks in (("activation", [None]), ("wt", [None]), ("upstream", [2, 4]), ("upstream_precond", [None])):
            for k in ks:
                for l in range(3):
                    recs.append({"width": w, "method": m, "k": k, "layer": l, "mean_cosine": 0.3,
                                 "exact_relative_bias": 0.1 if m in ("wt", "upstream") else 0.0,
                                 "relative_variance": 2.0 + w, "relative_mse": 3.0})
    return recs


def test_running_mean_and_structure_figures():
    labelled(pf.plot_running_mean_error({"activation": {"n": [1, 10, 100], "error": [3, 1, 0.3], "bias": 0.0},
                                         "wt": {"n": [1, 10, 100], "error": [3, 1, 0.8], "bias": 0.7}}))
    spectra = [{"dataset": "d", "stage": st, "layer": l, "shape": [4, 3], "singular_values": [2.0, 0.5, 0.0],
                "energy_rank": 1} for st in ("init", "trained") for l in range(2)]
    labelled(pf.plot_gradient_spectra(spectra, dataset="d"))
    energy = [{"dataset": "d", "stage": "init", "layer": l, "k": k, "k_used": k, "width": 8, "energy": k / 8 + 0.1,
               "random_energy": k / 8} for l in range(2) for k in (1, 2, 4)]
    labelled(pf.plot_subspace_energy(energy))
    with pytest.raises(ValueError, match="dataset"):
        pf.plot_gradient_spectra(spectra, dataset="other")


def test_quality_figures():
    labelled(pf.plot_quality_vs_width(quality_records()))
    labelled(pf.plot_quality_vs_k(quality_records(), width=16))
    with pytest.raises(ValueError, match="width=3"):
        pf.plot_quality_vs_k(quality_records(), width=3)


def test_training_and_benchmark_figures():
    runs, curves = [], {}
    for ds in ("a", "b"):
        for w in (8, 16):
            for m, k in (("backprop", None), ("upstream", 4)):
                lab = m if k is None else f"{m} (k={k})"
                for s in (0, 1):
                    runs.append({"dataset": ds, "width": w, "method": m, "k": k, "label": lab, "seed": s})
                    curves[f"{ds}/{w}/{lab}/{s}"] = {"step": [0, 5, 10], "test_accuracy": [0.1, 0.5 + s / 10, 0.7]}
    labelled(pf.plot_training_curves(curves, runs, width=16))
    summary = [{"dataset": ds, "width": w, "label": lab, "method": lab.split(" ")[0], "acc_mean": 0.6,
                "acc_min": 0.5, "acc_max": 0.7} for ds in ("a", "b") for w in (8, 16) for lab in ("backprop", "wt")]
    labelled(pf.plot_width_scaling(summary))
    bench = [{"batch_size": bs, "width": w, "method": m, "label": m, "ms": 1.0 + w, "peak_bytes": 2 ** 20 * w,
              "saved_for_backward_bytes": 1000} for bs in (4, 8) for w in (8, 16) for m in ("backprop", "wt")]
    bench.append({"batch_size": 4, "width": 16, "method": "upstream", "label": "upstream (k=16)", "ms": None,
                  "peak_bytes": None})
    labelled(pf.plot_benchmark(bench))
    for fn in (pf.plot_benchmark, pf.plot_width_scaling):
        with pytest.raises(ValueError, match="empty"):
            fn([])
    with pytest.raises(ValueError, match="width 32"):
        pf.plot_training_curves(curves, runs, width=32)
