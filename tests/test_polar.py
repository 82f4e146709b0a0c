"""The polar-factor routes (guiding_nc.core.polar): Newton–Schulz with its stopping rule, fallback and
sync-free adjoint, the gesvda option, and the nearest ETF through them.  CPU; CUDA in test_cuda.py."""
import math
import warnings

import pytest
import torch
from conftest import device_params
from test_nearest import class_means, gradient_problem

import guiding_nc as gnc
from guiding_nc.core import polar
from guiding_nc.core.errors import NonFiniteInputError
from guiding_nc.core.heads import ImplicitETFHead
from guiding_nc.core.nearest import procrustes_matrix
from guiding_nc.core.polar import (
    NewtonSchulzState,
    newton_schulz_polar,
    polar_spectrum,
    polar_vjp,
    polar_vjp_newton_schulz,
)

F64 = torch.float64


def training_step_matrix(d, C, seed=0, delta=1e-3, collapsed=False):
    """``A = 2 H M + delta P`` as in a training step: ``P`` the previous solution for nearby means."""
    g = torch.Generator().manual_seed(seed)
    if collapsed:  # class means on a simplex ETF (C - 1 equal singular values), slightly perturbed
        R = gnc.random_point(d, C, generator=g, dtype=F64)
        H = gnc.mul_simplex_etf(R) + 1e-4 * torch.randn(d, C, generator=g, dtype=F64) / math.sqrt(d * C)
        H = H - H.mean(1, keepdim=True)
        H, P = H / H.norm(), R
    else:
        H0 = class_means(d, C, seed)
        P = gnc.nearest_etf(H0, None, delta)
        H = H0 + 0.05 * class_means(d, C, seed + 1)
        H = H / H.norm()
    return procrustes_matrix(H, P, delta), H, P


# ------------------------------------------------------------------- the iteration
@pytest.mark.parametrize("d,C,collapsed", [(12, 5, False), (64, 40, True), (300, 200, False), (512, 10, True)])
def test_newton_schulz_matches_the_svd_within_its_bound(d, C, collapsed):
    A = training_step_matrix(d, C, 1, collapsed=collapsed)[0]
    U_ref, s_ref, _ = gnc.polar_factor(A, "svd")
    U, run = newton_schulz_polar(A)
    assert U is not None and run.converged_at <= run.iterations
    # The stopping rule bounds the distance to the polar factor (1e-14 in float64) up to rounding.
    assert torch.linalg.matrix_norm(U - U_ref, ord=2) < 1e-12
    assert gnc.orthonormality_error(U) < 1e-13
    U32, run32 = newton_schulz_polar(A.float())
    assert gnc.orthonormality_error(U32.double()) < 1e-5
    assert (U32.double() - U_ref).abs().max() < 1e-4
    # The spectrum of U^T A is A's singular values.
    s, V = polar_spectrum(U, A)
    assert (s - s_ref).abs().max() < 1e-12 * s_ref[0]
    assert ((V * s) @ V.T - U.T @ A).abs().max() < 1e-12


def test_newton_schulz_checks_once_when_told_how_many_iterations_it_needs():
    A = training_step_matrix(200, 100, 2, collapsed=True)[0]
    _, cold = newton_schulz_polar(A, first_check=2)
    assert cold.host_reads >= 2  # 2 iterations cannot be enough: the bound asks for more
    U, warm = newton_schulz_polar(A, first_check=cold.converged_at)
    assert warm.host_reads == 1 and warm.converged_at == cold.converged_at == warm.iterations
    # A layer's memory: after one solve the next call of a similar matrix checks once.
    state = NewtonSchulzState()
    for seed in (3, 3, 3):
        polar.polar_solve(training_step_matrix(200, 100, seed, collapsed=True)[0], "newton_schulz", state=state)
    assert state.calls == 3 and state.fallbacks == 0
    assert state.host_reads <= 2 + 1 + 1  # the first call may need a second check, the others none
    assert state.metrics()["polar_ns_iterations"] == state.last_iterations


def test_newton_schulz_refuses_non_finite_input_without_an_extra_read():
    A = training_step_matrix(20, 6, 4)[0]
    A[3, 2] = float("nan")
    with pytest.raises(NonFiniteInputError, match="non-finite"):
        newton_schulz_polar(A)


def test_newton_schulz_falls_back_to_the_exact_route_and_warns_once(monkeypatch):
    # delta = 1e-9: kappa(A) ~ 1e9, far more iterations than a budget of 20 allows.
    A = training_step_matrix(30, 12, 5, delta=1e-9)[0]
    monkeypatch.setattr(polar, "NS_MAX_ITERATIONS", 20)
    monkeypatch.setattr(polar, "_NS_FALLBACK_WARNED", False)
    state = NewtonSchulzState()
    with pytest.warns(RuntimeWarning, match="Newton–Schulz polar iteration cannot reach its tolerance"):
        out = polar.polar_solve(A, "newton_schulz", state=state)
    assert out.route == "svd" and out.newton_schulz is None and state.fallbacks == 1
    assert torch.equal(out.U, gnc.polar_factor(A, "svd")[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: the second fallback is silent
        assert polar.polar_solve(A, "newton_schulz", state=state).route == "svd"
    U, run = newton_schulz_polar(A, max_iterations=20)
    assert U is None and run.converged_at is None and run.iterations <= 20


def test_newton_schulz_gives_up_on_a_rank_deficient_matrix():
    A = torch.zeros(10, 4, dtype=F64)
    A[:, :3] = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    U, run = newton_schulz_polar(A, max_iterations=24)
    assert U is None and run.iterations == 24


def test_tf32_setting_is_ignored_and_restored():
    A = training_step_matrix(40, 20, 6)[0].float()
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        U, run = newton_schulz_polar(A)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    assert U is not None and gnc.orthonormality_error(U.double()) < 1e-5


def test_polar_factor_options():
    A = training_step_matrix(24, 8, 7)[0]
    U, s, V, route = gnc.polar_factor(A, "newton_schulz", return_route=True)
    U_s, s_s, _ = gnc.polar_factor(A, "svd")
    assert route == "newton_schulz" and (U - U_s).abs().max() < 1e-12 and (s - s_s).abs().max() < 1e-12
    assert gnc.polar_route(A, "newton_schulz") == "newton_schulz" and gnc.polar_route(A) == "svd"
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        gnc.polar_factor(A, "gesvda")
    # Half precision is solved in float32 and handed back in its own dtype.
    Ub, sb, Vb = gnc.polar_factor(A.bfloat16(), "newton_schulz")
    assert Ub.dtype == sb.dtype == Vb.dtype == torch.bfloat16
    U_b = gnc.polar_factor(A.bfloat16().double(), "svd")[0]  # the factor of the rounded matrix
    assert (Ub.double() - U_b).abs().max() < 1e-2


# ----------------------------------------------------------------------- the adjoint
@pytest.mark.parametrize("d,C,collapsed", [(9, 4, False), (80, 60, True), (512, 10, True), (300, 200, False)])
def test_sync_free_adjoint_equals_the_eigenbasis_formula(d, C, collapsed):
    A = training_step_matrix(d, C, 8, collapsed=collapsed)[0]
    G = torch.randn(d, C, generator=torch.Generator().manual_seed(9), dtype=F64)
    U_s, s, V = gnc.polar_factor(A, "svd")
    ref = polar_vjp(U_s, s, V, G)
    U, run = newton_schulz_polar(A)
    g = polar_vjp_newton_schulz(U, A, G, scale=run.scale, iterations=run.converged_at)
    assert (g - ref).norm() < 1e-10 * ref.norm()
    # float32 against the float64 gradient
    U32, run32 = newton_schulz_polar(A.float())
    g32 = polar_vjp_newton_schulz(U32, A.float(), G.float(), scale=run32.scale, iterations=run32.converged_at)
    assert (g32.double() - ref).norm() < 1e-4 * ref.norm()
    # linear in G, exactly zero for G = 0
    zero = polar_vjp_newton_schulz(U, A, torch.zeros_like(G), scale=run.scale, iterations=run.converged_at)
    assert torch.equal(zero, torch.zeros_like(zero))


def test_gradcheck_through_the_newton_schulz_route():
    d, C = 7, 4
    H = class_means(d, C, 6).requires_grad_()
    P = gnc.nearest_etf(H.detach(), None)
    f = lambda h: gnc.nearest_etf(h, P, 1e-3, polar="newton_schulz")  # noqa: E731
    assert torch.autograd.gradcheck(f, (H,))
    Pr = P.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda h, p: gnc.nearest_etf(h, p, 1e-3, polar="newton_schulz"), (H, Pr), eps=2e-7, atol=1e-5
    )


def test_newton_schulz_gradient_agrees_with_svd_autograd_kkt_and_finite_differences():
    H, P, G, delta = gradient_problem()
    d, C = H.shape
    M = gnc.standard_simplex_etf(C, dtype=F64)

    def grad(fn):
        h = H.clone().requires_grad_()
        (fn(h) * G).sum().backward()
        return h.grad

    ours = grad(lambda h: gnc.nearest_etf(h, P, delta, polar="newton_schulz"))
    kkt = grad(lambda h: gnc.nearest_etf(h, P, delta, polar="newton_schulz", backward="kkt"))

    def through_svd(h):  # autograd through torch's SVD: valid here (distinct singular values)
        Y, _, Vh = torch.linalg.svd(2 * h @ M + delta * P, full_matrices=False)
        return Y @ Vh

    svd = grad(through_svd)
    with torch.no_grad():
        fd = torch.zeros_like(H)
        for i in range(d):
            for j in range(C):
                E = torch.zeros_like(H)
                E[i, j] = 1e-6
                plus = (gnc.nearest_etf(H + E, P, delta, polar="newton_schulz") * G).sum()
                minus = (gnc.nearest_etf(H - E, P, delta, polar="newton_schulz") * G).sum()
                fd[i, j] = (plus - minus) / 2e-6
    for name, g in (("kkt", kkt), ("svd autograd", svd), ("finite differences", fd)):
        assert (g - ours).norm() < 1e-6 * ours.norm(), name


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_newton_schulz_route_is_finite_at_exact_collapse(dtype):
    d, C = 16, 6
    H = gnc.simplex_etf(C, d, "random", generator=torch.Generator().manual_seed(1), dtype=F64).to(dtype)
    P = gnc.nearest_etf(H, None)
    Hr = H.clone().requires_grad_()
    U = gnc.nearest_etf(Hr, P, polar="newton_schulz")
    (U * torch.randn(d, C, generator=torch.Generator().manual_seed(2), dtype=F64).to(dtype)).sum().backward()
    assert torch.isfinite(Hr.grad).all()
    M = gnc.standard_simplex_etf(C, dtype=dtype)
    assert (U.detach() @ M - H).abs().max() < (1e-5 if dtype == torch.float32 else 1e-12)


# ------------------------------------------------------- layer and head, every device
@pytest.mark.parametrize("device", device_params())
def test_layer_on_the_newton_schulz_route_carries_its_state(device):
    d, C = 64, 20
    layer = gnc.NearestETF(d, C, polar="newton_schulz").double().to(device)
    ref = gnc.NearestETF(d, C, polar="svd").double().to(device)
    G = torch.randn(d, C, generator=torch.Generator().manual_seed(3), dtype=F64).to(device)
    for t in range(4):
        H = class_means(d, C, 30 + t).to(device).requires_grad_()
        U, U_ref = layer(H), ref(H)
        assert (U - U_ref).abs().max() < 1e-12
        (g,) = torch.autograd.grad((U * G).sum(), H)
        (g_ref,) = torch.autograd.grad((U_ref * G).sum(), H)
        assert (g - g_ref).norm() < 1e-10 * g_ref.norm()
    state = layer.polar_state
    assert state.calls == 4 and state.fallbacks == 0
    assert state.host_reads <= 4 + 2  # one read a call once the layer knows the count (the first two may take two)
    assert "polar=" in repr(layer)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_solves_half_precision_in_float32_and_keeps_a_float32_prox(device, dtype):
    d, C = 32, 6
    layer = gnc.NearestETF(d, C).to(device)
    for t in range(3):
        H = class_means(d, C, 40 + t, torch.float32).to(device=device, dtype=dtype).requires_grad_()
        U = layer(H)
        assert U.dtype == dtype and layer.prox.dtype == torch.float32
        assert gnc.orthonormality_error(layer.prox) < 1e-5  # a half-precision prox would fail the check
        U.float().sum().backward()
        assert H.grad.dtype == dtype and torch.isfinite(H.grad.float()).all()


@pytest.mark.parametrize("device", device_params())
def test_implicit_head_under_bfloat16_autocast(device):
    d, C, B = 48, 8, 64
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, d, generator=g).to(device)
    y = (torch.arange(B) % C).to(device)
    head = ImplicitETFHead(d, C).to(device).train()
    ref = ImplicitETFHead(d, C).to(device).train()
    for _ in range(3):
        f = x.bfloat16().requires_grad_()
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            logits = head(f, y)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        assert torch.isfinite(f.grad.float()).all() and f.grad.dtype == torch.bfloat16
        ref(x.bfloat16().float(), y)
    # The nearest ETF and W were computed in float32 from the same (bf16-rounded) features.
    assert head.weight.dtype == torch.float32 and head.nearest.prox.dtype == torch.float32
    assert (head.weight - ref.weight).abs().max() < 1e-5


def test_implicit_head_newton_schulz_route_on_the_cpu():
    d, C, B = 40, 10, 100
    heads = {p: ImplicitETFHead(d, C, polar=p, solve_dtype=F64).train() for p in ("newton_schulz", "svd")}
    for t in range(3):
        g = torch.Generator().manual_seed(50 + t)
        x = torch.randn(B, d, generator=g, dtype=F64)
        y = torch.arange(B) % C
        grads = {}
        for p, head in heads.items():
            f = x.clone().requires_grad_()
            torch.nn.functional.cross_entropy(head(f, y), y).backward()
            grads[p] = f.grad
        assert (grads["newton_schulz"] - grads["svd"]).norm() < 1e-10 * grads["svd"].norm()
    metrics = heads["newton_schulz"].epoch_metrics()
    assert metrics["polar_ns_fallbacks"] == 0 and metrics["polar_ns_iterations"] > 0
    assert "polar_ns_iterations" not in heads["svd"].epoch_metrics()  # nothing to report off the route
