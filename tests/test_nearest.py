"""The nearest simplex ETF: optimality, gradients, robustness and bad input (guiding_nc.core.nearest)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import guiding_nc as gnc
from conftest import device_params
from guiding_nc.core.reference.kkt_gradient import kkt_jacobian
from guiding_nc.core.etf import random_class_means
from guiding_nc.core.nearest import _canonical_limit

F64 = torch.float64


def class_means(d, C, seed, dtype=F64):
    """A centred, unit-Frobenius (d, C) class-mean matrix (Eq. 5)."""
    return random_class_means(d, C, seed=seed, dtype=dtype)


def riemannian_descent(H, prox, delta, U0, steps=600, lr=0.2):
    """Plain Riemannian gradient descent with the polar retraction: an independent solver."""
    U = U0.clone()
    for _ in range(steps):
        Ur = U.clone().requires_grad_()
        gnc.nearest_etf_objective(Ur, H, prox, delta).backward()
        U = gnc.retraction(U, -lr * gnc.euclidean_to_riemannian_gradient(U, Ur.grad))
    return U


# ------------------------------------------------------------------ the solution
@settings(max_examples=15, deadline=None)
@given(C=st.integers(2, 8), extra=st.integers(0, 6), seed=st.integers(0, 10_000), delta=st.sampled_from([1e-3, 1e-1, 1.0]))
def test_solution_is_orthonormal_and_stationary(C, extra, seed, delta):
    d = C + extra
    H = class_means(d, C, seed)
    prox = gnc.random_point(d, C, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    U = gnc.nearest_etf(H, prox, delta)
    assert gnc.orthonormality_error(U) < 1e-12
    Ur = U.clone().requires_grad_()
    gnc.nearest_etf_objective(Ur, H, prox, delta).backward()
    rgrad = gnc.euclidean_to_riemannian_gradient(U, Ur.grad)
    assert float(rgrad.norm()) < 1e-12


@settings(max_examples=10, deadline=None)
@given(C=st.integers(2, 6), extra=st.integers(0, 5), seed=st.integers(0, 10_000))
def test_rotation_equivariance(C, extra, seed):
    d = C + extra
    H = class_means(d, C, seed)
    g = torch.Generator().manual_seed(seed + 7)
    P = gnc.random_point(d, C, generator=g, dtype=F64)
    R = gnc.random_point(d, d, generator=g, dtype=F64)  # a random d x d orthogonal matrix
    left = gnc.nearest_etf(R @ H, R @ P, 1e-3)
    right = R @ gnc.nearest_etf(H, P, 1e-3)
    assert torch.allclose(left, right, atol=1e-10)


def test_closed_form_is_global_minimum():
    """Never beaten by the paper's trust-region solver nor by random-restart Riemannian descent."""
    d, C, delta = 9, 4, 1e-3
    for seed in range(3):
        H = class_means(d, C, seed)
        g = torch.Generator().manual_seed(100 + seed)
        P = gnc.random_point(d, C, generator=g, dtype=F64)
        best = float(gnc.nearest_etf_objective(gnc.nearest_etf(H, P, delta), H, P, delta))
        tr = gnc.nearest_etf(H, P, delta, method="trust_region")
        assert best <= float(gnc.nearest_etf_objective(tr, H, P, delta)) + 1e-12
        for _ in range(4):
            U0 = gnc.random_point(d, C, generator=g, dtype=F64)
            U = riemannian_descent(H, P, delta, U0)
            assert best <= float(gnc.nearest_etf_objective(U, H, P, delta)) + 1e-12


def test_trust_region_matches_closed_form():
    d, C, delta = 20, 6, 1e-3
    H = class_means(d, C, 11)
    P = gnc.nearest_etf(H, None, delta)  # a realistic proximal point: the previous solution
    H2 = class_means(d, C, 12) * 0.3 + H * 0.7
    H2 = H2 / H2.norm()
    tr = gnc.nearest_etf(H2, P, delta, method="trust_region")
    cf = gnc.nearest_etf(H2, P, delta)
    assert abs(float(gnc.nearest_etf_objective(tr, H2, P, delta) - gnc.nearest_etf_objective(cf, H2, P, delta))) < 1e-9
    assert torch.allclose(tr, cf, atol=1e-6)


def test_large_delta_tends_to_prox():
    d, C = 10, 4
    H = class_means(d, C, 2)
    P = gnc.random_point(d, C, generator=torch.Generator().manual_seed(2), dtype=F64)
    dists = [float((gnc.nearest_etf(H, P, delta) - P).norm()) for delta in (1e-2, 1.0, 1e2, 1e4)]
    assert all(a > b for a, b in zip(dists, dists[1:]))
    assert dists[-1] < 1e-3


def test_prox_none_is_the_papers_two_stage_scheme():
    d, C = 12, 5
    H = class_means(d, C, 3)
    U, P = gnc.nearest_etf(H, None, 1e-3, return_prox=True)
    M = gnc.standard_simplex_etf(C, dtype=F64)
    # The first stage solves Eq. 6 (delta = 0): P attains the delta = 0 optimum ...
    E = gnc.canonical_point(d, C, dtype=F64)
    U_eps, _, _ = gnc.polar_factor(2 * H @ M + 1e-8 * E)
    assert abs(float(gnc.nearest_etf_objective(P, H) - gnc.nearest_etf_objective(U_eps, H))) < 1e-10
    # ... and is the delta -> 0 limit of the proximal solution towards the canonical direction.
    assert torch.allclose(P, U_eps, atol=1e-6)
    # The second stage starts from and is pulled towards P.
    assert torch.allclose(U, gnc.nearest_etf(H, P, 1e-3), atol=1e-14)


def test_delta_zero_has_a_family_of_minimisers():
    """M has rank C - 1: rotating U's component along M's null space leaves Eq. 6 unchanged."""
    d, C = 8, 3
    H = class_means(d, C, 4)
    P = gnc.canonical_point(d, C, dtype=F64)
    U = gnc.nearest_etf(H, P, 0.0)
    ones = torch.ones(C, 1, dtype=F64) / math.sqrt(C)
    q = U @ ones  # the image of the null direction
    other = torch.linalg.qr(torch.cat([U, torch.randn(d, 1, dtype=F64)], 1))[0][:, -1:]
    for theta in (0.3, 1.0, 2.5):
        q2 = math.cos(theta) * q + math.sin(theta) * other
        U2 = U + (q2 - q) @ ones.T
        assert gnc.orthonormality_error(U2) < 1e-12
        assert abs(float(gnc.nearest_etf_objective(U2, H) - gnc.nearest_etf_objective(U, H))) < 1e-13
        assert float((U2 - U).norm()) > 0.1


def test_canonical_limit_handles_rank_deficient_means():
    d, C = 7, 4
    H = class_means(d, C, 5)
    H[:, 1] = H[:, 0]  # two identical class means
    H = H - H.mean(1, keepdim=True)
    M = gnc.standard_simplex_etf(C, dtype=F64)
    E = gnc.canonical_point(d, C, dtype=F64)
    P = _canonical_limit(H @ M, E)
    assert gnc.orthonormality_error(P) < 1e-12
    U_eps, _, _ = gnc.polar_factor(2 * H @ M + 1e-8 * E)
    assert abs(float(gnc.nearest_etf_objective(P, H) - gnc.nearest_etf_objective(U_eps, H))) < 1e-10
    # A fully degenerate input (zero means) still gives a point of the manifold.
    assert gnc.orthonormality_error(_canonical_limit(torch.zeros(d, C, dtype=F64), E)) < 1e-12


# ------------------------------------------------------------------ the gradient
@pytest.mark.parametrize("backward", ["closed_form", "kkt"])
def test_gradcheck_float64(backward):
    d, C = 7, 4
    H = class_means(d, C, 6).requires_grad_()
    P = gnc.nearest_etf(H.detach(), None)
    assert torch.autograd.gradcheck(lambda h: gnc.nearest_etf(h, P, 1e-3, backward=backward), (H,))
    # Gradient w.r.t. the proximal point too (small eps keeps the perturbed prox on the manifold's tolerance).
    Pr = P.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda h, p: gnc.nearest_etf(h, p, 1e-3, backward=backward), (H, Pr), eps=2e-7, atol=1e-5
    )


def central_difference_grad(fn, H, eps=1e-6):
    """Central differences of the scalar ``fn`` at ``H``, entry by entry (any layout of ``H``)."""
    H = H.detach().contiguous()
    grad = torch.zeros_like(H)
    for idx in range(H.numel()):
        e = torch.zeros_like(H)
        e.view(-1)[idx] = eps
        grad.view(-1)[idx] = (fn(H + e) - fn(H - e)) / (2 * eps)
    return grad


def gradient_problem(d=8, C=5, delta=1e-2):
    """``(H, P, G, delta)``: means ``H`` near the ones whose solution is the proximal target ``P``,
    and a fixed upstream gradient ``G``, shape (d, C) each; the setting of the gradient checks."""
    H = class_means(d, C, 7)
    P = gnc.nearest_etf(H, None, delta)
    H = H + 0.05 * class_means(d, C, 8)
    G = torch.randn(d, C, generator=torch.Generator().manual_seed(9), dtype=F64)
    return H, P, G, delta


def test_three_gradients_agree():
    """Closed-form adjoint, dense KKT (Prop. 1) and central finite differences."""
    H, P, G, delta = gradient_problem()
    d, C = H.shape

    def loss(h, backward="closed_form"):
        return (gnc.nearest_etf(h, P, delta, backward=backward) * G).sum()

    grads = {}
    for backward in ("closed_form", "kkt"):
        h = H.clone().requires_grad_()
        loss(h, backward).backward()
        grads[backward] = h.grad
    with torch.no_grad():
        grads["fd"] = central_difference_grad(loss, H)
    U = gnc.nearest_etf(H, P, delta)
    grads["jacobian"] = (G.reshape(1, -1) @ kkt_jacobian(H, U, P, delta)).reshape(d, C)
    ref = grads["closed_form"]
    for name, g in grads.items():
        rel = float((g - ref).norm() / ref.norm())
        assert rel < 1e-6, (name, rel)


def test_full_jacobian_matches_autograd_jacobian():
    d, C = 6, 3
    H = class_means(d, C, 10)
    P = gnc.nearest_etf(H, None)
    U = gnc.nearest_etf(H, P, 1e-3)
    J = torch.autograd.functional.jacobian(lambda h: gnc.nearest_etf(h, P, 1e-3), H).reshape(d * C, d * C)
    assert torch.allclose(J, kkt_jacobian(H, U, P, 1e-3), atol=1e-9)


def test_trust_region_solution_uses_same_gradient():
    d, C = 7, 3
    H = class_means(d, C, 12)
    P = gnc.nearest_etf(H, None)
    grads = []
    for method in ("closed_form", "trust_region"):
        h = H.clone().requires_grad_()
        gnc.nearest_etf(h, P, 1e-3, method=method).sum().backward()
        grads.append(h.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["exact_etf", "identical_means", "rank_deficient"])
def test_near_collapse_inputs_give_finite_outputs_and_gradients(dtype, case):
    d, C = 12, 5
    g = torch.Generator().manual_seed(13)
    if case == "exact_etf":
        H = gnc.simplex_etf(C, d, "random", generator=g, dtype=F64)
    elif case == "identical_means":
        H = class_means(d, C, 13)
        H[:, 3] = H[:, 2]
        H = H - H.mean(1, keepdim=True)
        H = H / H.norm()
    else:  # all class means in a 2-D subspace
        H = torch.randn(d, 2, generator=g, dtype=F64) @ torch.randn(2, C, generator=g, dtype=F64)
        H = H - H.mean(1, keepdim=True)
        H = H / H.norm()
    H = H.to(dtype).requires_grad_()
    U = gnc.nearest_etf(H)
    assert torch.isfinite(U).all()
    assert gnc.orthonormality_error(U.detach()) < (1e-5 if dtype == torch.float32 else 1e-12)
    (U * torch.randn(d, C, generator=g, dtype=F64).to(dtype)).sum().backward()
    assert torch.isfinite(H.grad).all()
    if case == "exact_etf":
        # Collapsed means are their own nearest ETF.
        M = gnc.standard_simplex_etf(C, dtype=dtype)
        assert torch.allclose(U.detach() @ M, H.detach(), atol=1e-6 if dtype == torch.float32 else 1e-12)


def test_autograd_through_svd_fails_at_collapse_but_ours_does_not():
    """Why the custom backward exists: repeated singular values make SVD's own gradient NaN."""
    d, C = 10, 4
    H = gnc.simplex_etf(C, d, "random", generator=torch.Generator().manual_seed(0), dtype=F64).requires_grad_()
    P = gnc.nearest_etf(H.detach(), None)
    M = gnc.standard_simplex_etf(C, dtype=F64)
    Y, s, Vh = torch.linalg.svd(2 * H @ M + 1e-3 * P, full_matrices=False)
    assert float((s[0] - s[C - 2]).detach()) < 1e-12  # C - 1 (numerically) equal singular values
    (Y @ Vh).sum().backward()
    g_svd = H.grad.clone()
    H.grad = None
    gnc.nearest_etf(H, P).sum().backward()
    g_ours = H.grad.clone()
    # Ours is finite and agrees with central finite differences of the exact solution.
    assert torch.isfinite(g_ours).all()
    with torch.no_grad():
        fd = central_difference_grad(lambda h: gnc.nearest_etf(h, P).sum(), H)
    assert torch.allclose(g_ours, fd, atol=1e-6)
    # Autograd through the SVD is non-finite where LAPACK returns exactly equal singular values,
    # and far from the true gradient where it returns them a rounding error apart (both happen,
    # depending on the CPU's LAPACK kernels): wrong either way.
    wrong = (~torch.isfinite(g_svd)).any() or (g_svd - g_ours).norm() > 1e-3 * g_ours.norm()
    assert bool(wrong)


@pytest.mark.parametrize("device", device_params())
def test_backward_none_and_dtype_device_preserved(device):
    d, C = 6, 3
    H = class_means(d, C, 14, dtype=torch.float32).to(device).requires_grad_()
    U = gnc.nearest_etf(H, backward="none")
    assert not U.requires_grad and U.dtype == torch.float32 and U.device == H.device
    U = gnc.nearest_etf(H)
    assert U.requires_grad and U.dtype == torch.float32 and U.device == H.device


def test_delta_zero_refuses_to_differentiate():
    H = class_means(6, 3, 15).requires_grad_()
    P = gnc.canonical_point(6, 3, dtype=F64)
    with pytest.raises(ValueError, match="not differentiable"):
        gnc.nearest_etf(H, P, 0.0)
    assert gnc.orthonormality_error(gnc.nearest_etf(H, P, 0.0, backward="none")) < 1e-12


# -------------------------------------------------------------------- the module
@pytest.mark.parametrize("device", device_params())
def test_module_carries_the_proximal_state(device):
    d, C = 9, 4
    layer = gnc.NearestETF(d, C, delta=1e-3).double().to(device)
    H1, H2 = class_means(d, C, 16).to(device), class_means(d, C, 17).to(device)
    U1 = layer(H1)
    assert torch.allclose(U1, gnc.nearest_etf(H1, None, 1e-3))
    assert bool(layer.initialized)
    U2 = layer(H2)
    assert torch.allclose(U2, gnc.nearest_etf(H2, U1, 1e-3))
    state = layer.state_dict()
    clone = gnc.NearestETF(d, C, delta=1e-3).double().to(device)
    clone.load_state_dict(state)
    assert torch.allclose(clone(H1), layer(H1))
    layer.reset()
    assert not bool(layer.initialized)
    assert torch.allclose(layer(H1), U1)


@pytest.mark.parametrize("device", device_params())
def test_module_gradient_flows_and_rejects_bad_shapes(device):
    layer = gnc.NearestETF(8, 3).to(device)
    H = class_means(8, 3, 18, dtype=torch.float32).to(device).requires_grad_()
    layer(H).sum().backward()
    assert H.grad is not None and torch.isfinite(H.grad).all()
    with pytest.raises(ValueError, match=r"shape \(8, 3\)"):
        layer(torch.zeros(8, 4, device=device))
    with pytest.raises(ValueError, match=r"delta must be a number in \(0, "):
        gnc.NearestETF(8, 3, delta=0.0)
    with pytest.raises(ValueError, match="dim >= num_classes"):
        gnc.NearestETF(2, 3)


# ------------------------------------------------------------------- bad input
def _good():
    H = class_means(6, 3, 19)
    return H, gnc.canonical_point(6, 3, dtype=F64)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda H, P: (H[:, :1], None), "at least 2 classes"),
        (lambda H, P: (H.T, None), "d >= number of classes"),
        (lambda H, P: (H, P[:5]), "must match"),
        (lambda H, P: (H.clone().index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("nan"), dtype=F64)), None), "non-finite"),
        (lambda H, P: (H, 2 * P), "Stiefel manifold"),
        (lambda H, P: (H, P + 1e-3), "Stiefel manifold"),
        (lambda H, P: (H.unsqueeze(0), None), r"\(d, C\) matrix"),
        (lambda H, P: (H.long(), None), "floating-point"),
        (lambda H, P: (H.numpy(), None), "torch.Tensor"),
    ],
)
def test_bad_input_is_named(make, message):
    H, P = make(*_good())
    with pytest.raises((ValueError, TypeError), match=message):
        gnc.nearest_etf(H, P)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"delta": -1.0}, "delta must be"),
        ({"delta": float("inf")}, "delta must be"),
        ({"method": "newton"}, "unknown method"),
        ({"backward": "magic"}, "unknown backward"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    H, P = _good()
    with pytest.raises(ValueError, match=message):
        gnc.nearest_etf(H, P, **kwargs)


def test_check_false_skips_only_the_value_checks():
    H, P = _good()
    bad = 2 * P
    with pytest.raises(ValueError, match="Stiefel"):
        gnc.nearest_etf(H, bad)
    gnc.nearest_etf(H, bad, check=False)  # the caller vouches for its inputs
    with pytest.raises(ValueError, match="must match"):
        gnc.nearest_etf(H, P[:5], check=False)  # shape checks always run


def test_module_initialized_flag_survives_state_dict_round_trip():
    d, C = 7, 3
    layer = gnc.NearestETF(d, C).double()
    layer(class_means(d, C, 20))
    fresh = gnc.NearestETF(d, C).double()
    fresh.load_state_dict(layer.state_dict())
    H = class_means(d, C, 21)
    assert torch.allclose(fresh(H), layer(H))  # uses the stored proximal point, not a fresh start


# --------------------------------------------- forward mode and second derivatives
# Each derivative is compared with central differences in float64, to a tolerance (not bits: the
# LAPACK routines behind the solve may round differently from machine to machine).
EPS = 1e-6


def _derivative_problem(d=7, C=4, seed=30, delta=0.1, collapsed=False):
    g = torch.Generator().manual_seed(seed)
    H = gnc.simplex_etf(C, d, "random", generator=g, dtype=F64) if collapsed else class_means(d, C, seed)
    P = gnc.nearest_etf(H if collapsed else class_means(d, C, seed + 1), None, 1e-3)
    G = torch.randn(d, C, generator=g, dtype=F64)
    V = torch.randn(d, C, generator=g, dtype=F64)
    return H, P, G, V, delta


def _central(f, x, v, eps=EPS):
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


def _close(a, b, rtol=1e-6):
    scale = max(1.0, float(torch.as_tensor(b).abs().max()))
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max()) <= rtol * scale


@pytest.mark.parametrize("polar", ["svd", "gram", "newton_schulz"])
@pytest.mark.parametrize("collapsed", [False, True], ids=["random", "collapsed"])
def test_forward_mode_matches_central_differences(polar, collapsed):
    from guiding_nc.core import forward_mode

    H, P, G, V, delta = _derivative_problem(collapsed=collapsed)
    f = lambda h: (gnc.nearest_etf(h, P, delta, polar=polar) * G).sum()  # noqa: E731
    value, tangent = forward_mode.jvp(f, (H,), (V,))
    fd = _central(f, H, V)
    assert _close(value, f(H), 1e-12)
    assert _close(tangent, fd) and abs(float(tangent)) > 1e-3, (float(tangent), float(fd))  # never a silent zero


def test_forward_mode_in_the_proximal_point_and_with_dual_tensors():
    from torch.autograd import forward_ad

    from guiding_nc.core import forward_mode

    H, P, G, V, delta = _derivative_problem()
    W = torch.randn(P.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    f = lambda p: (gnc.nearest_etf(H, p, delta, check=False) * G).sum()  # noqa: E731
    assert _close(forward_mode.jvp(f, (P,), (W,))[1], _central(f, P, W))
    with forward_ad.dual_level():
        U = gnc.nearest_etf(forward_ad.make_dual(H, V), P, delta)
        tangent = forward_ad.unpack_dual(U).tangent
    assert _close((tangent * G).sum(), _central(lambda h: (gnc.nearest_etf(h, P, delta) * G).sum(), H, V))


def test_forward_and_reverse_jacobians_agree_with_differences():
    H, P, _, _, delta = _derivative_problem(d=5, C=3)
    f = lambda h: gnc.nearest_etf(h, P, delta)  # noqa: E731
    J_fwd = torch.func.jacfwd(f)(H)
    J_rev = torch.func.jacrev(f)(H)
    J_fd = torch.stack([_central(f, H, e.view_as(H)) for e in torch.eye(H.numel(), dtype=F64)], dim=-1).view_as(J_fwd)
    assert _close(J_fwd, J_rev, 1e-10) and _close(J_fwd, J_fd)


def test_the_layer_carries_a_forward_mode_tangent():
    from torch.autograd import forward_ad

    H, _, G, V, _ = _derivative_problem()
    layer = gnc.NearestETF(*H.shape, delta=0.1).double()
    layer(H)  # the proximal point is now the first solution
    P = layer.prox.clone()
    with forward_ad.dual_level():
        tangent = forward_ad.unpack_dual(layer(forward_ad.make_dual(H, V))).tangent
    assert _close((tangent * G).sum(), _central(lambda h: (gnc.nearest_etf(h, P, 0.1) * G).sum(), H, V))
    assert layer.prox.dtype == F64 and forward_ad.unpack_dual(layer.prox).tangent is None  # state holds no tangent


@pytest.mark.parametrize("collapsed", [False, True], ids=["random", "collapsed"])
def test_second_derivatives_match_central_differences(collapsed):
    H, P, G, V, delta = _derivative_problem(collapsed=collapsed)
    T = torch.randn(H.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    f = lambda h: ((gnc.nearest_etf(h, P, delta) - T) ** 2).sum() + (gnc.nearest_etf(h, P, delta) * G).sum()  # noqa

    def grad(h):
        h = h.clone().requires_grad_()
        return torch.autograd.grad(f(h), h)[0]

    h = H.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(h), h, create_graph=True)
    (hv,) = torch.autograd.grad((g * V).sum(), h)
    fd = _central(grad, H, V)
    assert _close(hv, fd, 1e-5) and float(hv.abs().max()) > 1e-3
    hess = torch.autograd.functional.hessian(f, H)
    n = H.numel()
    assert _close(hess.reshape(n, n), hess.reshape(n, n).T, 1e-8)  # symmetric
    assert _close(torch.einsum("ijkl,kl->ij", hess, V), fd, 1e-5)
    assert _close(torch.func.hessian(f)(H), hess, 1e-8)


def test_gradgradcheck_passes_in_both_inputs():
    H, P, _, _, delta = _derivative_problem(d=5, C=3)
    h, p = H.clone().requires_grad_(), P.clone().requires_grad_()
    fn = lambda a, b: gnc.nearest_etf(a, b, delta, check=False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, p))
    assert torch.autograd.gradgradcheck(fn, (h, p))


def test_derivatives_that_are_not_implemented_are_refused_not_zero():
    from torch.autograd import forward_ad

    from guiding_nc.core import forward_mode

    H, P, G, V, delta = _derivative_problem(d=6, C=3)
    kkt = lambda h: (gnc.nearest_etf(h, P, delta, backward="kkt") * G).sum()  # noqa: E731
    with pytest.raises(RuntimeError, match="forward-mode derivatives through nearest_etf\\(backward='kkt'\\)"):
        forward_mode.jvp(kkt, (H,), (V,))
    h = H.clone().requires_grad_()
    torch.autograd.grad(kkt(h), h)  # a first derivative is fine
    with pytest.raises(RuntimeError, match="second derivatives through nearest_etf\\(backward='kkt'\\)"):
        torch.autograd.grad(kkt(h), h, create_graph=True)  # a graph of it would hold the factors constant
    with pytest.raises(RuntimeError, match="second derivatives through nearest_etf\\(backward='kkt'\\)"):
        torch.autograd.functional.hessian(lambda x: ((gnc.nearest_etf(x, P, delta, backward="kkt") - G) ** 2).sum(), H)
    with pytest.raises(ValueError, match="delta = 0"):
        forward_mode.jvp(lambda x: gnc.nearest_etf(x, P, 0.0), (H,), (V,))
    with pytest.raises(RuntimeError, match="torch.func transforms"):
        forward_mode.jvp(lambda x: gnc.nearest_etf(x, P, delta, method="trust_region"), (H,), (V,))
    # torch.autograd's own forward mode reaches the trust-region solution (its closed-form derivative)
    with forward_ad.dual_level():
        U = gnc.nearest_etf(forward_ad.make_dual(H, V), P, delta, method="trust_region")
        tangent = forward_ad.unpack_dual(U).tangent
    assert _close((tangent * G).sum(), _central(lambda x: (gnc.nearest_etf(x, P, delta) * G).sum(), H, V), 1e-4)
    # backward="none" is documented as a constant: a zero tangent is what was asked for
    _, t = forward_mode.jvp(lambda x: (gnc.nearest_etf(x, P, delta, backward="none") * G).sum(), (H,), (V,))
    assert float(t) == 0.0


# ------------------------------------------------------------ the two polar routes
def _polar_problem(d, C, seed, delta):
    H = class_means(d, C, seed)
    P = gnc.nearest_etf(class_means(d, C, seed + 100), None, 1e-3)
    return 2.0 * gnc.mul_simplex_etf(H) + delta * P


@pytest.mark.parametrize("d,C,delta", [(12, 6, 0.1), (64, 40, 1e-2), (300, 200, 1e-3)])
def test_gram_and_svd_polar_routes_agree(d, C, delta):
    A = _polar_problem(d, C, 0, delta)
    U_g, s_g, V_g = gnc.polar_factor(A, "gram")
    U_s, s_s, V_s = gnc.polar_factor(A, "svd")
    assert (U_g - U_s).abs().max() < 1e-12
    assert (s_g - s_s).abs().max() < 1e-12 * s_s[0]
    assert torch.all(s_g[:-1] >= s_g[1:])  # descending, like the SVD
    # V is defined up to signs (and rotations inside repeated singular values); U^T A is not.
    S_g = V_g @ torch.diag(s_g) @ V_g.T
    assert (S_g - U_s.T @ A).abs().max() < 1e-12
    assert (U_g.T @ U_g - torch.eye(C, dtype=F64)).abs().max() < 1e-12


def test_auto_polar_route_choice():
    A64 = _polar_problem(60, 40, 1, 0.1)
    assert gnc.polar_route(A64) == "gram"
    assert gnc.polar_route(A64.float()) == "svd"  # eps32 * kappa^2 is never below the bound
    assert gnc.polar_route(A64[:, :10]) == "svd"  # few classes: the SVD is cheap and safer
    assert gnc.polar_route(A64, "svd") == "svd" and gnc.polar_route(A64[:, :10], "gram") == "gram"
    with pytest.raises(ValueError, match="unknown polar method 'qr'"):
        gnc.polar_route(A64, "qr")


def test_ill_conditioned_polar_falls_back_to_the_svd():
    # delta = 1e-7 leaves A with one singular value ~1e-7: kappa^2 ~ 1e10, far past the bound.
    A = _polar_problem(50, 40, 2, 1e-7)
    assert gnc.polar_route(A) == "gram"
    with pytest.raises(ValueError, match="too ill-conditioned for the Gram route"):
        gnc.polar_factor(A, "gram")
    U_a, _, _ = gnc.polar_factor(A, "auto")
    U_s, _, _ = gnc.polar_factor(A, "svd")
    assert torch.equal(U_a, U_s)
    assert (U_a.T @ U_a - torch.eye(40, dtype=F64)).abs().max() < 1e-13


def test_nearest_etf_polar_option():
    H = class_means(64, 40, 3)
    P = gnc.nearest_etf(class_means(64, 40, 4), None, 1e-3)
    U_g = gnc.nearest_etf(H, P, 1e-3, polar="gram")
    U_s = gnc.nearest_etf(H, P, 1e-3, polar="svd")
    assert (U_g - U_s).abs().max() < 1e-12
    f = lambda U: float(gnc.nearest_etf_objective(U, H, P, 1e-3))
    assert abs(f(U_g) - f(U_s)) < 1e-14
    with pytest.raises(ValueError, match="unknown polar method 'eig'"):
        gnc.nearest_etf(H, P, polar="eig")


def test_gradcheck_through_the_gram_route():
    d, C, delta = 9, 5, 0.2
    H = class_means(d, C, 5).requires_grad_()
    P = gnc.nearest_etf(class_means(d, C, 6), None, 1e-3).requires_grad_()
    gnc.polar_factor(2.0 * gnc.mul_simplex_etf(H.detach()) + delta * P.detach(), "gram")  # conditioned well enough
    assert torch.autograd.gradcheck(lambda h: gnc.nearest_etf(h, P.detach(), delta, polar="gram"), (H,))
    assert torch.autograd.gradcheck(  # small eps keeps the perturbed prox within the orthonormality check
        lambda h, p: gnc.nearest_etf(h, p, delta, polar="gram"), (H, P), eps=2e-7, atol=1e-5
    )
    g_gram = torch.autograd.grad((gnc.nearest_etf(H, P, delta, polar="gram") ** 3).sum(), H)[0]
    g_svd = torch.autograd.grad((gnc.nearest_etf(H, P, delta, polar="svd") ** 3).sum(), H)[0]
    assert (g_gram - g_svd).abs().max() < 1e-12 * g_svd.abs().max()


@pytest.mark.parametrize("C,delta", [(10, 1e-3), (100, 1e-3), (50, 1e-1)])
def test_condition_number_at_collapse(C, delta):
    # Book chapter 3: with H = R M and U_prox = R, kappa(A) = 1 + 2 / ((C - 1) delta).
    R = gnc.random_point(2 * C, C, generator=torch.Generator().manual_seed(C), dtype=F64)
    H = gnc.mul_simplex_etf(R)
    assert abs(float(H.norm()) - 1.0) < 1e-13
    s = torch.linalg.svdvals(2 * gnc.mul_simplex_etf(H) + delta * R)
    assert abs(float(s[-1]) - delta) < 1e-12
    assert abs(float(s[0] / s[-1]) - (1 + 2 / ((C - 1) * delta))) < 1e-8 * float(s[0] / s[-1])


def _failing_svd(fail_dtypes):
    """torch.linalg.svd that raises LAPACK's convergence error for the given dtypes."""
    real = torch.linalg.svd

    def svd(A, *args, **kwargs):
        if A.dtype in fail_dtypes:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge (simulated)")
        return real(A, *args, **kwargs)

    return svd


def _collapsed_problem(d, C, delta, seed, noise=1e-6):
    """A = 2 H M + delta P with H collapsed onto an ETF: C - 1 (nearly) equal singular values."""
    g = torch.Generator().manual_seed(seed)
    R = gnc.random_point(d, C, generator=g, dtype=F64)
    H = gnc.mul_simplex_etf(R)
    H = H / H.norm() + noise * torch.randn(d, C, generator=g, dtype=F64)
    return H, R


@pytest.mark.parametrize("fail", [{torch.float32}, {torch.float32, F64}])
def test_polar_factor_survives_an_svd_that_does_not_converge(monkeypatch, fail):
    # A long UFM-1000 run stopped on this: float32 SVD of a collapsed A raised LinAlgError.
    d, C, delta = 80, 60, 1e-3
    H, R = _collapsed_problem(d, C, delta, 11)
    A = 2.0 * gnc.mul_simplex_etf(H) + delta * R
    U_ref, s_ref, _ = gnc.polar_factor(A, "svd")
    monkeypatch.setattr(torch.linalg, "svd", _failing_svd(fail))
    with pytest.warns(RuntimeWarning, match="did not converge on the torch.float32 matrix .* of shape \\(80, 60\\)"):
        U, s, V = gnc.polar_factor(A.float(), "svd")
    assert U.dtype == s.dtype == V.dtype == torch.float32
    assert (U.double() - U_ref).abs().max() < 1e-5
    assert (s.double() - s_ref).abs().max() < 1e-5 * s_ref[0]
    assert (U.T @ U - torch.eye(C)).abs().max() < 1e-5
    # The spectrum the adjoint needs is consistent: U^T A = V diag(s) V^T.
    assert ((V * s) @ V.T - U.T @ A.float()).abs().max() < 1e-5


def test_nearest_etf_trains_through_an_svd_that_does_not_converge(monkeypatch):
    d, C, delta = 48, 30, 1e-3
    H, R = _collapsed_problem(d, C, delta, 12)
    H, R = H.float(), R.float()
    U_ref = gnc.nearest_etf(H, R, delta, polar="svd")
    Hg = H.clone().requires_grad_()
    G = torch.randn(d, C, generator=torch.Generator().manual_seed(3))
    g_ref = torch.autograd.grad((gnc.nearest_etf(Hg, R, delta, polar="svd") * G).sum(), Hg)[0]
    monkeypatch.setattr(torch.linalg, "svd", _failing_svd({torch.float32}))
    with pytest.warns(RuntimeWarning, match="retrying in float64"):
        U = gnc.nearest_etf(Hg, R, delta, polar="svd")
    g = torch.autograd.grad((U * G).sum(), Hg)[0]
    assert (U - U_ref).abs().max() < 1e-5
    assert torch.isfinite(g).all() and (g - g_ref).abs().max() < 1e-3 * g_ref.abs().max()


def test_polar_factor_catches_an_svd_that_returns_inaccurate_vectors(monkeypatch):
    # The same UFM-1000 run later met float32 SVD returning, without an error, singular vectors
    # with max |U^T U - I| = 0.26: the factor is checked and recomputed in float64.
    d, C, delta = 80, 60, 1e-3
    H, R = _collapsed_problem(d, C, delta, 13)
    A = 2.0 * gnc.mul_simplex_etf(H) + delta * R
    U_ref = gnc.polar_factor(A, "svd")[0]
    real = torch.linalg.svd

    def sloppy_svd(X, *args, **kwargs):
        Y, s, Vh = real(X, *args, **kwargs)
        if X.dtype == torch.float32:
            Y = Y.clone()
            Y[:, 1] = (Y[:, 0] + Y[:, 1]) / 2 ** 0.5  # two columns no longer orthogonal
        return Y, s, Vh

    monkeypatch.setattr(torch.linalg, "svd", sloppy_svd)
    with pytest.warns(RuntimeWarning, match="non-orthonormal singular vectors for the torch.float32 matrix"):
        U, s, V = gnc.polar_factor(A.float(), "svd")
    assert (U.T @ U - torch.eye(C)).abs().max() < 1e-5
    assert (U.double() - U_ref).abs().max() < 1e-5


def test_polar_factor_of_a_rank_deficient_matrix_names_the_problem(monkeypatch):
    A = torch.zeros(10, 4)
    A[:, :3] = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(torch.linalg, "svd", _failing_svd({torch.float32, F64}))
    with pytest.warns(RuntimeWarning), pytest.raises(torch.linalg.LinAlgError, match="rank-deficient"):
        gnc.polar_factor(A, "svd")
