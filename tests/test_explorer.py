"""The interactive UFM explorer (book page 06): settings, runs, projections, figures, widget.

Everything runs on CPU without a kernel or a browser; the UFMs are tiny.
"""
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from guiding_nc.companions.explorer.projection import projection_basis, projection_frames
from guiding_nc.companions.explorer.runs import ExplorerResult, run_comparison, run_ufm, summary_markdown
from guiding_nc.companions.explorer.settings import (
    EARLY_STEPS,
    MAIN_METHODS,
    METRIC_KEYS,
    ExplorerSettings,
    ExplorerSettingsError,
)
from guiding_nc.companions.explorer.widget import Explorer, build_explorer
from guiding_nc.companions.plotting import explorer as px

TINY = dict(C=4, d=8, N=16, steps=12, gain=1.0)


@pytest.fixture(scope="module")
def runs():
    """standard / fixed / implicit on the same tiny UFM (computed once for the module)."""
    return run_comparison(ExplorerSettings(**TINY), MAIN_METHODS)


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(C=1), r"C \(number of classes\) must be at least 2"),
        (dict(C=4, d=3), r"d \(feature dimension\) must be at least C=4"),
        (dict(C=4, N=10), r"N \(number of samples\) must be a positive multiple of C=4"),
        (dict(C=4, N=0), r"positive multiple"),
        (dict(steps=0), r"steps must be > 0"),
        (dict(steps=2.5), r"steps must be an integer"),
        (dict(C=True), r"C must be an integer"),
        (dict(method="learned"), r"unknown method 'learned'; choose one of standard, .*implicit"),
        (dict(optimizer="rmsprop"), r"unknown optimizer 'rmsprop'; choose one of agd, sgd, adam"),
        (dict(tau=0.0), r"tau must be a finite number > 0"),
        (dict(delta=-1e-3), r"delta must be a finite number > 0"),
        (dict(gain=float("nan")), r"gain must be a finite number > 0"),
        (dict(optimizer="sgd", lr=-1.0), r"lr must be a finite number > 0"),
        (dict(seed=-1), r"seed must be >= 0"),
        (dict(snapshot_every=0), r"snapshot_every must be a positive integer"),
    ],
)
def test_settings_validation_errors(kwargs, match):
    with pytest.raises(ExplorerSettingsError, match=match):
        ExplorerSettings(**kwargs)


def test_settings_defaults_and_config():
    s = ExplorerSettings(optimizer="SGD")
    assert s.optimizer == "sgd" and s.effective_lr > 0
    assert ExplorerSettings().effective_lr is None  # AGD: its own step size
    assert issubclass(ExplorerSettingsError, ValueError)
    with pytest.raises(ExplorerSettingsError, match="must be at least C"):
        s.with_(d=2)
    cfg = ExplorerSettings(C=3, d=5, N=9, method="fixed", steps=7).to_config("/tmp/unused")
    assert (cfg.num_classes, cfg.feature_dim, cfg.num_samples, cfg.batch_size, cfg.epochs) == (3, 5, 9, 9, 7)
    assert cfg.method == "fixed" and cfg.methods is None and cfg.dataset == "ufm"
    big = ExplorerSettings(steps=5000)
    assert big.effective_snapshot_every * 200 >= 5000 and big.effective_eval_every >= 1


# ---------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("method", MAIN_METHODS)
def test_run_ufm_records_finite_metrics(runs, method):
    r = runs[method]
    steps = TINY["steps"]
    assert isinstance(r, ExplorerResult) and r.status == "completed" and r.steps_done == steps
    np.testing.assert_array_equal(r.eval_steps, np.arange(steps + 1))
    for key in METRIC_KEYS:
        assert r.metrics[key].shape == (steps + 1,)
        assert np.isfinite(r.metrics[key]).all(), key
    assert r.step_loss.shape == (steps,) and np.isfinite(r.step_loss).all()
    assert r.step_accuracy.shape == (steps,) and ((0 <= r.step_accuracy) & (r.step_accuracy <= 1)).all()
    np.testing.assert_array_equal(r.snapshot_steps, np.arange(steps + 1))
    S, d, C = steps + 1, TINY["d"], TINY["C"]
    assert r.means.shape == r.etf.shape == r.classifier.shape == (S, d, C)
    assert r.etf_distance.shape == (S,) and np.isfinite(r.etf_distance).all()
    # H~ has unit Frobenius norm; the nearest ETF has columns of norm 1/sqrt(C)
    np.testing.assert_allclose(np.linalg.norm(r.means, axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(r.etf, axis=1), 1 / math.sqrt(C), rtol=1e-5)
    assert r.metrics["loss"][-1] < r.metrics["loss"][0]


def test_implicit_improves_nc3_and_accuracy(runs):
    r = runs["implicit"]
    assert r.metrics["top1"][-1] == 1.0 > r.metrics["top1"][0]
    assert r.metrics["nc3"][-1] < 0.5 * r.metrics["nc3"][0]
    assert r.etf_distance[-1] < r.etf_distance[0]
    assert r.first_step("top1", 1.0) is not None
    # the ETF classifiers are exact ETFs (NC2 ~ 0 up to float32 rounding); the learned one is not at step 0
    assert r.metrics["nc2"].max() < 1e-5 and runs["fixed"].metrics["nc2"].max() < 1e-5
    assert runs["standard"].metrics["nc2"][0] > 1e-2


def test_same_seed_same_start_and_reproducible(runs):
    a, b = runs["standard"], runs["fixed"]
    np.testing.assert_allclose(a.means[0], b.means[0])  # same initial features for every method
    again = run_ufm(ExplorerSettings(**TINY, method="implicit"))
    np.testing.assert_allclose(again.metrics["loss"], runs["implicit"].metrics["loss"], rtol=1e-6, atol=1e-9)


def test_run_ufm_updates_variants_and_threads():
    seen = []
    before = torch.get_num_threads()
    r = run_ufm(dict(C=3, d=4, N=6, steps=6, method="fixed-random", optimizer="adam"),
                on_update=lambda res: seen.append((res.steps_done, res.status, len(res.snapshot_steps))),
                update_every=2)
    assert torch.get_num_threads() == before  # the thread setting is restored
    assert [s for s, _, _ in seen] == [2, 4, 6] and seen[-1][1] == "completed" and seen[0][1] == "running"
    assert [n for _, _, n in seen] == [3, 5, 7]
    assert np.isfinite(r.metrics["loss"]).all()
    r2 = run_ufm(ExplorerSettings(C=2, d=3, N=4, steps=33, method="standard-no-norm", optimizer="sgd",
                                  snapshot_every=10, eval_every=4))
    early = list(range(EARLY_STEPS + 1))  # every early step, then the schedule, then the last step
    np.testing.assert_array_equal(r2.snapshot_steps, early + [30, 33])
    np.testing.assert_array_equal(r2.eval_steps, early + [24, 28, 32, 33])
    for key in METRIC_KEYS:
        assert len(r2.metrics[key]) == len(r2.eval_steps)
    with pytest.raises(ExplorerSettingsError):
        run_ufm(dict(C=3, N=7))
    with pytest.raises(ValueError, match="update_every"):
        run_ufm(ExplorerSettings(**TINY), update_every=0)


def test_summary_markdown(runs):
    md = summary_markdown(runs)
    lines = md.splitlines()
    assert len(lines) == 2 + len(MAIN_METHODS) and "implicit ETF" in md and "NC3" in lines[0]
    row = runs["implicit"].summary()
    assert row["steps"] == TINY["steps"] and 0 <= row["etf_shift"] <= 2


# ---------------------------------------------------------------------------- projection
@pytest.mark.parametrize("dims", [2, 3])
def test_projection_frames_shapes_and_etf_norms(runs, dims):
    r = runs["implicit"]
    f = projection_frames(r, dims=dims)
    S, C = len(r.snapshot_steps), TINY["C"]
    assert f.means.shape == f.etf.shape == f.classifier.shape == (S, C, dims)
    assert f.reference.shape == (C, dims) and f.basis.shape == (TINY["d"], dims)
    np.testing.assert_allclose(f.basis.T @ f.basis, np.eye(dims), atol=1e-10)
    # ETF vertices have equal norms: 1/sqrt(C) in R^d at every frame ...
    np.testing.assert_allclose(f.etf_norms, 1 / math.sqrt(C), rtol=1e-5)
    # ... and the reference ETF is a regular polygon (2-D) / tetrahedron (3-D, C=4) in the basis
    ref_norms = np.linalg.norm(f.reference, axis=1)
    np.testing.assert_allclose(ref_norms, ref_norms[0], rtol=1e-6)
    np.testing.assert_allclose(f.etf[-1], f.reference, atol=1e-12)
    assert ((0 <= f.captured) & (f.captured <= 1 + 1e-9)).all()
    if dims == 3:  # C = 4: the 3-D basis spans the whole ETF
        np.testing.assert_allclose(ref_norms, 1 / math.sqrt(C), rtol=1e-5)
    else:
        d2 = np.linalg.norm(f.reference[:, None] - f.reference[None], axis=-1)
        sides = [d2[c, (c + 1) % C] for c in range(C)]
        np.testing.assert_allclose(sides, sides[0], rtol=1e-6)  # a regular C-gon


def test_projection_basis_is_fixed_across_frames(runs):
    r = runs["fixed"]
    f = projection_frames(r, dims=2)
    np.testing.assert_allclose(f.means[0], r.means[0].astype(np.float64).T @ f.basis, atol=1e-6)
    f0 = projection_frames(r, dims=2, reference=0)
    assert f0.reference_step == 0 and not np.allclose(f0.basis, f.basis)


def test_projection_errors_and_small_C():
    r2 = run_ufm(ExplorerSettings(C=2, d=3, N=4, steps=2))
    f = projection_frames(r2, dims=2)  # a 1-D ETF: second axis from the data
    assert f.means.shape == (3, 2, 2)
    np.testing.assert_allclose(f.basis.T @ f.basis, np.eye(2), atol=1e-10)
    with pytest.raises(ValueError, match="needs C >= 4"):
        projection_frames(r2, dims=3)
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        projection_frames(r2, dims=4)
    with pytest.raises(TypeError):
        projection_frames({"not": "a result"})
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        projection_basis(np.eye(4)[:, :3], dims=1)


# ------------------------------------------------------------------------------- figures
def _labelled(fig, every_axis=True):
    """Titles on every panel; axis labels on every panel (or, for grids that share them, on some)."""
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes
    assert all(ax.get_title() for ax in axes)
    check = all if every_axis else any
    assert check(ax.get_xlabel() for ax in axes) and check(ax.get_ylabel() for ax in axes)
    return axes


def test_figures(runs):
    results = list(runs.values())
    fig = px.plot_curves(results)
    assert isinstance(fig, Figure) and fig._suptitle is not None
    axes = _labelled(fig)
    assert len(axes) == 6 and all(ax.get_legend() is not None for ax in axes)
    assert len(axes[0].get_lines()) == 3
    frames = [projection_frames(r) for r in results]
    for f, every in ((px.plot_projection(frames[0], step=3), True), (px.plot_projection_panels(frames), True),
                     (px.plot_projection_grid(frames, [0, 5, TINY["steps"]]), False)):
        assert isinstance(f, Figure)
        _labelled(f, every)
        assert f.legends or any(ax.get_legend() for ax in f.axes)
    f3 = px.plot_projection_3d_panels([projection_frames(r, dims=3) for r in results])
    assert isinstance(f3, Figure) and len(f3.axes) == 3 and f3.legends
    with pytest.raises(ValueError, match="unknown panel"):
        px.plot_curves(results, panels=["accuracy"])
    import matplotlib.pyplot as plt

    plt.close("all")


# -------------------------------------------------------------------------------- widget
def test_build_explorer_and_run_handler():
    ex = build_explorer(ExplorerSettings(C=4, d=8, N=16, steps=10, gain=1.0), compare=True, dims3=True)
    assert isinstance(ex, Explorer)
    import ipywidgets as w

    assert isinstance(ex.ui, w.VBox) and isinstance(ex.run_button, w.Button)
    assert {"C", "d", "N", "method", "tau", "delta", "optimizer", "gain", "lr", "steps"} <= set(ex.controls)
    assert ex.controls["lr"].disabled and not ex.controls["gain"].disabled  # agd: gain only
    ex.run_button.click()  # the button's handler, invoked programmatically
    assert ex.error is None, ex.error
    assert set(ex.results) == set(MAIN_METHODS)
    assert {"curves", "projection", "projection_3d"} <= set(ex.figures)
    assert all(isinstance(f, Figure) for f in ex.figures.values())
    assert "done" in ex.status.value and not ex.frame_slider.disabled
    ex.frame_slider.value = 2  # replaying a snapshot redraws the projection
    assert "step 2" in ex.figures["projection"].axes[0].get_title()

    ex.set(compare=False, method="implicit", N=15)  # invalid: shown, not raised
    assert ex.run() == {} and "multiple of C=4" in ex.error and "Cannot run" in ex.status.value

    ex.set(C=3, N=15, optimizer="sgd", steps=10, dims3=False)
    assert not ex.controls["lr"].disabled and ex.controls["gain"].disabled
    out = ex.run()
    assert list(out) == ["implicit"] and ex.settings().optimizer == "sgd" and "projection_3d" not in ex.figures
    with pytest.raises(KeyError, match="no control"):
        ex.set(colour="red")
    # beyond MAX_3D_CLASSES classes the 3-D view is not drawn, and a note says why
    from guiding_nc.companions.explorer.settings import MAX_3D_CLASSES

    C = MAX_3D_CLASSES + 1
    ex.set(C=C, d=C + 1, N=C, optimizer="agd", steps=2, dims3=True)
    ex.run()
    assert "projection_3d" not in ex.figures and f"3-D is drawn up to C = {MAX_3D_CLASSES}" in ex.note
    import matplotlib.pyplot as plt

    plt.close("all")
