"""Curvature tools and the four UFM parametrisations (guiding_nc.research.curvature)."""
import math

import pytest
import torch

from guiding_nc.research.curvature import (
    condition_number,
    gradient_statistics,
    hessian_extremal_eigenvalues,
    hessian_matrix,
    hvp,
    lanczos_extremal_eigenvalues,
    make_hvp,
    pl_constant_estimate,
    secant_smoothness,
    smoothness_estimate,
)
from guiding_nc.core.newton_schulz import inverse_sqrt_newton_schulz
from guiding_nc.research.reduction.objective import (
    PARAMETRISATIONS,
    class_block_labels,
    ufm_objective,
)
from guiding_nc.core.etf import canonical_point, etf_classifier, random_point
from guiding_nc.core.heads import FixedETFHead, ImplicitETFHead, LinearHead
from guiding_nc.core.nearest import nearest_etf

F64 = torch.float64
C, N_PER, D = 3, 2, 4  # N = 6 samples, H has 24 entries: every dense Hessian here is tiny


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _labels(C=C, n=N_PER):
    return class_block_labels(C, n)


def _point(seed=0, C=C, n=N_PER, d=D):
    return torch.randn(C * n * d, generator=_gen(seed), dtype=F64)


def _objective(kind, x_ref=None, C=C, n=N_PER, d=D, **kw):
    y = _labels(C, n)
    if kind.startswith("implicit") and kw.get("delta", 1e-3) > 0 and "prox" not in kw:
        kw["reference"] = x_ref if x_ref is not None else _point(0, C, n, d)
    return ufm_objective(kind, y, C, d, **kw)


# Every parametrisation with the options that change its derivatives.
CASES = [
    ("free", {}),
    ("free", {"bias": True, "weight_decay_H": 0.1, "weight_decay_W": 0.2}),
    ("free", {"normalize": False, "tau": 1.0}),
    ("fixed", {}),
    ("fixed", {"rotation": "random", "seed": 3, "normalize": False}),
    ("implicit", {"delta": 1e-3}),
    ("implicit", {"delta": 0.0}),
    ("implicit", {"delta": 1e-2, "normalize": False, "weight_decay_H": 0.05}),
    ("affine", {}),
    ("affine", {"affine_features": "normalized", "affine_scale": 2.0}),
]


def _case_point(obj, seed=1):
    return obj.initial_point(_gen(seed))


# ================================================================ generic HVP / Hessian
def test_hvp_and_hessian_on_an_analytic_function():
    g = _gen(0)
    n = 7
    A = torch.randn(n, n, generator=g, dtype=F64)
    A = A + A.T
    x = torch.randn(n, generator=g, dtype=F64)
    v = torch.randn(n, generator=g, dtype=F64)

    def f(z):
        return (z ** 3).sum() / 3 + 0.5 * z @ A @ z

    exact = torch.diag(2 * x) + A
    assert torch.allclose(hvp(f, x, v), exact @ v, atol=1e-12)
    assert torch.allclose(hessian_matrix(f, x), exact, atol=1e-12)
    op = make_hvp(f, x)
    assert torch.allclose(op(v), exact @ v, atol=1e-12)
    # A matrix-shaped variable: the Hessian is in row-major flattening order.
    X = x[:6].reshape(2, 3)
    Hx = hessian_matrix(lambda z: (z ** 3).sum() / 3, X)
    assert Hx.shape == (6, 6)
    assert torch.allclose(Hx, torch.diag(2 * X.reshape(-1)), atol=1e-12)


def test_hvp_errors():
    x = torch.zeros(3, dtype=F64)
    with pytest.raises(ValueError, match="same|must match"):
        hvp(lambda z: (z ** 2).sum(), x, torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="scalar"):
        hvp(lambda z: z ** 2, x, x)
    with pytest.raises(TypeError, match="floating"):
        hvp(lambda z: (z ** 2).sum(), torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="mode"):
        make_hvp(lambda z: (z ** 2).sum(), x, mode="finite_differences")
    with pytest.raises(ValueError, match="elements"):
        make_hvp(lambda z: (z ** 2).sum(), x, mode="double_backward")(torch.zeros(4, dtype=F64))
    assert torch.equal(make_hvp(lambda z: z.sum(), x, mode="double_backward")(x + 1), torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="max_numel"):
        hessian_matrix(lambda z: (z ** 2).sum(), torch.zeros(10, dtype=F64), max_numel=5)


@pytest.mark.parametrize("kind,kw", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_ufm_hvp_equals_exact_hessian_times_v(kind, kw):
    obj = _objective(kind, **kw)
    x = _case_point(obj)
    Hm = hessian_matrix(obj, x)
    assert Hm.shape == (obj.numel, obj.numel)
    assert torch.isfinite(Hm).all()
    assert torch.allclose(Hm, Hm.T, atol=1e-10)
    op_db = make_hvp(obj, x, mode="double_backward")  # cached reverse-over-reverse operator
    for seed in (5, 6):
        v = torch.randn(obj.numel, generator=_gen(seed), dtype=F64)
        assert torch.allclose(hvp(obj, x, v), Hm @ v, atol=1e-11, rtol=1e-10)
        assert torch.allclose(op_db(v), Hm @ v, atol=1e-11, rtol=1e-10)


# ============================================================================ Lanczos
def test_lanczos_random_symmetric_matrix():
    n = 40
    g = _gen(1)
    B = torch.randn(n, n, generator=g, dtype=F64)
    A = (B + B.T) / 2
    ev = torch.linalg.eigvalsh(A)
    for reorth in (True, False):
        r = lanczos_extremal_eigenvalues(lambda v: A @ v, n, n, generator=_gen(2), reorthogonalize=reorth)
        assert r.max == pytest.approx(float(ev[-1]), rel=1e-6)
        assert r.min == pytest.approx(float(ev[0]), rel=1e-6)
    # With full re-orthogonalisation, n steps reproduce the whole spectrum.
    r = lanczos_extremal_eigenvalues(lambda v: A @ v, n, 100, generator=_gen(2))
    assert r.iterations == n and r.invariant
    assert torch.allclose(r.ritz_values, ev, atol=1e-10)
    # Fewer steps: Ritz values lie inside the spectrum and the extremes are already close.
    r = lanczos_extremal_eigenvalues(lambda v: A @ v, n, 25, generator=_gen(3))
    assert r.iterations == 25 and r.ritz_values.shape == (25,) and r.betas.shape == (24,)
    assert float(ev[0]) - 1e-10 <= r.min and r.max <= float(ev[-1]) + 1e-10
    assert r.max == pytest.approx(float(ev[-1]), rel=5e-2)
    # The residual bound brackets a true eigenvalue.
    i = int(torch.argmax(r.ritz_values))
    assert float((ev - r.ritz_values[i]).abs().min()) <= float(r.residuals[i]) + 1e-10


def test_lanczos_example_tensor_dtype_and_invariant_subspace():
    # An operator with 3 distinct eigenvalues: the Krylov space is invariant after 3 steps.
    n = 12
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=_gen(4), dtype=F64))
    lam = torch.tensor([-2.0] * 4 + [0.5] * 4 + [3.0] * 4, dtype=F64)
    A = (Q * lam) @ Q.T
    example = torch.zeros(3, 4, dtype=torch.float32)  # vectors come in this shape and dtype
    seen = []

    def op(v):
        seen.append((tuple(v.shape), v.dtype))
        return (A @ v.reshape(-1).double()).float().reshape(3, 4)

    r = lanczos_extremal_eigenvalues(op, example, 10, generator=_gen(5))
    assert r.invariant and r.iterations == 3
    assert seen[0] == ((3, 4), torch.float32)
    assert r.max == pytest.approx(3.0, rel=1e-6) and r.min == pytest.approx(-2.0, rel=1e-6)


def test_lanczos_errors():
    with pytest.raises(ValueError, match="k_iter"):
        lanczos_extremal_eigenvalues(lambda v: v, 3, 0)
    with pytest.raises(TypeError, match="dim"):
        lanczos_extremal_eigenvalues(lambda v: v, 3.0, 2)
    with pytest.raises(ValueError, match="elements"):
        lanczos_extremal_eigenvalues(lambda v: v[:2], 3, 2)


@pytest.mark.parametrize("kind,kw", [("implicit", {"delta": 1e-3}), ("free", {"weight_decay_W": 0.1})])
def test_lanczos_on_a_small_ufm_hessian(kind, kw):
    obj = _objective(kind, **kw)
    x = _case_point(obj, seed=7)
    ev = torch.linalg.eigvalsh(hessian_matrix(obj, x))
    scale = float(ev.abs().max())
    for mode in ("forward_over_reverse", "double_backward"):
        r = hessian_extremal_eigenvalues(obj, x, obj.numel, generator=_gen(8), mode=mode)
        assert abs(r.max - float(ev[-1])) <= 1e-6 * scale
        assert abs(r.min - float(ev[0])) <= 1e-6 * scale
        assert r.max == pytest.approx(float(ev[-1]), rel=1e-6)


# ================================================================= PL, L and kappa
def test_pl_constant_exact_on_a_diagonal_quadratic():
    a = torch.tensor([0.5, 2.0, 3.0, 10.0], dtype=F64)

    def f(x):
        return 0.5 * (a * x * x).sum()

    e_min, e_max = torch.eye(4, dtype=F64)[0], torch.eye(4, dtype=F64)[3]
    pts = [2.0 * e_min, -0.3 * e_min, 1.5 * e_max] + [torch.randn(4, generator=_gen(s), dtype=F64) for s in range(5)]
    fv, g2 = gradient_statistics(f, pts)
    assert torch.allclose(fv[0], torch.tensor(0.5 * 0.5 * 4.0, dtype=F64))
    assert torch.allclose(g2[0], torch.tensor(0.25 * 4.0, dtype=F64))
    mu = pl_constant_estimate(fv, g2, 0.0)
    assert mu.dtype == F64 and mu.shape == (len(pts),)
    assert float(mu[0]) == pytest.approx(0.5, rel=1e-14)   # along e_min: exactly lambda_min
    assert float(mu[1]) == pytest.approx(0.5, rel=1e-14)
    assert float(mu[2]) == pytest.approx(10.0, rel=1e-14)  # along e_max: lambda_max
    assert bool((mu >= 0.5 - 1e-12).all() and (mu <= 10.0 + 1e-12).all())
    # Closed form x^T A^2 x / x^T A x at the random points.
    X = torch.stack(pts)
    assert torch.allclose(mu, (a * a * X * X).sum(1) / (a * X * X).sum(1), rtol=1e-12)
    # Plain numbers and lists work; points at or below f* are undefined.
    out = pl_constant_estimate([1.0, 0.0, -1.0], [4.0, 0.0, 1.0], 0.0)
    assert float(out[0]) == 2.0 and math.isnan(float(out[1])) and math.isnan(float(out[2]))
    with pytest.raises(ValueError, match="non-negative"):
        pl_constant_estimate([1.0], [-1.0], 0.0)
    with pytest.raises(ValueError, match="entries"):
        pl_constant_estimate([1.0, 2.0], [1.0], 0.0)


def test_smoothness_and_condition_number_on_a_quadratic():
    a = torch.tensor([-4.0, 0.5, 1.0, 3.0], dtype=F64)  # indefinite: L = max |a| = 4

    def f(x):
        return 0.5 * (a * x * x).sum()

    pts = [torch.randn(4, generator=_gen(s), dtype=F64) for s in range(3)]
    est = smoothness_estimate(f, pts, method="hessian", k_iter=4, generator=_gen(9))
    assert est.per_point.shape == (3,)
    assert torch.allclose(est.per_point, torch.full((3,), 4.0, dtype=F64))
    assert torch.allclose(est.lambda_max, torch.full((3,), 3.0, dtype=F64))
    assert torch.allclose(est.lambda_min, torch.full((3,), -4.0, dtype=F64))
    assert est.value == pytest.approx(4.0)
    # Secants are lower bounds, exact along an eigenvector.
    sec = smoothness_estimate(f, pts, method="secant")
    assert sec.per_point.shape == (2,) and bool((sec.per_point <= 4.0 + 1e-12).all())
    e0 = torch.eye(4, dtype=F64)[0]
    s = secant_smoothness([e0, 3 * e0], [a * e0, a * 3 * e0])
    assert float(s[0]) == pytest.approx(4.0)
    # kappa = L / mu; no PL constant -> inf.
    assert condition_number(10.0, 0.5) == pytest.approx(20.0)
    assert condition_number(1.0, 0.0) == math.inf
    k = condition_number(torch.tensor([2.0, 3.0]), torch.tensor([1.0, -1.0]))
    assert float(k[0]) == 2.0 and math.isinf(float(k[1]))
    with pytest.raises(ValueError, match="method"):
        smoothness_estimate(f, pts, method="power")


# ===================================================== implicit objective: gradients
def test_implicit_gradient_matches_nearest_etf_backward_and_finite_differences():
    C_, n_, d_ = 4, 2, 6
    x0 = _point(11, C_, n_, d_)
    ns = _objective("implicit", x0, C_, n_, d_, delta=1e-3)
    ref = _objective("implicit", x0, C_, n_, d_, delta=1e-3, implicit_backend="nearest_etf")
    x = x0 + 0.1 * _point(12, C_, n_, d_)  # away from the reference point; prox stays fixed
    assert float(ns(x)) == pytest.approx(float(ref(x)), rel=1e-12)
    # First derivative through nearest_etf's custom (closed-form polar) backward.
    xr = x.clone().requires_grad_(True)
    g_ref = torch.autograd.grad(ref(xr), xr)[0]
    g_ns = torch.func.grad(ns)(x)
    assert torch.allclose(g_ns, g_ref, atol=1e-11, rtol=1e-9)
    # Central finite differences of the exact (SVD) objective.
    eps = 1e-5
    for seed in (13, 14, 15):
        v = torch.randn(x.numel(), generator=_gen(seed), dtype=F64)
        with torch.no_grad():
            fd = (ref(x + eps * v) - ref(x - eps * v)) / (2 * eps)
        assert float(fd) == pytest.approx(float(g_ref @ v), rel=1e-7, abs=1e-9)
    # Second derivative: the Newton-Schulz HVP matches finite differences of the exact gradient.
    v = torch.randn(x.numel(), generator=_gen(16), dtype=F64)

    def g_exact(z):
        z = z.clone().requires_grad_(True)
        return torch.autograd.grad(ref(z), z)[0]

    fd_hv = (g_exact(x + eps * v) - g_exact(x - eps * v)) / (2 * eps)
    assert torch.allclose(hvp(ns, x, v), fd_hv, atol=1e-7 * float(fd_hv.abs().max()))


def test_implicit_reduction_matches_nearest_etf_and_is_smooth_at_collapse():
    x0 = _point(20)
    obj = _objective("implicit", x0, delta=1e-3)
    H = obj.unflatten(x0).H
    Ht, _ = obj.class_mean_matrix(obj.transform(H))
    U = obj.implicit_direction(Ht)
    assert torch.allclose(U, nearest_etf(Ht, obj.prox, 1e-3), atol=1e-10)
    assert obj.reduction_residual(x0) < 1e-9
    # delta = 0: the prox-free reduction gives the same classifier as any minimiser of Eq. 6.
    obj0 = _objective("implicit", delta=0.0)
    U0 = nearest_etf(Ht, canonical_point(D, C, dtype=F64), 0.0, backward="none")
    W0, _ = obj0.classifier(x0)
    assert torch.allclose(W0, etf_classifier(U0), atol=1e-10)
    # At exact neural collapse the singular values of H~ M coincide (SVD derivatives are
    # infinite there); the Newton-Schulz reduction stays finite and its HVP is exact.
    # The proximal term moves W by O(delta) (the prox comes from a different point).
    for o, tol in ((obj, 5e-3), (obj0, 1e-10)):
        xc = o.collapsed_point(scale=2.0)
        Hm = hessian_matrix(o, xc)
        assert torch.isfinite(Hm).all()
        v = torch.randn(o.numel, generator=_gen(21), dtype=F64)
        assert torch.allclose(hvp(o, xc, v), Hm @ v, atol=1e-10)
        Wc, bc = o.classifier(xc)
        assert torch.allclose(Wc, etf_classifier(canonical_point(D, C, dtype=F64)), atol=tol)
        assert torch.allclose(bc, torch.zeros(C, dtype=F64), atol=1e-12)


def test_inverse_sqrt_newton_schulz():
    B = torch.randn(5, 5, generator=_gen(22), dtype=F64)
    S = B @ B.T + 1e-3 * torch.eye(5, dtype=F64)
    S = S / torch.linalg.matrix_norm(S, 2)
    Z = inverse_sqrt_newton_schulz(S, 40)
    assert torch.allclose(Z @ S @ Z, torch.eye(5, dtype=F64), atol=1e-10)


# ========================================================= objectives: direct check
def _direct_loss(Hf, W, b, y, tau):
    """Per-sample loop: mean of -log softmax(tau (W h_i + b))[y_i]."""
    total = 0.0
    for i in range(Hf.shape[0]):
        z = tau * (W @ Hf[i] + (0 if b is None else b))
        total += float(-(z[y[i]] - torch.log(torch.exp(z).sum())))
    return total / Hf.shape[0]


def _manual_implicit(Hf, y, C_, prox, delta):
    means = torch.stack([Hf[y == c].mean(0) for c in range(C_)], 1)  # (d, C)
    hg = Hf.mean(0)
    Ht = means - hg[:, None]
    Ht = Ht / Ht.norm()
    W = etf_classifier(nearest_etf(Ht, prox, delta))
    return W, -(W @ hg)


@pytest.mark.parametrize("normalize", [True, False])
def test_objectives_agree_with_a_direct_per_sample_computation(normalize):
    y = _labels()
    tau = 3.0
    x = _point(30)
    H = x.reshape(-1, D)
    Hf = H / H.norm(dim=1, keepdim=True) if normalize else H
    W_free = torch.randn(C, D, generator=_gen(31), dtype=F64)
    b_free = torch.randn(C, generator=_gen(32), dtype=F64)
    U_rand = random_point(D, C, generator=_gen(33), dtype=F64)
    prox = random_point(D, C, generator=_gen(34), dtype=F64)
    Pi = torch.stack([H[y == c].mean(0) - H.mean(0) for c in range(C)])  # (C, d) centred class means

    checks = [
        (ufm_objective("free", y, C, D, tau=tau, normalize=normalize, bias=True),
         torch.cat([x, W_free.reshape(-1), b_free]), W_free, b_free),
        (ufm_objective("fixed", y, C, D, tau=tau, normalize=normalize, rotation=U_rand),
         x, etf_classifier(U_rand), None),
        (ufm_objective("fixed", y, C, D, tau=tau, normalize=normalize),
         x, etf_classifier(canonical_point(D, C, dtype=F64)), None),
        (ufm_objective("affine", y, C, D, tau=tau, normalize=normalize, affine_scale=0.7),
         x, 0.7 * Pi, None),
        (ufm_objective("implicit", y, C, D, tau=tau, normalize=normalize, prox=prox, delta=1e-2),
         x, *_manual_implicit(Hf, y, C, prox, 1e-2)),
    ]
    for obj, xx, W, b in checks:
        expected = _direct_loss(Hf, W, b, y, tau)
        assert float(obj(xx)) == pytest.approx(expected, rel=1e-10), obj
        assert float(obj.per_sample_losses(xx).mean()) == pytest.approx(expected, rel=1e-10)
        Wo, bo = obj.classifier(xx)
        assert torch.allclose(Wo, W, atol=1e-10)
    # Ridge terms.
    obj = ufm_objective("free", y, C, D, tau=tau, normalize=normalize, weight_decay_H=0.3, weight_decay_W=0.2)
    xx = torch.cat([x, W_free.reshape(-1)])
    expected = _direct_loss(Hf, W_free, None, y, tau) + 0.15 * float((H ** 2).sum()) + 0.1 * float((W_free ** 2).sum())
    assert float(obj(xx)) == pytest.approx(expected, rel=1e-10)


def test_objectives_match_the_project_heads():
    y = _labels()
    x = _point(40)
    H = x.reshape(-1, D)
    # Fixed ETF head.
    head = FixedETFHead(D, C, tau=5.0).double()
    assert torch.allclose(ufm_objective("fixed", y, C, D).logits(x), head(H), atol=1e-6)  # W buffer is float32
    # Implicit head: its first training step at these features uses exactly the reference prox.
    ih = ImplicitETFHead(D, C, tau=5.0, solve_dtype=F64).train()
    obj = ufm_objective("implicit", y, C, D, reference=x)
    assert torch.allclose(obj.logits(x), ih(H, y), atol=1e-9)
    # Learned linear head (unit-norm rows) as the free parametrisation.
    lh = LinearHead(D, C, tau=5.0, normalize_weight=True).double()
    W = lh.linear.weight.detach()
    free = ufm_objective("free", y, C, D)
    assert torch.allclose(free.logits(torch.cat([x, W.reshape(-1)])), lh(H), atol=1e-12)


# ====================================================================== affine reduction
def test_affine_reduction_is_affine_and_its_hessian_is_the_compressed_free_hessian():
    y = _labels()
    aff = ufm_objective("affine", y, C, D, weight_decay_W=0.1)
    free = ufm_objective("free", y, C, D, weight_decay_W=0.1)
    x1, x2 = _point(50), _point(51)
    W1, W2 = aff.classifier(x1)[0], aff.classifier(x2)[0]
    assert torch.allclose(aff.classifier(2.0 * x1 - 3.0 * x2)[0], 2.0 * W1 - 3.0 * W2, atol=1e-12)
    # F(H) = f(H, Psi(H)).
    assert float(aff(x1)) == pytest.approx(float(free(torch.cat([x1, W1.reshape(-1)]))), rel=1e-13)
    # Constant Jacobian J = [I; D Psi] and no correction term: ∇²F = Jᵀ ∇²f J.
    n = x1.numel()
    J = torch.cat([torch.eye(n, dtype=F64), torch.func.jacfwd(lambda z: aff.classifier(z)[0].reshape(-1))(x1)])
    Hf = hessian_matrix(free, torch.cat([x1, W1.reshape(-1)]))
    assert torch.allclose(hessian_matrix(aff, x1), J.T @ Hf @ J, atol=1e-10)
    # At neural collapse with unit-norm features it coincides with the implicit ETF classifier.
    xc = aff.collapsed_point()
    imp = ufm_objective("implicit", y, C, D, delta=0.0)
    assert torch.allclose(aff.classifier(xc)[0], imp.classifier(xc)[0], atol=1e-10)


# ============================================================================== errors
def test_objective_errors():
    y = _labels()
    with pytest.raises(ValueError, match="parametrisation"):
        ufm_objective("learned", y, C, D)
    with pytest.raises(ValueError, match="balanced"):
        ufm_objective("fixed", torch.tensor([0, 0, 1, 2]), C, D)
    with pytest.raises(ValueError, match="d >= C"):
        ufm_objective("fixed", y, C, 2)
    with pytest.raises(ValueError, match="prox"):
        ufm_objective("implicit", y, C, D, delta=1e-3)
    with pytest.raises(ValueError, match="St\\(d, C\\)"):
        ufm_objective("implicit", y, C, D, prox=torch.ones(D, C, dtype=F64))
    with pytest.raises(ValueError, match="bias"):
        ufm_objective("fixed", y, C, D, bias=True)
    with pytest.raises(ValueError, match="delta > 0"):
        ufm_objective("implicit", y, C, D, delta=0.0, implicit_backend="nearest_etf")
    obj = ufm_objective("free", y, C, D)
    with pytest.raises(ValueError, match="flat tensor of 36"):
        obj(torch.zeros(24, dtype=F64))
    assert set(PARAMETRISATIONS) == {"free", "fixed", "implicit", "affine"}


# ============================================================ reduction-mapping analysis
from guiding_nc.research.reduction.analysis import (  # noqa: E402
    base_objective,
    curvature_at,
    generalized_eigenvalues,
    lift,
    matched_weight_decay,
    morse_bott_constant,
    optimal_value,
    pullback_metric,
    reduction_jacobian,
    reduction_map,
)
from guiding_nc.research.reduction.descent import gradient_descent  # noqa: E402


def _matched(kind, C=C, n=N_PER, d=D):
    y = _labels(C, n)
    kw = {"bias": True} if kind == "free" else ({"delta": 0.0} if kind == "implicit" else {})
    return ufm_objective(kind, y, C, d, weight_decay_W=matched_weight_decay(C, 5.0), **kw)


def test_matched_weight_decay_makes_the_collapsed_point_a_critical_point_of_every_parametrisation():
    lam = matched_weight_decay(C, 5.0)
    a = 5.0 * C / (C - 1)
    g = lambda r: math.log(1 + (C - 1) * math.exp(-a * r)) + lam * C * r * r / 2
    h = 1e-5
    assert (g(1 + h) - g(1 - h)) / (2 * h) == pytest.approx(0.0, abs=1e-9)
    values = []
    for kind in PARAMETRISATIONS:
        obj = _matched(kind)
        xc = obj.collapsed_point()
        assert float(torch.func.grad(obj)(xc).norm()) < 1e-12
        base = base_objective(obj)
        assert float(torch.func.grad(base)(lift(obj, xc)).norm()) < 1e-12
        values.append(optimal_value(obj))
    assert max(values) - min(values) < 1e-14
    with pytest.raises(ValueError, match="num_classes"):
        matched_weight_decay(1)
    with pytest.raises(ValueError, match="tau"):
        matched_weight_decay(3, tau=-1.0)


@pytest.mark.parametrize("kind", PARAMETRISATIONS)
def test_lift_reproduces_the_reduced_objective(kind):
    obj = _matched(kind)
    x = obj.initial_point(_gen(3))
    base = base_objective(obj)
    assert base.parametrisation == "free" and base.bias
    xb = lift(obj, x)
    assert xb.shape == (base.numel,)
    assert float(base(xb)) == pytest.approx(float(obj(x)), rel=1e-13)
    if kind == "free":
        assert base is obj
        with pytest.raises(ValueError, match="no reduction"):
            reduction_map(obj, x)
        assert torch.equal(pullback_metric(obj, x), torch.eye(obj.numel, dtype=F64))


def test_reduction_jacobian_affine_fixed_and_implicit():
    y = _labels()
    aff, fix, imp = _matched("affine"), _matched("fixed"), _matched("implicit")
    x = _point(7)
    D = reduction_jacobian(aff, x)
    n = N_PER
    Pi = (torch.eye(C, dtype=F64) - 1.0 / C) @ torch.nn.functional.one_hot(y, C).to(F64).T / n
    expected = torch.cat([torch.kron(Pi, torch.eye(D_dim := D.shape[1] // (C * n), dtype=F64)),
                          torch.zeros(C, C * n * D_dim, dtype=F64)])
    assert torch.allclose(D, expected, atol=1e-13)
    assert torch.equal(reduction_jacobian(fix, x), torch.zeros_like(D))
    # Implicit: the Jacobian agrees with central differences.
    Di = reduction_jacobian(imp, x)
    v = torch.randn(x.numel(), generator=_gen(8), dtype=F64)
    eps = 1e-6
    fd = (reduction_map(imp, x + eps * v) - reduction_map(imp, x - eps * v)) / (2 * eps)
    assert torch.allclose(Di @ v, fd, atol=1e-7)
    G = pullback_metric(imp, x)
    assert torch.allclose(G, torch.eye(x.numel(), dtype=F64) + Di.T @ Di)
    with pytest.raises(ValueError, match="max_numel"):
        reduction_jacobian(imp, x, max_numel=3)
    with pytest.raises(ValueError, match="UFMObjective"):
        lift("not an objective", x)


def test_generalized_eigenvalues_and_errors():
    g = _gen(11)
    A = torch.randn(6, 6, generator=g, dtype=F64)
    A = A + A.T
    B = torch.randn(6, 6, generator=g, dtype=F64)
    G = torch.eye(6, dtype=F64) + B @ B.T
    w, V = torch.linalg.eigh(G)
    Gm12 = V @ torch.diag(w.rsqrt()) @ V.T
    assert torch.allclose(generalized_eigenvalues(A, G), torch.linalg.eigvalsh(Gm12 @ A @ Gm12), atol=1e-11)
    assert torch.allclose(generalized_eigenvalues(A, torch.eye(6, dtype=F64)), torch.linalg.eigvalsh(A), atol=1e-12)
    with pytest.raises(ValueError, match="positive definite"):
        generalized_eigenvalues(A, -G)
    with pytest.raises(ValueError, match="square"):
        generalized_eigenvalues(A, G[:5, :5])


def test_morse_bott_constant_splits_kernel_and_normal_curvature():
    mb = morse_bott_constant([0.0, 1e-17, -1e-16, 0.5, 2.0, 3.0])
    assert mb["kernel_dim"] == 3
    assert mb["constant"] == pytest.approx(0.5)
    assert mb["next_above_kernel"] == pytest.approx(2.0)
    assert mb["max"] == pytest.approx(3.0)
    assert math.isnan(morse_bott_constant([0.0, 0.0, 0.0])["constant"])
    with pytest.raises(ValueError, match="empty"):
        morse_bott_constant([])
    with pytest.raises(ValueError, match="rel_tol"):
        morse_bott_constant([1.0], rel_tol=2.0)


def test_gradient_descent_on_a_quadratic_and_errors():
    a = torch.tensor([1.0, 4.0], dtype=F64)
    f = lambda z: 0.5 * (a * z * z).sum()
    x0 = torch.tensor([1.0, 1.0], dtype=F64)
    r = gradient_descent(f, x0, 0.25, 5, record_every=2)
    assert r.record_steps == [0, 2, 4, 5]
    expected = x0 * (1 - 0.25 * a) ** 5
    assert torch.allclose(r.points[-1], expected, atol=1e-15)
    assert float(r.values[-1]) == pytest.approx(float(f(expected)), rel=1e-12)
    assert r.lr == [0.25] * 5 and not r.diverged
    # A callable step rule, evaluated at the recorded points (here: 1 / lambda_max = 1/4).
    calls = []
    r2 = gradient_descent(f, x0, lambda x: calls.append(1) or 0.25, 5, record_every=2)
    assert len(calls) == 4 and torch.allclose(r2.points[-1], expected)
    with pytest.raises(ValueError, match="lr"):
        gradient_descent(f, x0, 0.0, 3)
    with pytest.raises(ValueError, match="steps"):
        gradient_descent(f, x0, 0.1, -1)
    with pytest.raises(ValueError, match="record_every"):
        gradient_descent(f, x0, 0.1, 3, record_every=0)
    with pytest.raises(ValueError, match="lr"):
        gradient_descent(f, x0, lambda x: float("nan"), 3)
    assert gradient_descent(lambda z: (z ** 2).sum(), x0, 1e200, 3).diverged


@pytest.mark.parametrize("kind", PARAMETRISATIONS)
def test_curvature_at_exact_matches_lanczos_and_the_affine_theory(kind):
    obj = _matched(kind)
    x = obj.initial_point(_gen(4))
    fs = optimal_value(obj)
    ex = curvature_at(obj, x, fs, method="exact")
    lz = curvature_at(obj, x, fs, method="lanczos", k_iter=obj.numel)
    for key in ("lambda_max", "lambda_min", "base_lambda_max", "base_lambda_min"):
        assert lz[key] == pytest.approx(ex[key], rel=1e-8, abs=1e-10)
    assert ex["pl"] == pytest.approx(ex["grad_norm_sq"] / (2 * (ex["value"] - fs)))
    assert ex["kappa"] == pytest.approx(ex["lambda_max"] / ex["pl"])
    # In the pullback metric the reduced gradient can only lose length: ∇Fᵀ G⁻¹ ∇F <= ||∇f||².
    assert ex["pb_pl"] <= ex["base_pl"] * (1 + 1e-12)
    if kind == "free":
        assert "correction_norm" not in ex
        assert ex["base_lambda_max"] == ex["lambda_max"]
    elif kind in ("fixed", "affine"):
        assert ex["correction_norm"] < 1e-12  # affine maps: ∇²F = Jᵀ ∇²f J exactly
        assert ex["pb_lambda_max"] <= ex["base_lambda_max"] * (1 + 1e-12)  # Rayleigh quotient on a subspace
    else:
        assert ex["correction_norm"] > 1e-6
    with pytest.raises(ValueError, match="method"):
        curvature_at(obj, x, fs, method="power")


def test_forward_mode_entries_raise_no_warning_of_torchs_internals():
    """In a fresh process (torch loads its forward-mode decompositions once per process), the
    package's forward-mode entries run with FutureWarning as an error: torch's own
    ``torch.jit.script`` deprecation notice, which names the local installation, never shows."""
    import subprocess
    import sys

    for call in ("curvature.hessian_matrix(lambda x: (x ** 3).sum(), torch.ones(3, dtype=torch.float64))",
                 "curvature.hvp(lambda x: (x ** 3).sum(), torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))"):
        code = f"import torch\nfrom guiding_nc.research import curvature\n{call}\n"
        run = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-600:]
