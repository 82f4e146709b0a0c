"""Chapter 5's checks (guiding_nc.companions.gradient_checks): the appendix's formulas, the closed-form
derivative, collapse, delta -> 0 and the memory table.  Matrix-by-matrix checks of
guiding_nc.core.reference.kkt_gradient already live in test_ddn.py and the three-way gradient agreement in test_nearest.py."""
import json
import math

import torch

import guiding_nc as gnc
from guiding_nc.core.reference import kkt_gradient as ddn
from guiding_nc.companions import gradient_checks as gck
from guiding_nc.companions import paper_appendix as appendix
F64 = torch.float64


def problem(d=6, C=3, seed=0, delta=1e-3):
    H0 = gnc.random_class_means(d, C, seed=seed)
    P = gnc.nearest_etf(H0, None, delta)
    H = H0 + 0.2 * gnc.random_class_means(d, C, seed=seed + 1)
    H = H / H.norm()
    return H, gnc.nearest_etf(H, P, delta), P, delta


def test_appendix_eq20_has_the_wrong_sign_and_eq32_the_right_one():
    H, U, P, delta = problem()
    auto0 = torch.autograd.functional.jacobian(lambda u: gnc.nearest_etf_objective(u, H), U)
    eq20 = appendix.paper_objective_gradient(H, U, as_in="eq20")
    eq32 = appendix.paper_objective_gradient(H, U, as_in="eq32")
    assert torch.allclose(eq32, auto0, atol=1e-14)
    assert float((eq20 - auto0).norm() / auto0.norm()) > 0.5
    # Flipping the sign of the H M term in Eq. 20 repairs it.
    C = H.shape[1]
    Mc = appendix.centring_matrix(C)
    assert torch.allclose(eq20 - 4 / math.sqrt(C - 1) * H @ Mc, auto0, atol=1e-14)
    auto = torch.autograd.functional.jacobian(lambda u: gnc.nearest_etf_objective(u, H, P, delta), U)
    assert torch.allclose(appendix.paper_objective_gradient(H, U, prox=P, delta=delta), auto, atol=1e-14)


def test_appendix_constants_are_for_the_unnormalised_centring_matrix():
    d, C = 5, 4
    H, U, P, delta = problem(d, C)
    B_auto = torch.autograd.functional.jacobian(lambda h: ddn.objective_gradient(h, U, P, delta), H).reshape(d * C, d * C)
    assert torch.allclose(appendix.paper_mixed_hessian(d, C), B_auto, atol=1e-14)
    assert torch.allclose(appendix.paper_mixed_hessian(d, C, unit_frobenius=True) * math.sqrt(C - 1), B_auto, atol=1e-14)
    assert not torch.allclose(appendix.paper_mixed_hessian(d, C, unit_frobenius=True), B_auto, atol=1e-3)
    Mc = appendix.centring_matrix(C)
    assert torch.allclose(Mc @ Mc, Mc, atol=1e-15)  # Eq. 19 relies on idempotence
    # Eq. 21: rvec(D^2_UU f) = 2/(C-1) (I kron M~) (centring matrix), delta = 0.
    hess = torch.autograd.functional.hessian(lambda u: gnc.nearest_etf_objective(u, H), U).reshape(d * C, d * C)
    assert torch.allclose(hess, 2 / (C - 1) * torch.kron(torch.eye(d, dtype=F64), Mc), atol=1e-13)


def test_eq27_elimination_matrix_permutes_the_rows_of_A_and_prop1_does_not_care():
    H, U, P, delta = problem(7, 4)
    d, C = U.shape
    L27 = appendix.paper_elimination_matrix(C)
    assert L27.shape == (C * (C + 1) // 2, C * C)
    K = ddn.commutation_matrix(C, C)
    A27 = L27 @ (K + torch.eye(C * C, dtype=F64)) @ torch.kron(U, torch.eye(C, dtype=F64)).T
    A = ddn.constraint_jacobian(U)
    assert sorted(map(tuple, A27.tolist())) == sorted(map(tuple, A.tolist()))
    assert not torch.equal(A27, A)
    G, B = ddn.lagrangian_hessian(H, U, P, delta), ddn.mixed_hessian(H)

    def prop1(A):
        GiA, GiB = torch.linalg.solve(G, A.T), torch.linalg.solve(G, B)
        return GiA @ torch.linalg.solve(A @ GiA, A @ GiB) - GiB

    assert torch.allclose(prop1(A27), ddn.kkt_jacobian(H, U, P, delta), atol=1e-10)


def test_multipliers_are_the_entries_of_sigma_and_eq33_equals_eq49():
    H, U, P, delta = problem(6, 4)
    d, C = U.shape
    lam = gck.lagrange_multipliers(H, U, P, delta)
    assert lam.numel() == C * (C + 1) // 2
    Sigma = gnc.sym(ddn.objective_gradient(H, U, P, delta).T @ U)
    r, c = torch.tril_indices(C, C)
    assert torch.allclose(lam, torch.where(r == c, Sigma[r, c] / 2, Sigma[r, c]), atol=1e-13)
    hess = torch.autograd.functional.hessian(lambda u: gnc.nearest_etf_objective(u, H, P, delta), U).reshape(d * C, d * C)
    G33 = hess - gck.constraint_hessian_contraction(lam, d, C)
    assert torch.allclose(G33, ddn.lagrangian_hessian(H, U, P, delta), atol=1e-12)


def test_polar_jvp_matches_differences_solves_sylvester_and_is_adjoint_of_vjp():
    H, U, P, delta = problem(9, 4)
    M = gnc.standard_simplex_etf(4, dtype=F64)
    A = 2 * H @ M + delta * P
    Up, s, V = gnc.polar_factor(A)
    g = torch.Generator().manual_seed(5)
    dA, Gbar = torch.randn(9, 4, generator=g, dtype=F64), torch.randn(9, 4, generator=g, dtype=F64)
    dU = gck.polar_jvp(Up, s, V, dA)
    eps = 1e-7  # the smallest singular value is delta: the map curves on that scale
    fd = (gnc.polar_factor(A + eps * dA)[0] - gnc.polar_factor(A - eps * dA)[0]) / (2 * eps)
    assert float((dU - fd).norm() / fd.norm()) < 1e-6
    S, Om, X = Up.T @ A, Up.T @ dU, Up.T @ dA
    assert torch.allclose(Om, -Om.T, atol=1e-10)
    assert torch.allclose(Om @ S + S @ Om, X - X.T, atol=1e-10)
    assert math.isclose(float((Gbar * dU).sum()), float((gnc.polar_vjp(Up, s, V, Gbar) * dA).sum()), rel_tol=1e-10)


def test_collapse_sweep_svd_autograd_fails_closed_form_does_not():
    res = gck.collapse_sweep(10, 4, distances=[1e-12, 1e-8, 1e-2], seed=1)
    assert all(e < 1e-6 for e in res["closed_float64"])
    assert all(e < 1e-3 for e in res["closed_float32"])
    assert res["svd_float64"][0] > 1e-5 > 1e-6 > res["svd_float64"][-1]
    assert all(e > 1e-2 for e in res["svd_float32"][:2])  # NaN/inf (reported as inf) or plainly wrong
    assert res["gap"][0] < 1e-10 < res["gap"][-1]


def test_delta_sweep_g_becomes_singular_gradient_stays_finite():
    res = gck.delta_sweep(8, 4, deltas=[1e-10, 1e-6, 1e-3], seed=2)
    for delta, g_min in zip(res["delta"], res["g_min"]):
        assert 0 < g_min <= 1.01 * delta and g_min > 0.5 * delta
    norms = res["grad_H_norm"]
    assert max(norms) / min(norms) < 1.05  # a finite delta -> 0 limit
    assert res["kkt_vs_closed"][0] > res["kkt_vs_closed"][-1]


def test_dense_memory_formula_matches_the_papers_table3_overheads():
    rows = {r["name"]: r for r in gck.memory_rows()}
    for name in ("UFM-100", "UFM-200", "ResNet50-CIFAR100"):
        r = rows[name]
        # kkt_need_gb is GiB (2^30 bytes); the paper's table reads as decimal GB (10^9 bytes)
        need_bytes, paper_bytes = r["kkt_need_gb"] * 2**30, r["paper_ddn_gb"] * 1e9
        assert abs(need_bytes - paper_bytes) / paper_bytes < 0.1, r
    for name in ("UFM-1000", "ResNet50-ImageNet"):
        assert rows[name]["paper_w_gb"] is None and rows[name]["kkt_need_gb"] > 1e3


def test_memory_rows_reads_the_benchmark_json(tmp_path):
    path = tmp_path / "etf.json"
    path.write_text(json.dumps({"rows": [{"d": 512, "C": 10, "cf_peak_mb_float32": 0.3, "cf_peak_mb_float64": 0.5,
                                          "kkt_peak_mb_float64": 5.0}], "provenance": {}}))
    rows = gck.memory_rows(str(path))
    assert rows[0]["cf_mb_float64"] == 0.5 and rows[0]["kkt_mb_measured"] == 5.0
    assert rows[1]["cf_mb_float64"] is None
    assert len(rows) == len(gck.PAPER_SIZES)
