"""Tests for guiding_nc.core.class_statistics, .metric_formulas and .metrics (paper Appendix A, Eqs. 10-17)."""
from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guiding_nc.core.class_statistics import ClassStatistics
from guiding_nc.core.metric_formulas import (
    cosine_margin,
    equinorm,
    max_cosine_margin,
    nc1,
    nc2,
    nc3,
    ncc_mismatch,
    ncc_mismatch_count,
    topk_accuracy,
    topk_correct,
)
from guiding_nc.core.metrics import neural_collapse_metrics

F64 = torch.float64
HYP = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# fixtures / builders
# ---------------------------------------------------------------------------------------------


def etf_rows(C: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """(C, d) simplex ETF with unit-norm rows in a random C-dim subspace of R^d."""
    U, _ = torch.linalg.qr(torch.randn(d, C, generator=gen, dtype=F64))
    M = math.sqrt(C / (C - 1)) * (torch.eye(C, dtype=F64) - 1.0 / C)
    return (U @ M).T


def collapsed(C=6, d=11, per_class=4, scale=3.0, seed=0):
    """Features exactly at the (scaled, shifted) ETF vertices; classifier = the same ETF."""
    gen = torch.Generator().manual_seed(seed)
    W = etf_rows(C, d, gen)
    offset = torch.randn(d, generator=gen, dtype=F64)
    labels = torch.arange(C).repeat_interleave(per_class)
    labels = labels[torch.randperm(labels.numel(), generator=gen)]
    features = offset + scale * W[labels]
    b = -W @ offset  # so W h + b = scale * W w_c is maximal at c
    return features, labels, W, b


def random_data(N, C, d, seed=0, dtype=F64, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.arange(C), torch.randint(0, C, (N - C,), generator=gen)])
    labels = labels[torch.randperm(N, generator=gen)]
    centres = 2.0 * torch.randn(C, d, generator=gen, dtype=F64)
    features = offset + centres[labels] + torch.randn(N, d, generator=gen, dtype=F64)
    W = torch.randn(C, d, generator=gen, dtype=F64)
    b = torch.randn(C, generator=gen, dtype=F64)
    return features.to(dtype), labels, W.to(dtype), b.to(dtype)


def stats_of(features, labels, C):
    return ClassStatistics(C, features.shape[1]).update(features, labels)


def direct_covariances(features, labels, C):
    h = features.to(F64)
    N = h.shape[0]
    h_g = h.mean(0)
    means = torch.stack([h[labels == c].mean(0) for c in range(C)])
    sw = torch.zeros(h.shape[1], h.shape[1], dtype=F64)
    for c in range(C):
        x = h[labels == c] - means[c]
        sw += x.T @ x
    sb = sum(torch.outer(m - h_g, m - h_g) for m in means) / C
    return sw / N, sb, means, h_g


def splits(N, sizes):
    """Batch boundaries cycling through `sizes`."""
    bounds, i, k = [], 0, 0
    while i < N:
        j = min(N, i + sizes[k % len(sizes)])
        bounds.append((i, j))
        i, k = j, k + 1
    return bounds


# ---------------------------------------------------------------------------------------------
# perfect collapse
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("C,d", [(2, 3), (6, 11), (10, 16)])
def test_perfect_collapse_gives_ideal_values(C, d):
    features, labels, W, b = collapsed(C=C, d=d)
    stats = stats_of(features, labels, C)
    hbar = stats.centred_means()
    assert abs(float(nc1(stats))) < 1e-6
    assert float(nc2(W)) < 1e-6
    assert float(nc3(W, hbar)) < 1e-6
    assert float(equinorm(W, hbar)) < 1e-6
    assert float(ncc_mismatch(features, W, b, stats.class_means())) == 0.0
    assert float(topk_accuracy(features @ W.T + b, labels)) == 1.0
    cm = cosine_margin(features, labels, W, stats.global_mean())
    assert cm.shape == (features.shape[0],)
    torch.testing.assert_close(cm, torch.full_like(cm, C / (C - 1)), atol=1e-6, rtol=0)

    res = neural_collapse_metrics(lambda: [(features, labels)], W, b, num_classes=C)
    for key in ("nc1", "nc2", "nc3", "equinorm", "ncc_mismatch"):
        assert abs(res[key]) < 1e-6, key
    assert res["top1"] == 1.0
    assert ("top5" in res) == (C >= 5)
    if C >= 5:
        assert res["top5"] == 1.0
    assert abs(res["cosine_margin_mean"] - C / (C - 1)) < 1e-6
    assert abs(res["cosine_margin_min"] - C / (C - 1)) < 1e-6


def test_max_cosine_margin():
    assert max_cosine_margin(2) == 2.0
    assert max_cosine_margin(10) == pytest.approx(10 / 9)
    with pytest.raises(ValueError, match="num_classes"):
        max_cosine_margin(1)


def test_cosine_margin_never_exceeds_etf_value():
    features, labels, W, _ = random_data(200, 5, 8, seed=3)
    cm = cosine_margin(features, labels, W, features.mean(0))
    assert bool((cm <= max_cosine_margin(5) + 1e-12).all())
    assert bool((cm >= -2.0 - 1e-12).all())


# ---------------------------------------------------------------------------------------------
# ClassStatistics
# ---------------------------------------------------------------------------------------------


@HYP
@given(
    C=st.integers(2, 6),
    d=st.integers(1, 9),
    extra=st.integers(0, 30),
    seed=st.integers(0, 10_000),
)
def test_covariances_match_direct_definitions(C, d, extra, seed):
    features, labels, _, _ = random_data(C + extra, C, d, seed=seed, offset=5.0)
    stats = stats_of(features, labels, C)
    sw, sb, means, h_g = direct_covariances(features, labels, C)
    torch.testing.assert_close(stats.class_means(), means, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(stats.global_mean(), h_g, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(stats.within_class_covariance(), sw, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(stats.between_class_covariance(), sb, atol=1e-9, rtol=1e-9)
    assert stats.centred_means().shape == (d, C)
    torch.testing.assert_close(stats.centred_means(), (means - h_g).T, atol=1e-10, rtol=1e-10)
    assert stats.counts.tolist() == torch.bincount(labels, minlength=C).tolist()
    torch.testing.assert_close(stats.second_moment, features.T @ features)


def test_global_mean_is_sample_mean_not_mean_of_class_means():
    features = torch.tensor([[0.0], [0.0], [0.0], [4.0]], dtype=F64)
    labels = torch.tensor([0, 0, 0, 1])
    stats = stats_of(features, labels, 2)
    assert float(stats.global_mean()) == 1.0


@HYP
@given(C=st.integers(2, 5), d=st.integers(1, 6), n=st.integers(0, 40), cut=st.floats(0, 1), seed=st.integers(0, 999))
def test_merge_of_two_halves_equals_whole(C, d, n, cut, seed):
    features, labels, _, _ = random_data(C + n, C, d, seed=seed)
    k = int(cut * features.shape[0])
    whole = stats_of(features, labels, C)
    a = stats_of(features[:k], labels[:k], C)
    b = stats_of(features[k:], labels[k:], C)
    merged = a.merge(b)
    assert torch.equal(merged.counts, whole.counts)
    torch.testing.assert_close(merged.sums, whole.sums, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(merged.second_moment, whole.second_moment, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(nc1(merged), nc1(whole), atol=1e-9, rtol=1e-9)


def test_merge_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="cannot merge"):
        ClassStatistics(3, 4).merge(ClassStatistics(3, 5))
    with pytest.raises(TypeError):
        ClassStatistics(3, 4).merge("not stats")


def test_state_dict_round_trip():
    features, labels, _, _ = random_data(50, 4, 6, seed=1)
    stats = stats_of(features, labels, 4)
    buf = io.BytesIO()
    torch.save(stats.state_dict(), buf)
    buf.seek(0)
    restored = ClassStatistics(4, 6).load_state_dict(torch.load(buf))
    assert torch.equal(restored.counts, stats.counts)
    assert torch.equal(restored.sums, stats.sums)
    assert torch.equal(restored.second_moment, stats.second_moment)
    assert float(nc1(restored)) == float(nc1(stats))
    # The state dict holds copies: later updates do not leak into it.
    sd = stats.state_dict()
    stats.update(features, labels)
    assert torch.equal(sd["counts"], restored.counts)
    # Continuing accumulation from a checkpoint equals accumulating everything at once.
    restored.update(features, labels)
    torch.testing.assert_close(restored.sums, stats.sums)


def test_load_state_dict_rejects_wrong_shapes():
    sd = ClassStatistics(4, 6).state_dict()
    with pytest.raises(ValueError, match="sums"):
        ClassStatistics(4, 7).load_state_dict({**sd, "dim": 7, "second_moment": torch.zeros(7, 7)})
    with pytest.raises(ValueError, match="missing"):
        ClassStatistics(4, 6).load_state_dict({"counts": sd["counts"]})


def test_float32_input_is_accumulated_in_float64():
    features, labels, W, b = random_data(300, 5, 7, seed=2, dtype=torch.float32, offset=1e3)
    stats32 = stats_of(features, labels, 5)
    stats64 = stats_of(features.double(), labels, 5)
    for buf in (stats32.sums, stats32.second_moment):
        assert buf.dtype == F64
    torch.testing.assert_close(stats32.second_moment, stats64.second_moment, atol=0, rtol=1e-14)
    torch.testing.assert_close(stats32.within_class_covariance(), stats64.within_class_covariance())
    # With a large common offset float32 sums would lose the within-class spread; float64 keeps it.
    sw_direct, _, _, _ = direct_covariances(features, labels, 5)
    torch.testing.assert_close(stats32.within_class_covariance(), sw_direct, atol=1e-7, rtol=1e-7)
    res = neural_collapse_metrics([(features, labels)], W, b, num_classes=5)
    assert all(math.isfinite(v) for k, v in res.items() if k != "cosine_margins")
    assert res["cosine_margins"].dtype == F64
    assert float(nc2(W)) == pytest.approx(float(nc2(W.double())), rel=1e-6)


def test_empty_update_is_a_no_op():
    stats = ClassStatistics(3, 2)
    stats.update(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
    assert stats.num_samples == 0
    with pytest.raises(ValueError, match="no samples"):
        stats.global_mean()


def test_all_reduce_is_a_no_op_without_distributed():
    features, labels, _, _ = random_data(20, 3, 4)
    stats = stats_of(features, labels, 3)
    before = stats.state_dict()
    stats.all_reduce_()
    assert torch.equal(stats.sums, before["sums"])


def test_all_reduce_with_single_process_group(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already in use")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        features, labels, _, _ = random_data(20, 3, 4)
        stats = stats_of(features, labels, 3)
        before = stats.state_dict()
        stats.all_reduce_()
        assert torch.equal(stats.counts, before["counts"])
        torch.testing.assert_close(stats.second_moment, before["second_moment"])
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "features,labels,match",
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.int64), r"\(N, d\)"),
        (torch.zeros(4, 5), torch.zeros(4, dtype=torch.int64), "feature dimension 5"),
        (torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.int64), "1-D"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.int64), "5 entries but features have 4"),
        (torch.zeros(4, 3), torch.zeros(4), "integer dtype"),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), r"out of range.*label 3.*\[0, 3\)"),
        (torch.zeros(4, 3), torch.tensor([0, -1, 2, 1]), r"out of range.*label -1"),
        (torch.tensor([[0.0, float("nan"), 0.0]] * 4), torch.zeros(4, dtype=torch.int64), "non-finite"),
        (torch.tensor([[0.0, float("inf"), 0.0]] * 4), torch.zeros(4, dtype=torch.int64), "non-finite"),
        (torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), "floating point"),
    ],
)
def test_update_rejects_bad_input(features, labels, match):
    stats = ClassStatistics(3, 3)
    with pytest.raises(ValueError, match=match):
        stats.update(features, labels)
    assert stats.num_samples == 0  # nothing was half-applied


def test_empty_class_is_named():
    stats = ClassStatistics(5, 2).update(torch.randn(4, 2), torch.tensor([0, 1, 1, 3]))
    for method in (stats.class_means, stats.centred_means, stats.within_class_covariance,
                   stats.between_class_covariance, lambda: nc1(stats)):
        with pytest.raises(ValueError, match=r"empty class.*2, 4"):
            method()


def test_constructor_and_metric_argument_errors():
    with pytest.raises(ValueError, match="num_classes"):
        ClassStatistics(0, 3)
    with pytest.raises(ValueError, match="dtype"):
        ClassStatistics(2, 3, dtype=torch.float16)
    with pytest.raises(ValueError, match="at least 2 classes"):
        nc2(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"\(C, d\)"):
        nc2(torch.randn(3))
    with pytest.raises(ValueError, match=r"centred_means must be \(d, C\)"):
        nc3(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"centred_means must be \(d, C\)"):
        equinorm(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="bias"):
        ncc_mismatch(torch.randn(2, 4), torch.randn(3, 4), torch.randn(4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="top-5"):
        topk_accuracy(torch.randn(2, 3), torch.tensor([0, 1]), k=5)
    with pytest.raises(ValueError, match="out of range"):
        cosine_margin(torch.randn(2, 4), torch.tensor([0, 3]), torch.randn(3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="global_mean"):
        cosine_margin(torch.randn(2, 4), torch.tensor([0, 1]), torch.randn(3, 4), torch.zeros(3))


# ---------------------------------------------------------------------------------------------
# individual metrics against references
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "N,C,d,balanced",
    [(40, 4, 7, False), (40, 4, 7, True), (30, 6, 3, False), (25, 5, 12, True), (9, 3, 2, True)],
)
def test_nc1_matches_pinv_reference(N, C, d, balanced):
    features, labels, _, _ = random_data(N, C, d, seed=N + C + d)
    if balanced:  # equal counts: Hbar 1 = 0, so Sigma_B has rank <= C - 1 and the cutoff matters
        labels = torch.arange(N) % C
    sw, sb, _, _ = direct_covariances(features, labels, C)
    reference = torch.trace(sw @ torch.linalg.pinv(sb)) / C
    got = nc1(stats_of(features, labels, C))
    torch.testing.assert_close(got, reference, atol=1e-10, rtol=1e-8)


def test_nc1_is_zero_when_class_means_coincide():
    # Sigma_B = 0, whose pseudo-inverse is 0.
    features = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=F64)
    stats = stats_of(features, torch.tensor([0, 0, 1, 1]), 2)
    assert float(nc1(stats)) == 0.0
    assert float(torch.trace(stats.within_class_covariance() @ torch.linalg.pinv(stats.between_class_covariance()))) == 0.0


def test_nc1_decreases_as_features_collapse():
    features, labels, W, _ = collapsed(C=5, d=9, per_class=20)
    noise = torch.randn(features.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    values = [float(nc1(stats_of(features + s * noise, labels, 5))) for s in (1.0, 0.1, 0.01)]
    assert values[0] > values[1] > values[2] > 0
    assert values[1] / values[2] == pytest.approx(100, rel=0.05)  # NC1 is quadratic in the spread


def test_nc2_nc3_reference_and_invariances():
    gen = torch.Generator().manual_seed(4)
    W = torch.randn(5, 8, generator=gen, dtype=F64)
    hbar = torch.randn(8, 5, generator=gen, dtype=F64)
    target = (torch.eye(5, dtype=F64) - 0.2) / 2.0
    G = W @ W.T
    torch.testing.assert_close(nc2(W), torch.linalg.norm(G / torch.linalg.norm(G) - target))
    P = W @ hbar
    torch.testing.assert_close(nc3(W, hbar), torch.linalg.norm(P / torch.linalg.norm(P) - target))
    torch.testing.assert_close(nc2(7.0 * W), nc2(W))
    torch.testing.assert_close(nc3(3.0 * W, 0.5 * hbar), nc3(W, hbar))
    assert float(nc2(W)) > 0.1
    assert math.isnan(float(nc2(torch.zeros(3, 4))))


def test_equinorm_uses_population_std():
    W = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=F64))  # row norms 1, 2, 3
    hbar = torch.eye(3, dtype=F64) * 5.0  # equal column norms -> H_equinorm = 0
    expected = math.sqrt(2.0 / 3.0) / 2.0  # population std of (1, 2, 3) over its mean
    assert float(equinorm(W, hbar)) == pytest.approx(expected, rel=1e-12)
    assert float(equinorm(W, W.T)) == pytest.approx(0.0, abs=1e-15)


def test_cosine_margin_matches_loop():
    features, labels, W, _ = random_data(30, 4, 5, seed=7)
    h_g = features.mean(0)
    w_g = W.mean(0)
    got = cosine_margin(features, labels, W, h_g)
    for i in range(30):
        h = features[i] - h_g
        cos = [float(torch.dot(W[j] - w_g, h) / ((W[j] - w_g).norm() * h.norm())) for j in range(4)]
        c = int(labels[i])
        assert float(got[i]) == pytest.approx(cos[c] - max(cos[j] for j in range(4) if j != c), abs=1e-12)


def test_ncc_mismatch_hand_case():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=F64)
    features = torch.tensor([[1.0, 0.0], [9.0, 0.0], [4.0, 0.0], [6.0, 1.0]], dtype=F64)
    W = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=F64)  # decides by the sign of x - 3
    b = torch.tensor([3.0, -3.0], dtype=F64)
    # Nearest means: 0, 1, 0, 1; classifier: 0, 1, 1, 1.
    assert float(ncc_mismatch(features, W, b, means)) == pytest.approx(0.25)
    mism, total = ncc_mismatch_count(features, means, torch.tensor([0, 1, 1, 1]))
    assert (int(mism), total) == (1, 4)
    # Without the bias the classifier decides by the sign of x: predictions 1, 1, 1, 1.
    assert float(ncc_mismatch(features, W, None, means)) == pytest.approx(0.5)


def test_topk_accuracy_hand_case():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2, 0, 1])
    assert float(topk_accuracy(logits, labels)) == 0.25
    assert float(topk_accuracy(logits, labels, k=2)) == 0.5
    assert float(topk_accuracy(logits, labels, k=3)) == 1.0
    assert int(topk_correct(logits, labels, 2)) == 2


# ---------------------------------------------------------------------------------------------
# streaming suite == one-shot
# ---------------------------------------------------------------------------------------------


def one_shot(features, labels, W, b, C):
    stats = stats_of(features, labels, C)
    hbar = stats.centred_means()
    logits = features @ W.T + b
    out = {
        "nc1": float(nc1(stats)),
        "nc2": float(nc2(W)),
        "nc3": float(nc3(W, hbar)),
        "equinorm": float(equinorm(W, hbar)),
        "ncc_mismatch": float(ncc_mismatch(features, W, b, stats.class_means())),
        "top1": float(topk_accuracy(logits, labels, 1)),
    }
    if C >= 5:
        out["top5"] = float(topk_accuracy(logits, labels, 5))
    cm = cosine_margin(features, labels, W, stats.global_mean())
    out["cosine_margin_mean"] = float(cm.mean())
    out["cosine_margin_min"] = float(cm.min())
    out["cosine_margin_median"] = float(cm.median()) if cm.numel() % 2 else float(cm.sort().values[
        cm.numel() // 2 - 1: cm.numel() // 2 + 1].mean())
    out["loss"] = float(torch.nn.functional.cross_entropy(logits, labels))
    out["n"] = int(labels.numel())
    return out, cm


@HYP
@given(
    C=st.integers(2, 7),
    d=st.integers(2, 10),
    extra=st.integers(0, 60),
    sizes=st.lists(st.integers(1, 25), min_size=1, max_size=4),
    seed=st.integers(0, 10_000),
)
def test_streaming_equals_one_shot(C, d, extra, sizes, seed):
    features, labels, W, b = random_data(C + extra, C, d, seed=seed)
    expected, cm = one_shot(features, labels, W, b, C)
    batches = [(features[i:j], labels[i:j]) for i, j in splits(features.shape[0], sizes)]
    res = neural_collapse_metrics(lambda: iter(batches), W, b, num_classes=C)
    assert set(res) == set(expected) | {"cosine_margins"}
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert res["cosine_margins"].device.type == "cpu"
    torch.testing.assert_close(res["cosine_margins"], cm, atol=1e-12, rtol=1e-12)


def test_streaming_with_fixed_splits_and_logits_fn():
    C, d = 6, 8
    features, labels, W, b = random_data(97, C, d, seed=11)
    expected, _ = one_shot(features, labels, W, b, C)
    for sizes in ([97], [1], [10], [32, 7, 50]):
        batches = [(features[i:j], labels[i:j]) for i, j in splits(97, sizes)]
        res = neural_collapse_metrics(batches, W, b, num_classes=C)  # a list is re-iterable
        for key, value in expected.items():
            assert res[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (sizes, key)
    # A custom head decides the predictions (accuracy, NC4) but not the geometry.
    res = neural_collapse_metrics([(features, labels)], W, b, num_classes=C, logits_fn=lambda h: -(h @ W.T + b))
    assert res["nc2"] == pytest.approx(expected["nc2"])
    assert res["top1"] != pytest.approx(expected["top1"])


def test_suite_input_errors():
    features, labels, W, b = random_data(20, 3, 4)
    with pytest.raises(TypeError, match="one-shot iterator"):
        neural_collapse_metrics(iter([(features, labels)]), W, b, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        neural_collapse_metrics([(features, labels)], W, b, num_classes=4)
    with pytest.raises(ValueError, match="no samples"):
        neural_collapse_metrics([], W, b, num_classes=3)
    calls = []

    def shrinking():
        calls.append(1)
        return [(features, labels)] if len(calls) == 1 else [(features[:5], labels[:5])]

    with pytest.raises(ValueError, match="second"):
        neural_collapse_metrics(shrinking, W, b, num_classes=3)
    with pytest.raises(ValueError, match=r"logits_fn returned shape"):
        neural_collapse_metrics([(features, labels)], W, b, num_classes=3, logits_fn=lambda h: h)


def test_cross_entropy_lower_bound_is_attained_at_collapse_and_never_beaten():
    import torch.nn.functional as F

    from guiding_nc.core.etf import etf_classifier, random_point
    from guiding_nc.core.metric_formulas import cross_entropy_lower_bound

    g = torch.Generator().manual_seed(0)
    for C, d, tau in [(2, 4, 1.0), (10, 32, 5.0), (50, 64, 3.0)]:
        W = etf_classifier(random_point(d, C, generator=g, dtype=torch.float64))
        y = torch.arange(C).repeat(3)
        bound = cross_entropy_lower_bound(C, tau)
        assert F.cross_entropy(tau * W[y] @ W.T, y).item() == pytest.approx(bound, rel=1e-12, abs=1e-15)
        for _ in range(5):
            H = F.normalize(torch.randn(len(y), d, generator=g, dtype=torch.float64), dim=1)
            Wr = F.normalize(torch.randn(C, d, generator=g, dtype=torch.float64), dim=1)
            assert F.cross_entropy(tau * H @ Wr.T, y).item() >= bound
    with pytest.raises(ValueError, match="num_classes"):
        cross_entropy_lower_bound(1, 5.0)
    with pytest.raises(ValueError, match="tau"):
        cross_entropy_lower_bound(10, -1.0)
