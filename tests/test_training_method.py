"""The training method (book chapter "The training method"): the gradient from the loss to the
features by autograd, by its two-path formula and by finite differences, in float64; how much of
it passes through the classifier; one AGD step and the feature step of each method under each
depth rule; the rule for classes missing from a batch.  The chapter shows the same checks, made
by the same functions of :mod:`guiding_nc.companions.training_method`."""
import pytest
import torch

from guiding_nc.companions import training_method as tm
from guiding_nc.core.running_means import ClassMeanEMA

F64 = torch.float64


def test_the_moving_average_weighs_batch_s_by_s():
    ema, hats = ClassMeanEMA(6, 3, dtype=F64), []
    for t in range(1, 7):
        h, y = torch.randn(9, 6, dtype=F64, generator=torch.Generator().manual_seed(t)), torch.arange(9) % 3
        H, _ = ema.update(h, y)
        hats.append(ema.batch_matrix(*ema.batch_statistics(h, y))[0])
        assert torch.allclose(H, 2 / (t * (t + 1)) * sum((s + 1) * hats[s] for s in range(t)), atol=1e-14)


@pytest.mark.parametrize("t", [1, 10])
@pytest.mark.parametrize("structured", [True, False])
def test_the_gradient_to_the_features_three_ways(t, structured):
    r = tm.gradient_three_ways(t, structured=structured, d=7, C=3, B=9)
    assert r["formula"] < 1e-10
    # At t = 1 the method differentiates at the proximal point it computes, held fixed.
    assert r.get("fd_fixed", r["fd"]) < 1e-7


def test_the_path_through_the_classifier_fades_as_alpha_t_with_class_structure():
    share = {t: tm.two_path_gradient(*_head_at(t))[1] for t in (1, 10, 100)}
    assert share[1] > share[10] > share[100]
    # in proportion to alpha_t (1, 0.18, 0.02): share / alpha_t stays within a factor 2
    ratios = [share[t] / (2 / (t + 1)) for t in (1, 10, 100)]
    assert max(ratios) / min(ratios) < 2.0


def _head_at(t, d=9, C=3, B=12):
    data = tm.batches(d, C, B, t, structured=True)
    h, y = data[-1]
    return tm.warm_head(d, C, data[:-1]), h, y


def test_one_agd_step_moves_each_matrix_by_gain_eta_s_over_L():
    step = tm.agd_step_check(gain=10.0)
    assert step["error"] < 1e-12
    # measured from copies taken before and after the optimiser's step
    assert step["moved"] == pytest.approx(step["expected"], rel=1e-12)


def test_agd_depth_counts_a_learned_classifier_unless_layers_is_set():
    t = tm.agd_feature_steps(num_samples=30, feature_dim=16, num_classes=3)
    rows = [[c.strip("` ") for c in line.split("|")[1:-1]] for line in t.splitlines()[2:]]
    by = {(r[0], r[1]): (int(r[2]), float(r[3])) for r in rows}
    assert {m: by["trainable", m][0] for m in ("standard", "fixed ETF", "implicit ETF")} == \
        {"standard": 2, "fixed ETF": 1, "implicit ETF": 1}
    assert {by["layers", m][0] for m in ("standard", "fixed ETF", "implicit ETF")} == {2}
    # with L = 2 the standard method's features move about half as far as the fixed ETF's
    assert by["trainable", "standard"][1] < 0.65 * by["trainable", "fixed ETF"][1]
    assert by["layers", "fixed ETF"][1] < 0.65 * by["trainable", "fixed ETF"][1]


def test_the_fill_rule_comparison_isolates_the_rule():
    t = tm.fill_rule_comparison(C=40, d=128, b=24, offsets=(0.0, 3.0))
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in t.split("\n\n")[0].splitlines()[2:]]
    assert len(rows) == 4
    for ours, public in (rows[0:2], rows[2:4]):
        # the smallest singular value is at most delta under both rules (A 1 = delta P 1), and
        # about the same: the rule does not set it
        assert 0.5e-3 < float(ours[2]) <= 1e-3 * (1 + 1e-6)
        assert 0.5e-3 < float(public[2]) <= 1e-3 * (1 + 1e-6)
        assert float(public[2]) == pytest.approx(float(ours[2]), rel=0.05)
        # the public rule moves the absent classes' rows further, towards h_G
        assert float(public[5]) > float(ours[5])
        assert float(public[6]) > float(ours[6])
    # with a common offset (large ||h_G||) the public rule's condition number grows
    assert float(rows[3][4]) > 2 * float(rows[2][4])
