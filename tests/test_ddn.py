"""The dense matrices of Proposition 1 (guiding_nc.core.reference.kkt_gradient), each against autograd."""
import pytest
import torch

import guiding_nc as gnc
from guiding_nc.core.reference import kkt_gradient as ddn
F64 = torch.float64


def setup(d=7, C=4, seed=0, delta=1e-3):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(d, C, generator=g, dtype=F64)
    H = H - H.mean(1, keepdim=True)
    H = H / H.norm()
    P = gnc.nearest_etf(H, None, delta)
    H = H + 0.1 * torch.randn(d, C, generator=g, dtype=F64)
    U = gnc.nearest_etf(H, P, delta)
    return H, U, P, delta


@pytest.mark.parametrize("m, n", [(2, 3), (4, 4), (5, 1)])
def test_commutation_matrix(m, n):
    X = torch.randn(m, n, dtype=F64)
    vec = lambda A: A.T.reshape(-1)  # column-major vec
    K = ddn.commutation_matrix(m, n)
    assert torch.equal(K @ vec(X), vec(X.T))
    A, B = torch.randn(m, n, dtype=F64), torch.randn(3, 2, dtype=F64)
    # K_rm (A kron B) K_nq = B kron A (Eq. 25)
    assert torch.allclose(ddn.commutation_matrix(3, m) @ torch.kron(A, B) @ ddn.commutation_matrix(n, 2), torch.kron(B, A))


def test_elimination_matrix():
    n = 5
    X = torch.randn(n, n, dtype=F64)
    r, c = torch.tril_indices(n, n)
    assert torch.equal(ddn.elimination_matrix(n) @ X.reshape(-1), X[r, c])


def test_constraint_jacobian_matches_autograd():
    _, U, _, _ = setup()
    d, C = U.shape
    r, c = torch.tril_indices(C, C)
    J = torch.autograd.functional.jacobian(lambda V: (V.T @ V - torch.eye(C, dtype=F64))[r, c], U)
    assert torch.allclose(ddn.constraint_jacobian(U), J.reshape(-1, d * C), atol=1e-14)
    assert torch.allclose(ddn.constraint_jacobian(U, formula=True), J.reshape(-1, d * C), atol=1e-14)
    assert int(torch.linalg.matrix_rank(ddn.constraint_jacobian(U))) == C * (C + 1) // 2  # Prop. 1's rank condition


def test_objective_derivatives_match_autograd():
    H, U, P, delta = setup()
    d, C = U.shape
    f = lambda h, u: gnc.nearest_etf_objective(u, h, P, delta)
    g_auto = torch.autograd.functional.jacobian(lambda u: f(H, u), U)
    assert torch.allclose(ddn.objective_gradient(H, U, P, delta), g_auto, atol=1e-13)
    hess = torch.autograd.functional.hessian(lambda u: f(H, u), U).reshape(d * C, d * C)
    Sigma = gnc.sym(ddn.objective_gradient(H, U, P, delta).T @ U)
    G = ddn.lagrangian_hessian(H, U, P, delta)
    assert torch.allclose(G, hess - torch.kron(torch.eye(d, dtype=F64), Sigma), atol=1e-12)
    mixed = torch.autograd.functional.jacobian(lambda h: ddn.objective_gradient(h, U, P, delta), H).reshape(d * C, d * C)
    assert torch.allclose(ddn.mixed_hessian(H), mixed, atol=1e-13)


def test_lagrangian_hessian_is_identity_kron_polar_spectrum():
    """At the polar-factor solution G = I_d kron (U^T A), A = 2 H M + delta P: positive definite."""
    H, U, P, delta = setup()
    d, C = U.shape
    M = gnc.standard_simplex_etf(C, dtype=F64)
    S = U.T @ (2 * H @ M + delta * P)
    assert torch.allclose(S, S.T, atol=1e-13)
    assert torch.allclose(ddn.lagrangian_hessian(H, U, P, delta), torch.kron(torch.eye(d, dtype=F64), S), atol=1e-12)
    assert float(torch.linalg.eigvalsh(S).min()) > 0


def test_kkt_vjp_equals_jacobian_transpose_product():
    H, U, P, delta = setup(seed=1)
    d, C = U.shape
    G = torch.randn(d, C, dtype=F64)
    gH, _ = ddn.kkt_vjp(H, U, P, delta, G)
    assert torch.allclose(gH.reshape(-1), G.reshape(-1) @ ddn.kkt_jacobian(H, U, P, delta), atol=1e-11)


def test_memory_estimate_grows_like_d2_c2():
    assert 40e9 < ddn.kkt_memory_bytes(1024, 200) < 100e9  # the paper reports 70 GB at UFM-200
    assert ddn.kkt_memory_bytes(20, 4) < 1e6


def test_kkt_refuses_a_singular_lagrangian_hessian():
    """At delta = 0 the minimiser is not unique and G is singular: no silent wrong gradient."""
    H, _, _, _ = setup(seed=2)
    d, C = H.shape
    P = gnc.canonical_point(d, C, dtype=F64)
    U = gnc.nearest_etf(H, P, 0.0)
    with pytest.raises(ValueError, match="singular"):
        ddn.kkt_vjp(H, U, P, 0.0, torch.ones(d, C, dtype=F64))
    with pytest.raises(ValueError, match="singular"):
        ddn.kkt_jacobian(H, U, P, 0.0)
