"""Checks behind chapters 3 and 4 (guiding_nc.companions.manifold_checks): every number the pages show, asserted."""
import math

import numpy as np
import pytest
import torch

import guiding_nc as gnc
from guiding_nc.core.reference import kkt_gradient as ddn
from guiding_nc.companions import manifold_checks as mc
from guiding_nc.companions import paper_appendix as appendix
F64 = torch.float64


def setup(d=7, C=4, seed=0, delta=1e-3):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(d, C, generator=g, dtype=F64)
    H = H - H.mean(1, keepdim=True)
    H = H / H.norm()
    P = gnc.random_point(d, C, generator=g, dtype=F64)
    U = gnc.random_point(d, C, generator=g, dtype=F64)
    return H, P, U, g, delta


# ------------------------------------------------------------------ chapter 3
def test_objective_is_constant_minus_linear_on_stiefel():
    H, P, _, g, delta = setup(12, 5)
    C = 5
    M = gnc.standard_simplex_etf(C, dtype=F64)
    A = 2 * H @ M + delta * P
    const = float(H.norm() ** 2) + 1 + delta * C
    for _ in range(20):
        U = gnc.random_point(12, C, generator=g, dtype=F64)
        assert abs(float((U @ M).norm() ** 2) - 1) < 1e-13
        assert abs(float(U.norm() ** 2) - C) < 1e-13
        assert abs(float(gnc.nearest_etf_objective(U, H, P, delta)) + float((A * U).sum()) - const) < 1e-13


def test_objective_derivatives_match_autograd():
    H, P, U, g, delta = setup()
    f, egrad, ehess = mc.objective_derivatives(H, P, delta)
    Ur = U.clone().requires_grad_()
    gnc.nearest_etf_objective(Ur, H, P, delta).backward()
    assert torch.allclose(egrad(U), Ur.grad, atol=1e-14)
    Z = torch.randn(U.shape, generator=g, dtype=F64)
    hvp = torch.autograd.functional.hvp(lambda V: gnc.nearest_etf_objective(V, H, P, delta), U, Z)[1]
    assert torch.allclose(ehess(U, Z), hvp, atol=1e-13)
    assert f(U) == pytest.approx(float(gnc.nearest_etf_objective(U, H, P, delta)), abs=0)


def test_null_space_family_is_flat_and_closest_member_is_the_first_stage():
    H, P0, _, g, _ = setup(12, 5, seed=3)
    E = gnc.canonical_point(12, 5, dtype=F64)
    U0 = gnc.nearest_etf(H, P0, 0.0)
    thetas = np.linspace(-math.pi, math.pi, 37)
    family, theta_E = mc.null_space_family(U0, thetas, toward=E)
    f0 = float(gnc.nearest_etf_objective(U0, H))
    assert max(abs(float(gnc.nearest_etf_objective(U, H)) - f0) for U in family) < 1e-14
    assert max(gnc.orthonormality_error(U) for U in family) < 1e-13
    assert max(float((U - U0).norm()) for U in family) > 1.0
    member = mc.null_space_family(U0, [theta_E], toward=E)[0][0]
    _, first = gnc.nearest_etf(H, None, 1e-3, return_prox=True)
    assert torch.allclose(member, first, atol=1e-12)
    # the closest member minimises the proximal term along the circle
    prox = [float((U - E).norm()) for U in family]
    assert float((member - E).norm()) <= min(prox) + 1e-12
    # a random circle also works and is flat
    fam2, th = mc.null_space_family(U0, [0.5, 2.0], generator=g)
    assert math.isnan(th) and all(abs(float(gnc.nearest_etf_objective(U, H)) - f0) < 1e-14 for U in fam2)
    with pytest.raises(ValueError, match="d > C"):
        mc.null_space_family(gnc.canonical_point(4, 4, dtype=F64), [0.1])


def test_delta_path_is_linear_towards_the_limit():
    H, _, _, _, _ = setup(12, 5, seed=4)
    E = gnc.canonical_point(12, 5, dtype=F64)
    _, first = gnc.nearest_etf(H, None, 1e-3, return_prox=True)
    deltas = np.logspace(-8, -4, 5)
    dist = [float((gnc.nearest_etf(H, E, float(dl)) - first).norm()) for dl in deltas]
    assert mc.loglog_slope(deltas, dist) == pytest.approx(1.0, abs=0.02)


def test_von_neumann_bound_and_uniqueness_conditions():
    H, P, _, g, delta = setup(12, 5, seed=5)
    M = gnc.standard_simplex_etf(5, dtype=F64)
    A = 2 * H @ M + delta * P
    s = torch.linalg.svdvals(A)
    U = gnc.nearest_etf(H, P, delta)
    assert abs(float((A * U).sum()) - float(s.sum())) < 1e-14
    for _ in range(50):
        V = gnc.random_point(12, 5, generator=g, dtype=F64)
        assert float((A * V).sum()) <= float(s.sum()) + 1e-14
    assert float(s[-1]) > 1e-6                                # delta > 0: full column rank
    assert float(torch.linalg.svdvals(2 * H @ M)[-1]) < 1e-14  # delta = 0: rank C - 1


def test_gradient_descent_and_trust_region_never_beat_the_closed_form():
    torch.set_num_threads(1)
    H, P, _, g, delta = setup(16, 5, seed=6)
    f_star = float(gnc.nearest_etf_objective(gnc.nearest_etf(H, P, delta), H, P, delta))
    tr = mc.trust_region_history(H, P, delta, P, max_iterations=30)
    assert len(tr) == 31
    assert abs(tr[-1] - f_star) < 1e-12
    assert all(v >= f_star - 1e-14 for v in tr)
    for _ in range(3):
        start = gnc.random_point(16, 5, generator=g, dtype=F64)
        U, hist = mc.riemannian_gradient_descent(H, P, delta, start, max_iterations=300)
        assert gnc.orthonormality_error(U) < 1e-12
        assert all(b <= a + 1e-15 for a, b in zip(hist, hist[1:]))  # Armijo: monotone
        assert hist[-1] >= f_star - 1e-14
        assert hist[-1] - f_star < 1e-3


def test_gradient_descent_converges_with_a_larger_delta():
    H, P, _, g, _ = setup(10, 4, seed=7)
    delta = 0.5
    U_star = gnc.nearest_etf(H, P, delta)
    U, hist = mc.riemannian_gradient_descent(H, P, delta, P, max_iterations=2000)
    assert torch.allclose(U, U_star, atol=1e-8)


# ------------------------------------------------------------------ chapter 4
def test_constraint_gradients_match_autograd_and_labels():
    _, _, U, _, _ = setup()
    C = U.shape[1]
    J = mc.constraint_gradients(U)
    labels = mc.constraint_labels(C)
    assert J.shape == (C * (C + 1) // 2, 7, C) and len(labels) == J.shape[0]
    assert labels[0] == "j_1" and labels[C] == "j_1,2" and labels[-1] == f"j_{C - 1},{C}"
    funcs = [lambda V, s=s: 0.5 * (V[:, s] ** 2).sum() for s in range(C)]
    funcs += [lambda V, p=p, q=q: (V[:, p] * V[:, q]).sum() for p in range(C) for q in range(p + 1, C)]
    for k, j in enumerate(funcs):
        V = U.clone().requires_grad_()
        j(V).backward()
        assert torch.equal(V.grad, J[k])


@pytest.mark.parametrize("C", [2, 3, 4, 5])
def test_gram_matrix_block_structure_and_determinant(C):
    d = C + 2
    U = gnc.random_point(d, C, generator=torch.Generator().manual_seed(C), dtype=F64)
    Gram = mc.gram_matrix(mc.constraint_gradients(U))
    expected = torch.block_diag(torch.eye(C, dtype=F64), 2 * torch.eye(C * (C - 1) // 2, dtype=F64))
    assert torch.allclose(Gram, expected, atol=1e-14)
    assert float(torch.linalg.det(Gram)) == pytest.approx(2 ** (C * (C - 1) // 2), rel=1e-12)
    X = U + 0.1 * torch.randn(d, C, dtype=F64)
    assert float((mc.gram_matrix(mc.constraint_gradients(X)) - expected).abs().max()) > 1e-3


def test_proposition_2_equals_determinant_ratios_and_matrix_form():
    H, P, U, _, delta = setup()
    _, egrad, _ = mc.objective_derivatives(H, P, delta)
    G = egrad(U)
    cr = mc.lagrange_multipliers_cramer(U, G)
    p2 = mc.lagrange_multipliers_prop2(U, G)
    assert torch.allclose(cr, p2, atol=1e-14)
    Sigma = gnc.sym(G.T @ U)
    assert torch.allclose(mc.multipliers_to_matrix(p2, U.shape[1]), Sigma, atol=1e-15)
    field = mc.embedded_gradient(U, G)
    assert torch.allclose(field, G - U @ Sigma, atol=1e-14)
    assert torch.allclose(field, gnc.euclidean_to_riemannian_gradient(U, G), atol=1e-14)
    J = mc.constraint_gradients(U)
    assert float((J.reshape(len(J), -1) @ field.reshape(-1)).abs().max()) < 1e-14


def test_cramer_is_the_projection_even_off_the_manifold():
    """Eq. 37 holds at any regular point; Proposition 2 needs U on the manifold."""
    H, P, U, g, delta = setup()
    X = U + 0.1 * torch.randn(U.shape, generator=g, dtype=F64)
    G = torch.randn(U.shape, generator=g, dtype=F64)
    field = mc.embedded_gradient(X, G)
    J = mc.constraint_gradients(X)
    assert float((J.reshape(len(J), -1) @ field.reshape(-1)).abs().max()) < 1e-12
    assert float((mc.lagrange_multipliers_cramer(X, G) - mc.lagrange_multipliers_prop2(X, G)).abs().max()) > 1e-3


def test_riemannian_gradient_directional_derivative_and_solution():
    H, P, U, g, delta = setup()
    f, egrad, _ = mc.objective_derivatives(H, P, delta)
    xi = gnc.projection(U, torch.randn(U.shape, generator=g, dtype=F64))
    xi = xi / xi.norm()
    h = 1e-5
    fd = (f(gnc.retraction(U, h * xi)) - f(gnc.retraction(U, -h * xi))) / (2 * h)
    rg = gnc.euclidean_to_riemannian_gradient(U, egrad(U))
    assert fd == pytest.approx(float((rg * xi).sum()), abs=1e-9)
    U_star = gnc.nearest_etf(H, P, delta)
    assert float(gnc.euclidean_to_riemannian_gradient(U_star, egrad(U_star)).norm()) < 1e-13


def test_multipliers_at_the_solution_closed_form_and_prop1_convention():
    H, P, _, _, delta = setup()
    C = H.shape[1]
    M = gnc.standard_simplex_etf(C, dtype=F64)
    _, egrad, _ = mc.objective_derivatives(H, P, delta)
    U = gnc.nearest_etf(H, P, delta)
    _, s, V = gnc.polar_factor(2 * H @ M + delta * P)
    Sigma = gnc.sym(egrad(U).T @ U)
    assert torch.allclose(Sigma, 2 * M @ M + delta * torch.eye(C, dtype=F64) - V @ torch.diag(s) @ V.T, atol=1e-14)
    A = ddn.constraint_jacobian(U)
    lam = torch.linalg.lstsq(A.T, egrad(U).reshape(-1, 1)).solution.squeeze(1)
    rows, cols = torch.tril_indices(C, C)
    S = torch.zeros(C, C, dtype=F64)
    S[rows, cols] = torch.where(rows == cols, 2 * lam, lam)
    S = S + torch.tril(S, -1).T
    assert torch.allclose(S, Sigma, atol=1e-13)


def test_hessian_matches_eq49_is_symmetric_and_positive_at_solution():
    H, P, U, g, delta = setup()
    d, C = U.shape
    _, egrad, ehess = mc.objective_derivatives(H, P, delta)
    G = ddn.lagrangian_hessian(H, U, P, delta)
    xi = gnc.projection(U, torch.randn(d, C, generator=g, dtype=F64))
    eta = gnc.projection(U, torch.randn(d, C, generator=g, dtype=F64))
    hx = gnc.euclidean_to_riemannian_hessian(U, egrad(U), ehess(U, xi), xi)
    assert float((eta * hx).sum()) == pytest.approx(float(eta.reshape(-1) @ G @ xi.reshape(-1)), abs=1e-14)
    Hmat, basis = mc.tangent_hessian_matrix(U, egrad(U), ehess)
    assert Hmat.shape[0] == d * C - C * (C + 1) // 2
    gram = basis.reshape(len(basis), -1) @ basis.reshape(len(basis), -1).T
    assert torch.allclose(gram, torch.eye(len(basis), dtype=F64), atol=1e-13)
    assert torch.allclose(Hmat, Hmat.T, atol=1e-14)
    U_star = gnc.nearest_etf(H, P, delta)
    ev = torch.linalg.eigvalsh(gnc.sym(mc.tangent_hessian_matrix(U_star, egrad(U_star), ehess)[0]))
    assert float(ev[0]) > 0


def _taylor_slopes(seed=0):
    H, P, U, g, delta = setup(12, 5, seed=seed)
    f, egrad, ehess = mc.objective_derivatives(H, P, delta)
    ts = np.logspace(-4, 0, 25)

    def pieces(V):
        xi = gnc.projection(V, torch.randn(V.shape, generator=g, dtype=F64))
        xi = xi / xi.norm()
        return (xi, gnc.euclidean_to_riemannian_gradient(V, egrad(V)),
                gnc.euclidean_to_riemannian_hessian(V, egrad(V), ehess(V, xi), xi), gnc.projection(V, ehess(V, xi)))

    xi, gr, hx, hbad = pieces(U)
    fit = lambda r: mc.loglog_slope(ts, r, 1e-4, 1e-2)
    r1, r2 = mc.taylor_remainders(f, U, xi, ts, gr, hx, gnc.retraction)
    _, r2_bad = mc.taylor_remainders(f, U, xi, ts, gr, hbad, gnc.retraction)
    _, r2_qr = mc.taylor_remainders(f, U, xi, ts, gr, hx, mc.qr_retraction)
    Us = gnc.nearest_etf(H, P, delta)
    xs, gs, hs, _ = pieces(Us)
    _, r2_qr_star = mc.taylor_remainders(f, Us, xs, ts, gs, hs, mc.qr_retraction)
    return {k: fit(v) for k, v in dict(r1=r1, r2=r2, bad=r2_bad, qr=r2_qr, qr_star=r2_qr_star).items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_taylor_remainder_slopes(seed):
    s = _taylor_slopes(seed)
    assert s["r1"] == pytest.approx(2, abs=0.15)
    assert s["r2"] == pytest.approx(3, abs=0.15)       # polar retraction is second order
    assert s["bad"] == pytest.approx(2, abs=0.15)      # dropping -xi Sigma is caught
    assert s["qr"] == pytest.approx(2, abs=0.15)       # QR is first order off critical points
    assert s["qr_star"] == pytest.approx(3, abs=0.2)   # ... but fine at a critical point


def test_qr_retraction_is_a_retraction():
    _, _, U, g, _ = setup()
    xi = gnc.projection(U, torch.randn(U.shape, generator=g, dtype=F64))
    assert torch.allclose(mc.qr_retraction(U, 0 * xi), U, atol=1e-14)
    assert gnc.orthonormality_error(mc.qr_retraction(U, xi)) < 1e-13
    t = 1e-6
    assert torch.allclose((mc.qr_retraction(U, t * xi) - U) / t, xi, atol=1e-5)


def test_loglog_slope():
    t = np.logspace(-3, 0, 10)
    assert mc.loglog_slope(t, 5 * t**3) == pytest.approx(3)
    with pytest.raises(ValueError):
        mc.loglog_slope([1.0], [1.0])


# -------------------------------------------------- the appendix as printed
def test_paper_eq19_needs_the_centring_matrix():
    H, _, _, g, _ = setup()
    C = H.shape[1]
    X = torch.randn(H.shape, generator=g, dtype=F64)
    f = float(gnc.nearest_etf_objective(X, H))
    assert appendix.paper_eq19_objective(H, X, appendix.centring_matrix(C)) == pytest.approx(f, abs=1e-13)
    assert abs(appendix.paper_eq19_objective(H, X, gnc.standard_simplex_etf(C, dtype=F64)) - f) > 0.1


def test_paper_eq20_sign_error_and_eq32_is_right():
    H, P, U, g, delta = setup()
    C = H.shape[1]
    X = torch.randn(H.shape, generator=g, dtype=F64)
    dU = torch.randn(H.shape, generator=g, dtype=F64)
    h = 1e-6
    f6 = lambda V: float(gnc.nearest_etf_objective(V, H))
    fd = (f6(X + h * dU) - f6(X - h * dU)) / (2 * h)
    lines = appendix.paper_eq20_lines(H, X, dU, appendix.centring_matrix(C))
    assert lines["Eq. 20, line 1"] == pytest.approx(fd, abs=1e-7)
    assert lines["Eq. 32"] == pytest.approx(fd, abs=1e-7)
    assert abs(lines["Eq. 20, line 2"] - fd) > 1e-2
    Ur = U.clone().requires_grad_()
    gnc.nearest_etf_objective(Ur, H, P, delta).backward()
    rel = {k: float((v - Ur.grad).norm() / Ur.grad.norm()) for k, v in appendix.paper_gradient_candidates(H, U, P, delta).items()}
    assert rel["Eq. 32 (P)"] < 1e-14 and rel["book"] < 1e-14
    assert rel["Eq. 20 (P)"] > 0.1 and rel["Eq. 20 (M)"] > 0.1 and rel["Eq. 32 (M)"] > 0.1
