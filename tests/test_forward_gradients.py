"""Tests for guiding_nc.research.forward_gradients (forward-mode gradient estimators)."""
import math

import pytest
import torch
from torch import nn

from guiding_nc.core.newton_schulz import newton_schulz_steps
from guiding_nc.research.forward_gradients import analysis, estimators, mlp, training, validation
DT = torch.float64
ACT = ("activation", "wt", "upstream", "upstream_ns", "upstream_precond")


def tiny(seed=0, dims=(5, 6, 6, 3), B=4, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    params = mlp.random_mlp(list(dims), generator=g, dtype=dtype)
    x = torch.randn(B, dims[0], generator=g, dtype=dtype)
    y = torch.randint(0, dims[-1], (B,), generator=g)
    return params, x, y


def flat(p):
    return torch.cat([t.reshape(-1) for W, b in p for t in (W, b) if t is not None])


def mc_samples(name, params, x, y, n, seed, **kw):
    """n single-guess estimates stacked as (n, P) (uses the module's own sampler)."""
    name, params, x, y, k = estimators.prepare(name, params, x, y, kw.pop("k", None), 10, 3)
    gen = torch.Generator().manual_seed(seed)
    chunks = [
        torch.cat([t.reshape(t.shape[0], -1) for W, b in c for t in (W, b) if t is not None], 1)
        for c in estimators.sample_chunks(name, params, x, y, n, k, gen, 10, 3, 2000)
    ]
    return torch.cat(chunks)


def z_scores(samples, target):
    n = samples.shape[0]
    mean, var = samples.mean(0), samples.var(0)
    keep = var > 1e-24  # coordinates that are identically zero (dead units) carry no information
    assert torch.allclose(mean[~keep], target[~keep], atol=1e-12)
    return ((mean - target)[keep] / (var[keep] / n).sqrt())


def assert_mean_matches(samples, target):
    """|mean - target| <= 5 sd per coordinate, and sum z^2 within a chi-square(p) band."""
    z = z_scores(samples, target)
    p = z.numel()
    assert z.abs().max() < 5.0, float(z.abs().max())
    assert (z * z).sum() < p + 6 * math.sqrt(2 * p), (float((z * z).sum()), p)


# ----------------------------------------------------------------------------- JVP vs FD
def fd_weights(params, x, y, v, h=1e-6):
    plus = [(W + h * vW, None if b is None else b + h * vb) for (W, b), (vW, vb) in zip(params, v)]
    minus = [(W - h * vW, None if b is None else b - h * vb) for (W, b), (vW, vb) in zip(params, v)]
    return (mlp.mlp_loss(plus, x, y) - mlp.mlp_loss(minus, x, y)) / (2 * h)


def fd_acts(params, x, y, layer, u, h=1e-6):
    import torch.nn.functional as F

    def losses(s):
        return F.cross_entropy(mlp.forward_record(params, x, {layer: s * u})[0], y, reduction="none")

    return (losses(h) - losses(-h)) / (2 * h)


@pytest.mark.parametrize("name", validation.ESTIMATORS)
def test_jvp_matches_finite_difference(name):
    params, x, y = tiny(1)
    k = 2 if name in ("upstream", "upstream_ns", "upstream_precond") else None
    for layer in range(len(params)):
        out = estimators.sample_guesses(name, params, x, y, layer, 3, k=k, generator=torch.Generator().manual_seed(2))
        for g in range(3):
            if name == "weight":
                v = [(W[g], None if b is None else b[g]) for W, b in out["tangent"]]
                fd = fd_weights(params, x, y, v)
            else:
                fd = fd_acts(params, x, y, layer, out["tangent"][g])
            torch.testing.assert_close(out["directional_derivative"][g], fd, rtol=1e-6, atol=1e-8)
        if name == "weight":
            break


def test_public_directional_derivatives():
    params, x, y = tiny(3)
    g = torch.Generator().manual_seed(0)
    v = [(torch.randn(W.shape, generator=g, dtype=DT), torch.randn(b.shape, generator=g, dtype=DT)) for W, b in params]
    torch.testing.assert_close(estimators.directional_derivative_weights(params, x, y, v), fd_weights(params, x, y, v))
    true = analysis.true_gradient(params, x, y)
    torch.testing.assert_close(estimators.directional_derivative_weights(params, x, y, v), flat(true) @ flat(v))
    u = torch.randn(x.shape[0], 6, generator=g, dtype=DT)
    torch.testing.assert_close(estimators.directional_derivative_activations(params, x, y, 1, u), fd_acts(params, x, y, 1, u))


# ----------------------------------------------------------------------------- unbiasedness
@pytest.mark.parametrize("name", validation.UNBIASED_ESTIMATORS)
def test_unbiased_estimators_mc_mean(name):
    params, x, y = tiny(4)
    s = mc_samples(name, params, x, y, 3000, seed=5)
    assert_mean_matches(s, flat(analysis.true_gradient(params, x, y)))


def test_bias_test_has_power():
    """The same criterion rejects the (biased) W^T guess: the test above is not vacuous."""
    params, x, y = tiny(4)
    s = mc_samples("wt", params, x, y, 3000, seed=5)
    z = z_scores(s, flat(analysis.true_gradient(params, x, y)))
    assert (z * z).sum() > z.numel() + 6 * math.sqrt(2 * z.numel())


# ----------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("name,k", [("wt", None), ("upstream", 2), ("upstream", None), ("upstream_ns", None),
                                    ("upstream_ns", 2), ("upstream_precond", 2), ("activation", None)])
def test_mc_mean_matches_closed_form(name, k):
    params, x, y = tiny(6)
    s = mc_samples(name, params, x, y, 3000, seed=7, k=k)
    assert_mean_matches(s, flat(analysis.expected_estimate(name, params, x, y, k=k)))


def test_closed_form_wt_is_BBt_g():
    """Independent check of E[(g.u)u] = M M^T g for u = M eps (W^T guess), built by hand."""
    params, x, y = tiny(8)
    zs = [torch.zeros(x.shape[0], W.shape[0], dtype=DT, requires_grad=True) for W, _ in params]
    import torch.nn.functional as F

    loss = F.cross_entropy(mlp.forward_record(params, x, dict(enumerate(zs)))[0], y, reduction="sum")
    gz = torch.autograd.grad(loss, zs)
    _, inputs, pre = mlp.forward_record(params, x)
    exp = analysis.expected_estimate("wt", params, x, y)
    for l in range(len(params) - 1):
        Wn = params[l + 1][0]
        G = torch.stack([torch.diag((pre[l][b] > 0).to(DT)) @ Wn.T @ Wn @ torch.diag((pre[l][b] > 0).to(DT)) @ gz[l][b]
                         for b in range(x.shape[0])])
        torch.testing.assert_close(exp[l][0], G.T @ inputs[l] / x.shape[0])
        torch.testing.assert_close(exp[l][1], G.mean(0))
    # upstream with full rank is a projection onto range(M) which contains g: unbiased
    torch.testing.assert_close(flat(analysis.expected_estimate("upstream", params, x, y)), flat(analysis.true_gradient(params, x, y)))


def test_upstream_topk_is_projection():
    params, x, y = tiny(9, dims=(5, 8, 7, 3))
    A, Ahat = estimators.guess_generators("upstream", params, x, 0, k=3)
    P = Ahat @ A.transpose(1, 2)
    torch.testing.assert_close(P @ P, P)  # idempotent
    torch.testing.assert_close(P, P.transpose(1, 2))
    M = estimators.upstream_matrix(params, x, 0)
    U, S, _ = torch.linalg.svd(M)
    torch.testing.assert_close(P, U[..., :3] @ U[..., :3].transpose(1, 2))


# ----------------------------------------------------------------------------- cosine
def test_guided_guesses_beat_weight_perturbation():
    g = torch.Generator().manual_seed(11)
    params = mlp.random_mlp([20, 64, 64, 10], generator=g, dtype=torch.float32)
    x = torch.randn(16, 20, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    cos = {}
    for name, k in [("weight", None), ("wt", None), ("upstream", 8), ("upstream_ns", 8)]:
        rec = analysis.bias_variance(name, params, x, y, 64, k=k, generator=torch.Generator().manual_seed(1), chunk_size=64)
        cos[name] = [r["mean_cosine"] for r in rec]
    for name in ("wt", "upstream", "upstream_ns"):
        for l in range(len(params)):
            assert cos[name][l] > cos["weight"][l] + 0.05, (name, l, cos)


# ----------------------------------------------------------------------------- Newton–Schulz
def test_newton_schulz_converges_to_polar_factor():
    g = torch.Generator().manual_seed(0)
    Q1, _ = torch.linalg.qr(torch.randn(12, 7, generator=g, dtype=DT))
    Q2, _ = torch.linalg.qr(torch.randn(7, 7, generator=g, dtype=DT))
    A = Q1 @ torch.diag(torch.linspace(1.0, 0.2, 7, dtype=DT)) @ Q2.T  # 12 x 7, cond 5
    U, _, Vh = torch.linalg.svd(A, full_matrices=False)
    polar = U @ Vh
    errs = [float((newton_schulz_steps(A, n) - polar).norm()) for n in (2, 5, 8, 10)]
    assert all(a > b for a, b in zip(errs, errs[1:]))  # monotone until machine precision
    assert float((newton_schulz_steps(A, 30) - polar).norm()) < 1e-12
    torch.testing.assert_close(newton_schulz_steps(A.T, 30), polar.T)  # wide input path
    # rank-deficient: converges to the pseudo-polar factor (zero singular values stay zero)
    P, _ = torch.linalg.qr(torch.randn(9, 3, generator=g, dtype=DT))
    R = Q1[:, :3] @ torch.diag(torch.tensor([1.0, 0.5, 0.3], dtype=DT)) @ P.T  # 12 x 9, rank 3
    torch.testing.assert_close(newton_schulz_steps(R, 30), Q1[:, :3] @ P.T, atol=1e-10, rtol=0)
    # batched
    torch.testing.assert_close(newton_schulz_steps(torch.stack([A, 2 * A]), 30), torch.stack([polar, polar]))


def test_ns_topk_subspace_approximates_svd_subspace():
    params, x, y = tiny(12, dims=(6, 10, 9, 3))
    A_svd, _ = estimators.guess_generators("upstream", params, x, 0, k=2)
    A_ns, _ = estimators.guess_generators("upstream_ns", params, x, 0, k=2, ns_iters=30, power_iters=30)
    P1 = A_svd @ A_svd.transpose(1, 2)
    P2 = A_ns @ A_ns.transpose(1, 2)
    assert float((P1 - P2).norm(dim=(1, 2)).max()) < 1e-3


# ----------------------------------------------------------------------------- no backward
@pytest.mark.parametrize("name", validation.ESTIMATORS)
def test_estimators_never_use_reverse_mode(name, monkeypatch):
    params, x, y = tiny(13)

    def boom(*a, **k):
        raise AssertionError("reverse-mode AD was called")

    monkeypatch.setattr(torch.autograd, "grad", boom)
    monkeypatch.setattr(torch.autograd, "backward", boom)
    monkeypatch.setattr(torch.Tensor, "backward", boom)
    k = 2 if name.startswith("upstream") else None
    for p in flat(params):
        assert not p.requires_grad
    est = estimators.estimate(name, params, x, y, num_guesses=3, k=k, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        est2 = estimators.estimate(name, params, x, y, num_guesses=3, k=k, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(flat(est), flat(est2))
    assert all(not t.requires_grad for W, b in est for t in (W, b))
    # and a parameter that *requires* grad does not make the estimate build a graph
    params_rg = [(W.clone().requires_grad_(True), b) for W, b in params]
    est3 = estimators.estimate(name, params_rg, x, y, num_guesses=3, k=k, generator=torch.Generator().manual_seed(0))
    assert all(t.grad_fn is None for W, b in est3 for t in (W, b))


# ----------------------------------------------------------------------------- API
def test_estimate_structure_and_averaging():
    params, x, y = tiny(14)
    params[1] = (params[1][0], None)  # one layer without bias
    for name in validation.ESTIMATORS:
        k = 2 if name.startswith("upstream") else None
        est = estimators.estimate(name, params, x, y, num_guesses=5, k=k, generator=torch.Generator().manual_seed(0))
        assert len(est) == len(params)
        for (W, b), (eW, eb) in zip(params, est):
            assert eW.shape == W.shape and eW.dtype == W.dtype
            assert (b is None) == (eb is None) and (b is None or eb.shape == b.shape)
    # G-guess average == mean of the G single-guess samples
    s = mc_samples("upstream", params, x, y, 5, seed=0, k=2)
    e = estimators.estimate("upstream", params, x, y, num_guesses=5, k=2, generator=torch.Generator().manual_seed(0), chunk_size=5)
    torch.testing.assert_close(flat(e), s.mean(0))


def test_bias_variance_and_cosine_helpers():
    params, x, y = tiny(15)
    true = analysis.true_gradient(params, x, y)
    assert analysis.cosine_similarity_per_layer(true, true) == pytest.approx([1.0] * 3)
    neg = [(-W, -b) for W, b in true]
    assert analysis.cosine_similarity_per_layer(neg, true) == pytest.approx([-1.0] * 3)
    rec = analysis.bias_variance("activation", params, x, y, 50, generator=torch.Generator().manual_seed(0))
    assert [r["layer"] for r in rec] == [0, 1, 2]
    for r in rec:
        assert r["variance"] > 0 and r["bias_norm"] >= 0 and -1 <= r["mean_cosine"] <= 1
    # the estimate of the (unbiased) precond variant with k=None has larger variance than upstream top-k
    pre = analysis.bias_variance("upstream_precond", params, x, y, 200, generator=torch.Generator().manual_seed(0))
    up = analysis.bias_variance("upstream", params, x, y, 200, k=1, generator=torch.Generator().manual_seed(0))
    assert pre[0]["variance"] > up[0]["variance"]
    recs = analysis.sweep_bias_variance(["weight", "upstream"], widths=[4, 8], ks=[2, 6], in_features=5, num_classes=3,
                                  depth=2, batch_size=3, num_samples=8)
    assert {(r["name"], r["width"], r["k"]) for r in recs} == {
        ("weight", 4, None), ("weight", 8, None), ("upstream", 4, 2), ("upstream", 8, 2), ("upstream", 8, 6)}
    with pytest.raises(ValueError, match="out of range"):
        estimators.estimate("upstream", *tiny(16), k=7)


def test_true_gradient_matches_module_and_from_module():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).double()
    params = mlp.from_module(seq)
    x = torch.randn(3, 2, 3, dtype=DT)
    y = torch.tensor([0, 3, 1])
    torch.testing.assert_close(mlp.mlp_forward(params, x), seq(x))
    loss = nn.functional.cross_entropy(seq(x), y)
    loss.backward()
    true = analysis.true_gradient(params, x, y)
    torch.testing.assert_close(true[0][0], seq[1].weight.grad)
    torch.testing.assert_close(true[1][1], seq[3].bias.grad)
    from guiding_nc.training.models.mlp import MLP

    m = MLP(6, hidden=(5,), feature_dim=4, final_activation=False).double()
    torch.testing.assert_close(mlp.mlp_forward(mlp.from_module(m), x), m(x))
    with pytest.raises(ValueError, match="trailing ReLU"):
        mlp.from_module(MLP(6, hidden=(5,), feature_dim=4))
    with pytest.raises(ValueError, match="unsupported"):
        mlp.from_module(nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)))


def test_validation_errors():
    params, x, y = tiny(16)
    with pytest.raises(ValueError, match="unknown estimator"):
        estimators.estimate("sgd", params, x, y)
    for bad_k in (0, 7, -1):
        with pytest.raises(ValueError, match="out of range"):
            estimators.estimate("upstream", params, x, y, k=bad_k)
    with pytest.raises(ValueError, match="k is only used"):
        estimators.estimate("wt", params, x, y, k=2)
    with pytest.raises(ValueError, match="positive int"):
        estimators.estimate("weight", params, x, y, num_guesses=0)
    with pytest.raises(ValueError, match="features"):
        estimators.estimate("weight", params, x[:, :3], y)
    with pytest.raises(ValueError, match="class indices"):
        estimators.estimate("weight", params, x, y[:2])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        estimators.estimate("weight", params, x, y + 5)
    with pytest.raises(ValueError, match="expects"):
        mlp.mlp_forward([params[0], params[0]], x)
    with pytest.raises(ValueError, match="shape"):
        analysis.cosine_similarity_per_layer([(params[0][0].T, params[0][1])] + params[1:], params)
    with pytest.raises(ValueError, match="list of 3"):
        analysis.cosine_similarity_per_layer(params[:2], params)
    with pytest.raises(ValueError, match="no upstream"):
        estimators.upstream_matrix(params, x, 2)
    with pytest.raises(ValueError, match="at least 2"):
        analysis.bias_variance("weight", params, x, y, 1)


# ----------------------------------------------------------------------------- matrix-free paths
def test_matrix_free_wt_samples_equal_materialised_guesses():
    params, x, y = tiny(21)
    M = [estimators.upstream_matrix(params, x, l) for l in range(len(params) - 1)]
    _, inputs, _ = mlp.forward_record(params, x)
    gen = torch.Generator().manual_seed(3)
    chunk = next(estimators.sample_chunks("wt", params, x, y, 4, None, gen, 10, 3, 4))
    gen = torch.Generator().manual_seed(3)
    for l, (W, b) in enumerate(params):
        if l < len(params) - 1:
            eta = torch.randn(4, x.shape[0], M[l].shape[-1], generator=gen, dtype=DT)
            U = torch.einsum("bdr,gbr->gbd", M[l], eta)
            s = estimators.directional_derivative_activations(params, x, y, l, U)
            torch.testing.assert_close(chunk[l][0], torch.einsum("gbo,bi->goi", s[..., None] * U, inputs[l]) / x.shape[0])
        else:
            torch.randn(4, x.shape[0], W.shape[0], generator=gen, dtype=DT)


def test_ns_topk_matrix_free_equals_materialised_iteration():
    params, x, y = tiny(22, dims=(5, 9, 8, 3))
    Q, _ = estimators.guess_generators("upstream_ns", params, x, 0, k=3, ns_iters=7, power_iters=2)
    M = estimators.upstream_matrix(params, x, 0)
    Omega = torch.randn(8, 3, generator=torch.Generator().manual_seed(validation.NS_SKETCH_SEED), dtype=DT)
    Y = M @ Omega
    for _ in range(2):
        Y = M @ (M.transpose(1, 2) @ newton_schulz_steps(Y, 7))
    torch.testing.assert_close(Q, newton_schulz_steps(Y, 7))


# ----------------------------------------------------------------------------- measurement tools
def test_gradient_spectra_matches_svd_and_rank_bound():
    params, x, y = tiny(23, dims=(7, 9, 8, 3), B=2)
    true = analysis.true_gradient(params, x, y)
    recs = analysis.gradient_spectra(params, x, y)
    assert [r["layer"] for r in recs] == [0, 1, 2]
    for r, (G, _) in zip(recs, true):
        torch.testing.assert_close(torch.tensor(r["singular_values"], dtype=DT), torch.linalg.svdvals(G))
        assert r["full_rank_bound"] == 2
        assert all(v < 1e-10 * r["singular_values"][0] for v in r["singular_values"][2:])  # rank <= B
        assert 1 <= r["energy_rank"] <= 2 and 1.0 <= r["stable_rank"] <= 2.0 + 1e-9
    with pytest.raises(ValueError, match="energy"):
        analysis.gradient_spectra(params, x, y, energy=1.5)


def test_upstream_subspace_energy_is_one_minus_squared_bias():
    params, x, y = tiny(24, dims=(5, 9, 8, 3))
    recs = analysis.upstream_subspace_energy(params, x, y, [1, 2, 4, 8])
    l0 = [r for r in recs if r["layer"] == 0]
    assert all(a["energy"] <= b["energy"] + 1e-12 for a, b in zip(l0, l0[1:]))
    assert l0[-1]["energy"] == pytest.approx(1.0)  # k = 8 >= rank M: the whole gradient
    assert all(0 <= r["energy"] <= 1 + 1e-12 and r["random_energy"] == min(r["k_used"] / r["width"], 1) for r in recs)
    # per example, 1 - energy is the squared relative bias of the top-k guess in z-space
    gz = analysis.per_example_preact_grads(params, x, y)
    A, Ahat = estimators.guess_generators("upstream", params, x, 0, k=2)
    Eg = torch.einsum("bdr,bcr,bc->bd", Ahat, A, gz[0])
    rel = ((Eg - gz[0]).norm(dim=1) ** 2 / gz[0].norm(dim=1) ** 2)
    assert float(1 - rel.mean()) == pytest.approx([r for r in l0 if r["k"] == 2][0]["energy"])
    with pytest.raises(ValueError, match="positive int"):
        analysis.upstream_subspace_energy(params, x, y, [0])


@pytest.mark.parametrize("name", validation.UNBIASED_ESTIMATORS)
def test_estimator_quality_unbiased_mc_within_variance(name):
    """E||mean_n - g||^2 = tr Cov / n for an unbiased estimator: the MC bias must respect it."""
    params, x, y = tiny(25)
    n = 400
    for r in analysis.estimator_quality(name, params, x, y, n, generator=torch.Generator().manual_seed(0)):
        assert r["exact_relative_bias"] < 1e-10
        assert r["bias_norm"] ** 2 < 4 * r["variance"] / n
        assert r["relative_mse"] == pytest.approx(r["relative_variance"])


def test_estimator_quality_biased_guesses():
    params, x, y = tiny(26, dims=(5, 9, 8, 3))
    wt = analysis.estimator_quality("wt", params, x, y, 50, generator=torch.Generator().manual_seed(0))
    up = analysis.estimator_quality("upstream", params, x, y, 50, k=1, generator=torch.Generator().manual_seed(0))
    assert wt[0]["exact_relative_bias"] > 1e-3 and up[0]["exact_relative_bias"] > 1e-3
    assert wt[-1]["exact_relative_bias"] < 1e-10  # last layer: plain activation perturbation
    for r in up + wt:
        assert -1 <= r["expectation_cosine"] <= 1 + 1e-12
        assert r["relative_mse"] == pytest.approx(r["exact_relative_bias"] ** 2 + r["relative_variance"])


def test_running_mean_error_unbiased_decays_biased_levels_off():
    params, x, y = tiny(27)
    e = analysis.running_mean_error("activation", params, x, y, [10, 1500], generator=torch.Generator().manual_seed(0))
    q = analysis.estimator_quality("activation", params, x, y, 400, generator=torch.Generator().manual_seed(1))
    tot_var = sum(r["variance"] for r in q) / sum(r["true_norm"] ** 2 for r in q)
    assert e[1] < 4 * math.sqrt(tot_var / 1500) and e[1] < e[0]
    w = analysis.running_mean_error("upstream", params, x, y, [1500], k=1, generator=torch.Generator().manual_seed(0))
    E = analysis.expected_estimate("upstream", params, x, y, k=1)
    true = analysis.true_gradient(params, x, y)
    bias = float((flat(E) - flat(true)).norm() / flat(true).norm())
    assert abs(w[0] - bias) < 0.25 * bias
    with pytest.raises(ValueError, match="positive int"):
        analysis.running_mean_error("activation", params, x, y, [0])


def test_peak_memory_meter_counts_only_new_live_tensors():
    before = torch.ones(1000, dtype=torch.float64)
    with analysis.PeakMemoryMeter() as m:
        a = torch.zeros(2000, dtype=torch.float64)  # 16000 bytes
        b = a * 2  # + 16000
        del a, b
        c = torch.zeros(100, dtype=torch.float64)
        v = c.view(10, 10)  # a view shares the storage: not counted twice
    assert m.peak_bytes == 32000
    assert m.current_bytes == 800
    del c, v
    assert m.current_bytes == 0
    assert before.sum() == 1000


def test_train_mlp_backprop_learns_and_validates():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long()
    rec = training.train_mlp("backprop", [6, 16, 16, 2], x, y, x, y, steps=40, batch_size=16, lr=1e-2, eval_every=20)
    assert rec["step"] == [0, 20, 40] and rec["cosine_step"] == [20, 40]
    assert rec["train_loss"][-1] < rec["train_loss"][0] and rec["test_accuracy"][-1] > 0.8
    assert all(c == pytest.approx([1.0] * 3) for c in rec["cosine"])
    r2 = training.train_mlp("upstream", [6, 16, 16, 2], x, y, x, y, steps=4, batch_size=8, k=2, eval_every=2,
                      return_params=True)
    assert len(r2["params"]) == 3 and len(r2["cosine"][0]) == 3 and not r2["diverged"]
    with pytest.raises(ValueError, match="unknown method"):
        training.train_mlp("sgd", [6, 2], x, y, x, y, steps=1)
    with pytest.raises(ValueError, match="backprop takes k=None"):
        training.train_mlp("backprop", [6, 4, 2], x, y, x, y, steps=1, k=2)
    with pytest.raises(ValueError, match="lr"):
        training.train_mlp("backprop", [6, 4, 2], x, y, x, y, steps=1, lr=-1.0)
    with pytest.raises(ValueError, match="features"):
        training.train_mlp("backprop", [5, 4, 2], x, y, x, y, steps=1)
