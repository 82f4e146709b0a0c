"""Tests for guiding_nc.training.optim: AGD (Bernstein et al. 2023, Alg. 1), agd_init_, factories."""
import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from guiding_nc.training.models import build_model
from guiding_nc.training.models.mlp import MLP
from guiding_nc.training.models.ufm import UFM
from guiding_nc.training.optim import (
    AGD,
    CONV_NORMS,
    OPTIMIZER_NAMES,
    SCHEDULER_NAMES,
    agd_init_,
    agd_scale,
    build_optimizer,
    build_scheduler,
)


def _two_layer(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5, bias=False), nn.ReLU(), nn.Linear(5, 2, bias=False)).to(dtype)
    x = torch.randn(8, 3, dtype=dtype)
    y = torch.randn(8, 2, dtype=dtype)
    return net, x, y


def _grads(net, x, y):
    net.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    return [p.grad.clone() for p in net.parameters()]


# ------------------------------------------------------------------------------ AGD: the update
def test_agd_update_matches_hand_computation_two_layer_mlp():
    net, x, y = _two_layer()
    agd_init_(net, generator=torch.Generator().manual_seed(1))
    before = [p.detach().clone() for p in net.parameters()]
    g1, g2 = _grads(net, x, y)
    gain = 10.0
    opt = AGD(net.parameters(), gain=gain)
    opt.step()

    L = 2
    s1, s2 = math.sqrt(5 / 3), math.sqrt(2 / 5)
    n1, n2 = g1.norm().item(), g2.norm().item()
    G = (s1 * n1 + s2 * n2) / L
    eta = math.log((1 + math.sqrt(1 + 4 * G)) / 2)
    expected = [
        before[0] - gain * eta / L * s1 * g1 / n1,
        before[1] - gain * eta / L * s2 * g2 / n2,
    ]
    after = [p.detach() for p in net.parameters()]
    for a, e in zip(after, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    # each layer moves by exactly gain * eta / L times its scale sqrt(d_k / d_{k-1}) (Frobenius)
    for a, b, s in zip(after, before, (s1, s2)):
        assert (a - b).norm().item() == pytest.approx(gain * eta / L * s, rel=1e-12)
    assert opt.last_eta == pytest.approx(eta, rel=1e-12)
    assert float(opt.param_groups[0]["grad_summary"]) == pytest.approx(G, rel=1e-12)
    assert opt.param_groups[0]["step"] == 1


@pytest.mark.parametrize("conv_norm", CONV_NORMS)
def test_agd_conv_kernel_update(conv_norm):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False).double()
    lin = nn.Linear(4, 2, bias=False).double()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    out = lin(conv(x).mean(dim=(2, 3)))
    out.square().sum().backward()
    gc, gl = conv.weight.grad.clone(), lin.weight.grad.clone()
    wc, wl = conv.weight.detach().clone(), lin.weight.detach().clone()
    gain = 3.0
    opt = AGD([conv.weight, lin.weight], gain=gain, conv_norm=conv_norm)
    opt.step()

    s_conv = math.sqrt(4 / (3 * 9))  # kernel treated as a (out, in*kx*ky) matrix
    s_lin = math.sqrt(2 / 4)
    assert agd_scale(conv.weight.shape) == pytest.approx(s_conv)
    if conv_norm == "per_position":
        slice_norms = gc.norm(dim=(0, 1), keepdim=True)  # (1, 1, 3, 3)
        conv_term = s_conv * slice_norms.sum().item()
        direction = gc / slice_norms
    else:
        conv_term = s_conv * gc.norm().item()
        direction = gc / gc.norm()
    G = (conv_term + s_lin * gl.norm().item()) / 2
    eta = math.log((1 + math.sqrt(1 + 4 * G)) / 2)
    torch.testing.assert_close(conv.weight.detach(), wc - gain * eta / 2 * s_conv * direction,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.weight.detach(), wl - gain * eta / 2 * s_lin * gl / gl.norm(),
                               rtol=1e-12, atol=1e-12)
    if conv_norm == "per_position":  # every (out, in) slice moves by the same Frobenius amount
        slice_moves = (conv.weight.detach() - wc).norm(dim=(0, 1))
        torch.testing.assert_close(slice_moves, torch.full((3, 3), gain * eta / 2 * s_conv,
                                                           dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4),
    gain=st.floats(0.1, 20.0),
    seed=st.integers(0, 2**16),
)
def test_agd_update_norm_property(shapes, gain, seed):
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(*s, generator=gen, dtype=torch.float64)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    before = [p.detach().clone() for p in params]
    opt = AGD(params, gain=gain)
    opt.step()
    L = len(params)
    G = sum(agd_scale(p.shape) * p.grad.norm().item() for p in params) / L
    eta = math.log((1 + math.sqrt(1 + 4 * G)) / 2)
    for p, b in zip(params, before):
        assert (p.detach() - b).norm().item() == pytest.approx(gain * eta / L * agd_scale(p.shape), rel=1e-9)


def test_agd_skips_missing_grads_but_counts_depth_and_handles_zero_grads():
    a = nn.Parameter(torch.randn(4, 3))
    b = nn.Parameter(torch.randn(2, 4))
    c = nn.Parameter(torch.randn(2, 2))
    a.grad = torch.randn(4, 3)
    b.grad = torch.zeros(2, 4)
    b0, c0, a0 = b.detach().clone(), c.detach().clone(), a.detach().clone()
    opt = AGD([a, b, c], gain=1.0)
    assert opt.depth == 3
    opt.step()
    assert torch.equal(b.detach(), b0)  # zero gradient: zero update, no NaN
    assert torch.equal(c.detach(), c0)  # no gradient: untouched
    G = agd_scale(a.shape) * a.grad.norm().item() / 3
    eta = math.log((1 + math.sqrt(1 + 4 * G)) / 2)
    assert (a.detach() - a0).norm().item() == pytest.approx(eta / 3 * agd_scale(a.shape), rel=1e-5)


def test_agd_without_any_grad_is_a_no_op():
    p = nn.Parameter(torch.randn(3, 3))
    opt = AGD([p])
    opt.step()
    assert opt.last_eta is None and opt.param_groups[0]["step"] == 0


def test_agd_closure_and_lr_multiplier():
    net, x, y = _two_layer()
    net2 = copy.deepcopy(net)
    opt, opt2 = AGD(net.parameters(), gain=2.0), AGD(net2.parameters(), gain=2.0, lr=0.5)
    w0 = [p.detach().clone() for p in net.parameters()]

    def closure(n, o):
        def f():
            o.zero_grad()
            loss = nn.functional.mse_loss(n(x), y)
            loss.backward()
            return loss
        return f

    loss = opt.step(closure(net, opt))
    opt2.step(closure(net2, opt2))
    assert torch.is_tensor(loss)
    for p, p2, w in zip(net.parameters(), net2.parameters(), w0):
        torch.testing.assert_close(p2 - w, 0.5 * (p - w))


def test_agd_per_group_scale_override():
    p = nn.Parameter(torch.randn(6, 2, dtype=torch.float64))
    p.grad = torch.randn(6, 2, dtype=torch.float64)
    p0 = p.detach().clone()
    opt = AGD([{"params": [p], "agd_scale": 0.25}], gain=1.0)
    opt.step()
    G = 0.25 * p.grad.norm().item()
    eta = math.log((1 + math.sqrt(1 + 4 * G)) / 2)
    assert (p.detach() - p0).norm().item() == pytest.approx(0.25 * eta, rel=1e-12)


# ------------------------------------------------------------------------------ AGD: validation
def test_agd_rejects_bias_with_its_name():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    with pytest.raises(ValueError, match=r"'0\.bias'.*\(4,\).*agd_compatible=True"):
        AGD(model)
    with pytest.raises(ValueError, match=r"'0\.bias'"):
        AGD(model.named_parameters())
    with pytest.raises(ValueError, match=r"params'\]\[1\].*>= 2 dimensions"):
        AGD(model.parameters())


def test_agd_rejects_batchnorm_affine_and_bad_groups():
    bn = build_model("small_cnn", input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="AGD cannot optimise parameter"):
        AGD(bn)
    ok = nn.Linear(3, 3, bias=False)
    opt = AGD(ok)  # a Module is taken with its parameter names
    with pytest.raises(ValueError, match="'bias'"):
        opt.add_param_group({"params": list(nn.Linear(2, 2).named_parameters())})
    assert len(opt.param_groups) == 1  # the rejected group was not kept
    with pytest.raises(ValueError, match="gain"):
        AGD(ok.parameters(), gain=0.0)
    with pytest.raises(TypeError, match="gain"):
        AGD(ok.parameters(), gain="10")
    with pytest.raises(ValueError, match="conv_norm"):
        AGD(ok.parameters(), conv_norm="rows")
    with pytest.raises(ValueError, match="agd_scale"):
        AGD([{"params": ok.parameters(), "agd_scale": -1.0}])


def test_agd_accepts_agd_compatible_models():
    for name, kw in [("mlp", dict(input_shape=(40,))), ("small_cnn", dict(input_shape=(1, 8, 8))),
                     ("ufm", dict(num_samples=7, feature_dim=4))]:
        model = build_model(name, agd_compatible=True, **kw)
        opt = AGD(model)
        assert opt.depth == len(list(model.parameters()))


# ------------------------------------------------------------------------------ AGD: behaviour
def _blobs(seed=0, n=120, d=10, c=3):
    gen = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(c, d, generator=gen)
    y = torch.arange(n) % c
    x = centres[y] + torch.randn(n, d, generator=gen)
    return x, y


def test_agd_decreases_classification_loss_in_50_steps():
    torch.manual_seed(0)
    x, y = _blobs()
    features = MLP(10, hidden=(32,), feature_dim=16, agd_compatible=True)
    head = nn.Linear(16, 3, bias=False)
    model = nn.Sequential(features, head)
    agd_init_(model, generator=torch.Generator().manual_seed(0))
    opt = AGD(model, gain=10.0)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    assert (model(x).argmax(1) == y).float().mean() > 0.9


def test_agd_decreases_regression_loss_in_50_steps_gain_1():
    net, x, y = _two_layer(dtype=torch.float32)
    x = torch.randn(64, 3)
    y = torch.sin(x @ torch.randn(3, 2))
    agd_init_(net)
    opt = AGD(net.parameters(), gain=1.0)
    first = nn.functional.mse_loss(net(x), y).item()
    for _ in range(50):
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
    assert nn.functional.mse_loss(net(x), y).item() < 0.7 * first


def test_agd_trains_a_ufm_with_a_head():
    gen = torch.Generator().manual_seed(0)
    ufm = UFM(30, 8, generator=gen)
    head = nn.Linear(8, 3, bias=False)
    model = nn.ModuleDict({"ufm": ufm, "head": head})
    h0 = ufm.features.detach().clone()
    agd_init_(model, generator=gen)
    assert torch.equal(ufm.features.detach(), h0)  # UFM features are not re-initialised
    labels = torch.arange(30) % 3
    opt = AGD(model)
    idx = torch.arange(30)
    first = None
    for _ in range(50):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(ufm(idx)), labels)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.25 * first


def test_agd_state_dict_round_trip_is_bit_identical():
    x, y = _blobs(seed=1)

    def make():
        torch.manual_seed(3)
        model = nn.Sequential(MLP(10, hidden=(16,), feature_dim=8, agd_compatible=True),
                              nn.Linear(8, 3, bias=False))
        agd_init_(model, generator=torch.Generator().manual_seed(5))
        opt = AGD(model, gain=10.0)
        sched = build_scheduler("cosine", opt, total_steps=10, warmup_steps=2)
        return model, opt, sched

    def run(model, opt, sched, steps, offset):
        etas = []
        for t in range(offset, offset + steps):
            sl = slice((t * 17) % 100, (t * 17) % 100 + 20)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[sl]), y[sl]).backward()
            opt.step()
            sched.step()
            etas.append(opt.last_eta)
        return etas

    model, opt, sched = make()
    run(model, opt, sched, 4, 0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    eta_at_save, lr_at_save = opt.last_eta, opt.param_groups[0]["lr"]
    etas_a = run(model, opt, sched, 4, 4)

    model2, opt2, sched2 = make()
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert opt2.last_eta == eta_at_save and opt2.param_groups[0]["step"] == 4
    assert opt2.param_groups[0]["lr"] == lr_at_save
    etas_b = run(model2, opt2, sched2, 4, 4)
    assert etas_a == etas_b
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------------- agd_init_
def test_agd_init_singular_values_and_kernels():
    gen = torch.Generator().manual_seed(0)
    wide, tall = nn.Linear(7, 3, bias=False), nn.Linear(3, 7, bias=False)
    conv = nn.Conv2d(2, 5, 3, bias=False)
    agd_init_([wide.weight, tall.weight, conv.weight], generator=gen)
    for w in (wide.weight, tall.weight):
        sv = torch.linalg.svdvals(w.detach())
        torch.testing.assert_close(sv, torch.full_like(sv, agd_scale(w.shape)))
    s = agd_scale(conv.weight.shape)
    for i in range(3):
        for j in range(3):
            sv = torch.linalg.svdvals(conv.weight.detach()[:, :, i, j])
            torch.testing.assert_close(sv, torch.full_like(sv, s))
    agd_init_([conv.weight], conv_norm="full", generator=gen)
    sv = torch.linalg.svdvals(conv.weight.detach().reshape(5, -1))
    torch.testing.assert_close(sv, torch.full_like(sv, s))


def test_agd_init_reproducible_skips_and_rejects():
    a, b = MLP(6, hidden=(5,), feature_dim=4, agd_compatible=True), MLP(6, hidden=(5,), feature_dim=4, agd_compatible=True)
    agd_init_(a, generator=torch.Generator().manual_seed(9))
    agd_init_(b, generator=torch.Generator().manual_seed(9))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    w = a.net[1].weight.detach().clone()
    agd_init_(a, skip=[a.net[1].weight])
    assert torch.equal(a.net[1].weight.detach(), w)
    with pytest.raises(ValueError, match=r"'net\.1\.bias'"):
        agd_init_(MLP(6, hidden=(5,), feature_dim=4))
    with pytest.raises(ValueError, match="conv_norm"):
        agd_init_(a, conv_norm="x")


# ------------------------------------------------------------------------------------ factories
def test_build_optimizer_names_and_hyperparameters():
    model = nn.Linear(4, 3, bias=False)
    with pytest.raises(ValueError, match="agd, sgd, adam"):
        build_optimizer("rmsprop", model.parameters(), lr=0.1)
    with pytest.raises(TypeError):
        build_optimizer(None, model.parameters())
    for name in ("sgd", "adam"):
        with pytest.raises(ValueError, match="lr"):
            build_optimizer(name, model.parameters())
    sgd = build_optimizer("SGD", model, lr=0.1)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 5e-4
    adam = build_optimizer("adam", model.parameters(), lr=1e-3, betas=(0.8, 0.99), weight_decay=0.0)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["betas"] == (0.8, 0.99)
    with pytest.raises(ValueError, match="betas"):
        build_optimizer("adam", model.parameters(), lr=1e-3, betas=(0.9, 1.5))
    agd = build_optimizer("agd", model.parameters(), gain=5.0)
    assert isinstance(agd, AGD) and agd.param_groups[0]["gain"] == 5.0 and agd.param_groups[0]["lr"] == 1.0
    assert OPTIMIZER_NAMES == ("agd", "sgd", "adam")


def test_build_scheduler_names_and_shapes():
    p = nn.Parameter(torch.randn(2, 2))
    with pytest.raises(ValueError, match="none, cosine, step"):
        build_scheduler("linear", torch.optim.SGD([p], lr=1.0), total_steps=10)
    with pytest.raises(ValueError, match="warmup_steps"):
        build_scheduler("cosine", torch.optim.SGD([p], lr=1.0), total_steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match="total_steps"):
        build_scheduler("none", torch.optim.SGD([p], lr=1.0), total_steps=0)
    with pytest.raises(TypeError, match="optimizer"):
        build_scheduler("none", "sgd", total_steps=10)
    assert SCHEDULER_NAMES == ("none", "cosine", "step")

    def lrs(name, **kw):
        opt = torch.optim.SGD([p], lr=2.0)
        sched = build_scheduler(name, opt, total_steps=8, **kw)
        out = []
        for _ in range(8):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs("none") == [2.0] * 8
    assert lrs("step") == pytest.approx([2.0] * 4 + [0.2] * 2 + [0.02] * 2)
    cos = lrs("cosine")
    assert cos[0] == 2.0 and all(a > b for a, b in zip(cos, cos[1:])) and cos[-1] < 0.1
    warm = lrs("cosine", warmup_steps=4)
    assert warm[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs("none", warmup_steps=2)[:3] == pytest.approx([1.0, 2.0, 2.0])


def test_scheduler_drives_agd_and_is_picklable():
    p = nn.Parameter(torch.randn(3, 3))
    opt = AGD([p], gain=1.0)
    sched = build_scheduler("step", opt, total_steps=4)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    multipliers = []
    for _ in range(4):
        multipliers.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert multipliers == pytest.approx([1.0, 1.0, 0.1, 0.01])
