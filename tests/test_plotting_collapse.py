"""Chapter 2 (simplex ETFs and the NC metrics): the identities the page states, and its figures.

Identities already covered by tests/test_etf.py and tests/test_metrics.py (unit Frobenius norm,
M^2 = M/sqrt(C-1), pairwise cosines, perfect-collapse values, NC1 ~ spread^2, ...) are not
repeated here.
"""
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import guiding_nc as gnc
from guiding_nc.core.class_statistics import ClassStatistics
from guiding_nc.core.metric_formulas import nc1, nc2, nc3
from guiding_nc.companions.plotting import collapse as plots

F64 = torch.float64


def _centring(C):
    return torch.eye(C, dtype=F64) - torch.ones(C, C, dtype=F64) / C


# ------------------------------------------------------------------------------ identities
@pytest.mark.parametrize("C,d", [(2, 2), (3, 7), (10, 16), (50, 64)])
@pytest.mark.parametrize("rotation", ["canonical", "random"])
def test_etf_gram_matrix_eq1_and_rank(C, d, rotation):
    g = torch.Generator().manual_seed(C * d)
    U = gnc.canonical_point(d, C, dtype=F64) if rotation == "canonical" else gnc.random_point(d, C, generator=g, dtype=F64)
    E = gnc.simplex_etf(C, d, U)
    # Eq. 1 with alpha = 1 is sqrt(C) times the unit-Frobenius ETF
    torch.testing.assert_close(math.sqrt(C) * E, math.sqrt(C / (C - 1)) * U @ _centring(C), atol=1e-12, rtol=0)
    # Gram matrix (I - 11^T/C)/(C-1) whatever U: the ETF is rank C-1 and its columns sum to zero
    torch.testing.assert_close(E.T @ E, _centring(C) / (C - 1), atol=1e-12, rtol=0)
    assert int(torch.linalg.matrix_rank(E)) == C - 1
    V = math.sqrt(C) * E
    assert float(V.sum(1).norm() ** 2) < 1e-24  # ||sum v_c||^2 = C + C(C-1)(-1/(C-1)) = 0


def test_reflection_along_ones_gives_the_same_etf():
    C, d = 6, 11
    U = gnc.random_point(d, C, generator=torch.Generator().manual_seed(0), dtype=F64)
    U2 = U @ (torch.eye(C, dtype=F64) - 2.0 * torch.ones(C, C, dtype=F64) / C)
    assert gnc.orthonormality_error(U2) < 1e-12
    assert float((U - U2).norm()) == pytest.approx(2.0, abs=1e-12)  # a different Stiefel point ...
    torch.testing.assert_close(gnc.simplex_etf(C, d, U2), gnc.simplex_etf(C, d, U), atol=1e-12, rtol=0)  # same ETF


@pytest.mark.parametrize("C", [2, 3, 4, 10, 25])
def test_common_cosine_bound_via_gram_spectrum(C):
    """(1-g) I + g 11^T is PSD iff -1/(C-1) <= g <= 1: equal cosines below -1/(C-1) are impossible."""
    bound = -1.0 / (C - 1)
    ones = torch.ones(C, C, dtype=F64)
    for g in np.linspace(-1.0, 1.0, 201):
        lam = torch.linalg.eigvalsh((1 - g) * torch.eye(C, dtype=F64) + g * ones)
        assert (float(lam.min()) >= -1e-12) == (g >= bound - 1e-12), g
        # the eigenvalues are 1 - g (C-1 times) and 1 + (C-1) g
        expected = sorted([1 - g] * (C - 1) + [1 + (C - 1) * g])
        np.testing.assert_allclose(lam.numpy(), expected, atol=1e-12)
    # at the bound the rank drops to C - 1
    assert int(torch.linalg.matrix_rank((1 - bound) * torch.eye(C, dtype=F64) + bound * ones)) == C - 1


@pytest.mark.parametrize("C", [2, 3, 5, 12])
def test_any_unit_vectors_have_a_pair_no_further_apart_than_the_etf(C):
    """||sum v||^2 >= 0 bounds the average, hence the largest, pairwise cosine by -1/(C-1)."""
    g = torch.Generator().manual_seed(C)
    bound = -1.0 / (C - 1)
    for d in (C - 1 if C > 2 else 1, C, C + 3):
        X = torch.nn.functional.normalize(torch.randn(500, d, C, generator=g, dtype=F64), dim=1)
        G = X.transpose(1, 2) @ X
        off = ~torch.eye(C, dtype=torch.bool)
        mean_cos = G[:, off].mean(1)
        max_cos = G[:, off].amax(1)
        # identity: ||sum v||^2 = C + C(C-1) * mean pairwise cosine
        torch.testing.assert_close(X.sum(2).norm(dim=1) ** 2, C + C * (C - 1) * mean_cos, atol=1e-10, rtol=0)
        assert bool((mean_cos >= bound - 1e-12).all())
        assert bool((max_cos >= bound - 1e-12).all())


def test_nc1_ignores_within_class_noise_orthogonal_to_the_means():
    C, d, per_class = 5, 12, 10
    g = torch.Generator().manual_seed(1)
    U = gnc.random_point(d, C, generator=g, dtype=F64)
    W = gnc.etf_classifier(U)
    labels = torch.arange(C).repeat_interleave(per_class)
    features = 2.0 * W[labels]
    noise = torch.randn(labels.numel(), d, generator=g, dtype=F64)
    noise = noise - noise @ U @ U.T
    noise = noise - ClassStatistics(C, d).update(noise, labels).class_means()[labels]
    stats = ClassStatistics(C, d).update(features + noise, labels)
    assert float(stats.within_class_covariance().norm()) > 0.5
    assert abs(float(nc1(stats))) < 1e-10
    # noise inside the span of the means is seen
    inside = (torch.randn(labels.numel(), d, generator=g, dtype=F64) @ U @ U.T) * 0.1
    assert float(nc1(ClassStatistics(C, d).update(features + inside, labels))) > 1e-4


def test_nc2_does_not_imply_nc3():
    """A perfect ETF classifier and perfect ETF means pointing elsewhere: NC2 = 0 on both, NC3 > 0."""
    C, d = 4, 10
    U = gnc.random_point(d, C, generator=torch.Generator().manual_seed(2), dtype=F64)
    means = 3.0 * gnc.simplex_etf(C, d, U)  # (d, C)
    W_canonical = gnc.etf_classifier(gnc.canonical_point(d, C, dtype=F64))
    assert float(nc2(W_canonical)) < 1e-12 and float(nc2(means.T)) < 1e-12
    assert float(nc3(W_canonical, means)) > 0.1
    assert float(nc3(gnc.etf_classifier(U), means)) < 1e-12


# ------------------------------------------------------------------------------ figures
def _check_axes(fig, n_min):
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) >= n_min
    for ax in axes:
        assert ax.get_title(), "every panel has a title"
        assert ax.get_xlabel() and ax.get_ylabel(), "every panel has labelled axes"
        if hasattr(ax, "get_zlabel"):
            assert ax.get_zlabel()
    return axes


def test_span_coordinates_preserve_lengths_and_angles():
    g = torch.Generator().manual_seed(3)
    for C in (3, 4, 7):
        E = gnc.simplex_etf(C, 9, "random", generator=g, dtype=F64)
        P = plots.span_coordinates(E)
        assert P.shape == (C - 1, C)
        np.testing.assert_allclose(P.T @ P, (E.T @ E).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="between 1 and"):
        plots.span_coordinates(E, 20)
    with pytest.raises(ValueError, match=r"\(d, C\)"):
        plots.span_coordinates(torch.zeros(3))


def test_plot_simplex_etfs():
    g = torch.Generator().manual_seed(0)
    fig = plots.plot_simplex_etfs(gnc.simplex_etf(3, 7, "random", generator=g), gnc.simplex_etf(4, 7, "random", generator=g))
    axes = _check_axes(fig, 2)
    assert all(ax.get_legend() is not None for ax in axes)
    assert any("-0.5000" in t.get_text() for t in axes[0].texts)  # C = 3: cosine -1/2
    with pytest.raises(ValueError, match="3-vertex and a 4-vertex"):
        plots.plot_simplex_etfs(gnc.simplex_etf(4, 7), gnc.simplex_etf(3, 7))


def test_plot_equiangular_gram_spectrum():
    gam = np.linspace(-1.0, 0.5, 31)
    eig = {C: np.minimum(1 - gam, 1 + (C - 1) * gam) for C in (2, 3, 5)}
    (ax,) = _check_axes(plots.plot_equiangular_gram_spectrum(gam, eig), 1)
    assert ax.get_legend() is not None
    assert len([ln for ln in ax.get_lines() if ln.get_label().startswith("$C")]) == 3


def _fake_history(method, n=6):
    rows = []
    for k in range(1, n + 1):
        row = {"epoch": k, "step": k, "method": method, "train_loss_running": 1.0 / k}
        if k % 2 == 0:  # only evaluated epochs carry metrics
            row.update(train_nc1=10.0 ** -k, train_nc2=0.0 if method != "standard" else 0.1 / k,
                       train_nc3=0.5 / k, train_equinorm=1e-3 / k, train_ncc_mismatch=0.0,
                       train_cosine_margin_mean=1.0 - 1.0 / k)
        rows.append(row)
    return rows


def test_plot_nc_metric_histories():
    fig = plots.plot_nc_metric_histories({m: _fake_history(m) for m in ("standard", "fixed", "implicit")}, 10)
    axes = _check_axes(fig, len(plots.METRIC_PANELS))
    for ax, (key, _, _, log) in zip(axes, plots.METRIC_PANELS):
        assert ax.get_legend() is not None
        assert ax.get_yscale() == ("log" if log else "linear")
        assert len([ln for ln in ax.get_lines() if ln.get_label() in ("standard", "fixed", "implicit")]) == 3
        if key == "train_nc2":  # exact zeros are drawn at the floor, and the title says so
            assert "drawn at" in ax.get_title()
            assert min(float(np.min(ln.get_ydata())) for ln in ax.get_lines()) == pytest.approx(1e-12)
        if key == "train_cosine_margin_mean":
            assert any(abs(float(ln.get_ydata()[0]) - 10 / 9) < 1e-12 for ln in ax.get_lines())
        for ln in ax.get_lines():  # only evaluated rows are plotted
            if ln.get_label() in ("standard", "fixed", "implicit"):
                assert list(ln.get_xdata()) == [2, 4, 6]


def test_plot_feature_collapse_with_trainer_snapshots(tmp_path):
    """The page's recipe: a Trainer callback snapshots the UFM features; the figure draws them."""
    from guiding_nc.training.config import load_config
    from guiding_nc.training.trainer import Trainer

    snaps = {}
    for method in ("fixed", "implicit"):
        cfg = load_config("ufm10", {"num_classes": 3, "num_samples": 12, "feature_dim": 4, "batch_size": 12,
                                    "epochs": 4, "eval_every": 4, "method": method, "seed": 0, "device": "cpu",
                                    "output_dir": str(tmp_path), "report_epochs": [], "checkpoint_every": 0,
                                    "timing": "off", "progress": False, "verbose": False})
        got = []

        def cb(event, tr, got=got):
            if event == "step_end" and tr.global_step in (0, 2, 4):
                got.append((tr.global_step, tr.head.transform(tr.network.backbone.features.detach()).clone(),
                            tr.head.weight.detach().clone()))

        tr = Trainer(cfg, callbacks=[cb])
        cb("step_end", tr)
        res = tr.fit()
        assert res["status"] == "completed"
        assert [s for s, _, _ in got] == [0, 2, 4]
        assert all(h.shape == (12, 4) and W.shape == (3, 4) for _, h, W in got)
        torch.testing.assert_close(got[-1][1].norm(dim=1), torch.ones(12), atol=1e-5, rtol=0)  # on the sphere
        snaps[method] = got
    fig = plots.plot_feature_collapse(snaps, tr.train_ds.targets)
    axes = _check_axes(fig, 6)
    assert fig.legends, "a figure legend names features, class means and classifier rows"
    assert [ax.get_title() for ax in axes[:3]] == ["fixed, step 0", "fixed, step 2", "fixed, step 4"]
