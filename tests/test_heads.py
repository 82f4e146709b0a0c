"""Classifier heads and the class-mean EMA (paper §3.4-3.5, Eq. 8-9)."""
import math

import pytest
import torch
from conftest import device_params

from guiding_nc.core.etf import canonical_point, etf_classifier
from guiding_nc.core.heads import (
    FixedETFHead,
    ImplicitETFHead,
    LinearHead,
    normalize_features,
)
from guiding_nc.core.heads import HeadOptions
from guiding_nc.core.methods import METHOD_NAMES, METHODS, Method, build_head
from guiding_nc.core.running_means import ClassMeanEMA, ema_alpha


def _batch(B, d, C, seed=0, classes=None):
    g = torch.Generator().manual_seed(seed)
    classes = list(range(C)) if classes is None else list(classes)
    y = torch.tensor([classes[i % len(classes)] for i in range(B)])
    return torch.randn(B, d, generator=g), y


def _manual_batch_matrix(h, y, C):
    """Eq. 4-5 by hand: centred class means (d, C) scaled to unit Frobenius norm."""
    means = torch.stack([h[y == c].mean(0) for c in range(C)], 1)  # (d, C)
    hg = h.mean(0)
    Hb = means - hg[:, None]
    return Hb / Hb.norm(), hg


# ----------------------------------------------------------------------------- alpha
def test_alpha_schedule_and_floor():
    assert ema_alpha(1) == 1.0
    assert ema_alpha(2) == pytest.approx(2 / 3)
    assert ema_alpha(3) == pytest.approx(0.5)
    assert ema_alpha(19999) == pytest.approx(1e-4)
    assert ema_alpha(10 ** 6) == 1e-4  # floored
    assert ema_alpha(10 ** 6, floor=1e-3) == 1e-3
    t = torch.tensor([1, 2, 3, 10 ** 7])
    assert torch.allclose(ema_alpha(t), torch.tensor([1.0, 2 / 3, 0.5, 1e-4], dtype=torch.float64))


# ------------------------------------------------------------------------------- EMA
def test_ema_follows_eq9_with_all_classes_present():
    d, C = 8, 4
    ema = ClassMeanEMA(d, C, dtype=torch.float64)
    H_prev = None
    for t in range(1, 6):
        h, y = _batch(16, d, C, seed=t)
        h = h.double()
        H, hg = ema.update(h, y)
        Hb, hg_b = _manual_batch_matrix(h, y, C)
        a = 2.0 / (t + 1)
        expected = Hb if H_prev is None else a * Hb + (1 - a) * H_prev
        assert torch.allclose(H, expected, atol=1e-12)
        assert int(ema.step) == t
        assert torch.equal(ema.class_updates, torch.full((C,), t))
        H_prev = expected
    # first update: alpha = 1, so the state is exactly the unit-Frobenius batch matrix
    ema2 = ClassMeanEMA(d, C, dtype=torch.float64)
    h, y = _batch(16, d, C, seed=1)
    H1, _ = ema2.update(h.double(), y)
    assert H1.norm().item() == pytest.approx(1.0)
    assert torch.allclose(H1.sum(1), torch.zeros(d, dtype=torch.float64), atol=1e-12)  # balanced: centred


def test_ema_floor_is_applied():
    d, C = 6, 3
    ema = ClassMeanEMA(d, C, floor=1e-4, dtype=torch.float64)
    h, y = _batch(12, d, C, seed=0)
    ema.update(h.double(), y)
    ema.step.fill_(10 ** 6)
    ema.class_updates.fill_(10 ** 6)
    before = ema.means.clone()
    h2, y2 = _batch(12, d, C, seed=1)
    H, _ = ema.update(h2.double(), y2)
    Hb, _ = _manual_batch_matrix(h2.double(), y2, C)
    assert torch.allclose(H, 1e-4 * Hb + (1 - 1e-4) * before, atol=1e-14)


def test_ema_absent_classes_never_nan_and_keep_running_mean():
    d, C = 8, 6
    ema = ClassMeanEMA(d, C, dtype=torch.float64)
    # step 1: only classes 0, 1, 2 present -> never-seen classes get the zero column
    h, y = _batch(9, d, C, seed=0, classes=[0, 1, 2])
    H, hg = ema.update(h.double(), y)
    assert torch.isfinite(H).all() and torch.isfinite(hg).all()
    assert torch.equal(H[:, 3:], torch.zeros(d, 3, dtype=torch.float64))
    # present columns scaled to Frobenius norm sqrt(k/C) = sqrt(3/6)
    assert H[:, :3].norm().item() == pytest.approx(math.sqrt(0.5))
    seen = H[:, :3].clone()
    # step 2: classes 3, 4 appear for the first time; 0-2 absent and kept unchanged
    h, y = _batch(6, d, C, seed=1, classes=[3, 4])
    H, _ = ema.update(h.double(), y)
    assert torch.isfinite(H).all()
    assert torch.equal(H[:, :3], seen)
    assert torch.equal(H[:, 5], torch.zeros(d, dtype=torch.float64))
    # first appearance replaces the zero column outright (alpha_c = 1)
    means = torch.stack([h[y == c].mean(0) for c in (3, 4)], 1).double()
    cen = means - h.double().mean(0)[:, None]
    assert torch.allclose(H[:, 3:5], cen * math.sqrt(2 / 6) / cen.norm(), atol=1e-12)
    assert ema.class_updates.tolist() == [1, 1, 1, 1, 1, 0]
    # a batch with a single class: centred means are all zero -> still finite
    h, y = _batch(4, d, C, seed=2, classes=[5])
    H, _ = ema.update(h.double(), y)
    assert torch.isfinite(H).all()


def test_ema_gradient_reaches_features():
    d, C = 5, 3
    ema = ClassMeanEMA(d, C)
    h, y = _batch(9, d, C)
    h.requires_grad_(True)
    H, hg = ema.update(h, y)
    (H.square().sum() + hg.sum()).backward()
    assert h.grad is not None and torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ heads
@pytest.mark.parametrize("device", device_params())
def test_implicit_head_weight_bias_and_logits(device):
    d, C, tau = 12, 5, 5.0
    head = ImplicitETFHead(d, C, tau=tau).to(device)
    head.train()
    f, y = _batch(20, d, C, seed=3)
    f, y = f.to(device), y.to(device)
    logits = head(f, y)
    W, b = head.weight, head.bias
    assert W.shape == (C, d) and b.shape == (C,)
    assert torch.allclose(W.norm(dim=1), torch.ones(C, device=device), atol=1e-5)
    G = W @ W.T
    off = G[~torch.eye(C, dtype=torch.bool, device=device)]
    assert torch.allclose(off, torch.full_like(off, -1 / (C - 1)), atol=1e-5)
    h = normalize_features(f)
    assert torch.allclose(logits, tau * (h @ W.T + b), atol=1e-5)
    assert torch.allclose(b, -W @ head.global_mean, atol=1e-6)
    # eval mode: no state change, same classifier
    head.eval()
    state = {k: v.clone() for k, v in head.state_dict().items()}
    out = head(f, y)
    assert torch.allclose(out, tau * (h @ W.T + b), atol=1e-5)
    for k, v in head.state_dict().items():
        assert torch.equal(v, state[k])


@pytest.mark.parametrize("device", device_params())
def test_implicit_head_ddn_gradient_switch(device):
    d, C = 10, 4
    f, y = _batch(16, d, C, seed=4)
    f, y = f.to(device), y.to(device)
    grads = {}
    for mode in ("closed_form", "kkt", "none"):
        head = ImplicitETFHead(d, C, backward=mode, solve_dtype=torch.float64).to(device)
        ff = f.clone().double().requires_grad_(True)
        torch.nn.functional.cross_entropy(head(ff, y), y).backward()
        grads[mode] = ff.grad
        assert torch.isfinite(ff.grad).all()
    assert torch.allclose(grads["closed_form"], grads["kkt"], atol=1e-6)
    assert not torch.allclose(grads["closed_form"], grads["none"], atol=1e-6)


def test_implicit_head_state_dict_resume():
    d, C = 10, 4
    a = ImplicitETFHead(d, C)
    for s in range(3):
        f, y = _batch(16, d, C, seed=s)
        a(f, y)
    b = ImplicitETFHead(d, C)
    b.load_state_dict(a.state_dict())
    f, y = _batch(16, d, C, seed=10)
    assert torch.equal(a(f, y), b(f, y))
    assert torch.equal(a.nearest.prox, b.nearest.prox)
    assert int(b.ema.step) == 4


def test_linear_head_renormalises_rows():
    head = LinearHead(8, 3, tau=5.0)
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(3), atol=1e-6)
    with torch.no_grad():
        head.linear.weight.mul_(3.0)
    head.after_step()
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(3), atol=1e-6)
    nn_head = build_head("standard-no-norm", 8, 3)
    with torch.no_grad():
        nn_head.linear.weight.mul_(3.0)
    w = nn_head.weight.clone()
    nn_head.after_step()
    assert torch.equal(nn_head.weight, w)
    x = torch.randn(4, 8)
    assert torch.allclose(nn_head(x), x @ w.T)  # no feature normalisation, no temperature


def test_fixed_heads():
    d, C = 9, 4
    canon = build_head("fixed", d, C)
    assert torch.allclose(canon.weight, etf_classifier(canonical_point(d, C, dtype=torch.float64)).float())
    r1, r2 = build_head("fixed-random", d, C, etf_seed=3), build_head("fixed-random", d, C, etf_seed=3)
    r3 = build_head("fixed-random", d, C, etf_seed=4)
    assert torch.equal(r1.weight, r2.weight) and not torch.allclose(r1.weight, r3.weight)
    for h in (canon, r1):
        assert isinstance(h, FixedETFHead)
        assert torch.allclose(h.weight.norm(dim=1), torch.ones(C), atol=1e-6)
        assert torch.equal(h.bias, torch.zeros(C))  # -W h_G with h_G = 0 before the first step


def test_build_head_errors():
    with pytest.raises(ValueError, match="unknown method"):
        build_head("learned", 8, 3)
    with pytest.raises(ValueError, match="exceeds the feature dimension"):
        build_head("implicit", 4, 6)
    # Every registered method builds its head through its own registry entry (no fall-through).
    assert METHOD_NAMES == tuple(METHODS)
    for m in METHOD_NAMES:
        head = build_head(m, 8, 3)
        f, y = _batch(6, 8, 3)
        assert head(f, y).shape == (6, 3)
        assert type(head) is type(METHODS[m].build(8, 3, HeadOptions())), m
    with pytest.raises(TypeError, match="has no builder"):
        Method("learned", "learned", "#000000", family="standard")
    with pytest.raises(ValueError, match="centring"):
        build_head("fixed", 8, 3, centring="sideways")


def test_normalize_features_matches_plain_division_and_gradchecks():
    # The custom backward (projected gradient) equals autograd's through h / max(||h||, eps),
    # including rows at or below eps, and supports double backward.
    torch.manual_seed(0)
    h = torch.randn(7, 5, dtype=torch.float64)
    h[2] = 0.0
    h[4] = 1e-14
    h.requires_grad_(True)

    def plain(x):
        return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)

    g = torch.randn(7, 5, dtype=torch.float64)
    ours, = torch.autograd.grad(normalize_features(h), h, g)
    ref, = torch.autograd.grad(plain(h), h, g)
    assert torch.equal(normalize_features(h), plain(h))
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(normalize_features, (x,))
    assert torch.autograd.gradgradcheck(normalize_features, (x,))
    u = normalize_features(torch.randn(50, 8))
    assert torch.allclose(u.norm(dim=1), torch.ones(50), atol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(B, d\)"):
        normalize_features(torch.randn(3, 4, 5))


# -------------------------------------------------------------------------- one switch
def test_every_head_centres_its_logits_the_same_way():
    """Given the same W and the same batches, standard, fixed and implicit give identical logits:
    the methods differ in W only (same normalisation, temperature and centring by h_G)."""
    d, C, B = 12, 4, 32
    imp = ImplicitETFHead(d, C, tau=5.0).train()
    std = LinearHead(d, C, tau=5.0).train()
    fix = FixedETFHead(d, C, tau=5.0).train()
    for t in range(1, 4):
        x, y = _batch(B, d, C, seed=10 + t)
        z_imp = imp(x, y)
        W = imp.weight.clone()  # the implicit head's classifier of this step
        with torch.no_grad():
            std.linear.weight.copy_(W)
            fix.W.copy_(W)
        z_std, z_fix = std(x, y), fix(x, y)
        assert torch.allclose(z_std, z_imp, atol=1e-5), t
        assert torch.allclose(z_fix, z_imp, atol=1e-5), t
        # The same running h_G in all three (the implicit one comes from its class sums).
        assert torch.allclose(std.global_mean, imp.global_mean, atol=1e-6)
        assert torch.allclose(fix.global_mean, imp.global_mean, atol=1e-6)
        # By hand: tau W (h - h_G) with h on the sphere.
        h = normalize_features(x)
        assert torch.allclose(z_fix, 5.0 * (h - fix.global_mean) @ W.T, atol=1e-5)
    # Eval mode: the stored h_G, no update.
    for head in (imp, std, fix):
        head.eval()
    x, y = _batch(B, d, C, seed=99)
    before = fix.global_mean.clone()
    assert torch.allclose(fix(x, y), imp(x, y), atol=1e-5)
    assert torch.allclose(std(x, y), imp(x, y), atol=1e-5)
    assert torch.equal(fix.global_mean, before)
    assert torch.allclose(fix.bias, imp.bias, atol=1e-6)


def test_global_mean_ema_follows_eq9_and_carries_gradients():
    from guiding_nc.core.running_means import GlobalMeanEMA

    d = 6
    ema = GlobalMeanEMA(d, dtype=torch.float64)
    running = None
    for t in range(1, 5):
        h = torch.randn(10, d, dtype=torch.float64, generator=torch.Generator().manual_seed(t), requires_grad=True)
        hg = ema.update(h)
        a = 2.0 / (t + 1)
        expected = h.mean(0) if running is None else a * h.mean(0) + (1 - a) * running
        assert torch.allclose(hg, expected, atol=1e-14)
        (g,) = torch.autograd.grad(hg.sum(), h)
        assert torch.allclose(g, torch.full_like(h, a / 10), atol=1e-14)  # d h_G / d h_i = alpha / B
        running = expected.detach()
    with pytest.raises(ValueError, match="floor"):
        GlobalMeanEMA(d, floor=0.0)


def test_fixed_uncentred_is_the_old_fixed_head():
    d, C = 10, 3
    x, y = _batch(24, d, C, seed=5)
    old = build_head("fixed-uncentred", d, C).train()
    assert old.global_mean is None and old.bias is None
    assert torch.allclose(old(x, y), 5.0 * normalize_features(x) @ old.W.T, atol=1e-6)
    new = build_head("fixed", d, C).train()
    assert not torch.allclose(new(x, y), old(x, y), atol=1e-3)  # the centring changes the logits


def test_the_head_start_is_measured_at_step_zero(tmp_path):
    """The implicit ETF classifies the paper's random UFM features before any step (its class
    means contain each sample); from the mean-free start it is at chance, like the others."""
    from guiding_nc.training.config import TrainConfig
    from guiding_nc.training.trainer import train_run

    def run(method, init):
        cfg = TrainConfig.from_dict(dict(
            name="h", output_dir=str(tmp_path), run_dir=str(tmp_path / f"{method}-{init}"), dataset="ufm", model="ufm",
            num_classes=10, num_samples=400, feature_dim=64, batch_size=400, epochs=1, eval_every=1,
            checkpoint_every=0, progress=False, verbose=False, method=method, record_step_accuracy=True,
            model_kwargs={"init": init}))
        return train_run(cfg)["step_accuracies"][0]

    assert run("implicit", "gaussian") > 0.3  # chance is 0.1
    for m in ("standard", "fixed", "implicit"):
        assert run(m, "mean_free") <= 0.2
