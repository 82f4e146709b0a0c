"""Simplex ETFs and the Stiefel-manifold helpers (guiding_nc.core.etf)."""
import math

import pytest
import torch

import guiding_nc as gnc

F64 = torch.float64


@pytest.mark.parametrize("C", [2, 3, 10, 37])
def test_standard_simplex_etf_identities(C):
    M = gnc.standard_simplex_etf(C, dtype=F64)
    ones = torch.ones(C, dtype=F64)
    assert torch.allclose(M, M.T)
    assert math.isclose(float(torch.linalg.matrix_norm(M)), 1.0, rel_tol=1e-12)
    assert torch.allclose(M @ ones, torch.zeros(C, dtype=F64), atol=1e-14)
    assert int(torch.linalg.matrix_rank(M)) == C - 1
    assert torch.allclose(M @ M, M / math.sqrt(C - 1), atol=1e-14)


@pytest.mark.parametrize("rotation", [None, "random"])
def test_simplex_etf_is_equiangular(rotation):
    C, d = 7, 19
    g = torch.Generator().manual_seed(0)
    E = gnc.simplex_etf(C, d, rotation, generator=g, dtype=F64)
    assert E.shape == (d, C)
    assert math.isclose(float(E.norm()), 1.0, rel_tol=1e-12)
    cos = torch.nn.functional.normalize(E, dim=0).T @ torch.nn.functional.normalize(E, dim=0)
    expected = torch.full((C, C), -1.0 / (C - 1), dtype=F64)
    expected.fill_diagonal_(1.0)
    assert torch.allclose(cos, expected, atol=1e-12)  # Eq. 17
    assert torch.allclose(E.sum(1), torch.zeros(d, dtype=F64), atol=1e-12)


def test_simplex_etf_with_given_rotation_and_classifier_rows():
    C, d = 5, 9
    U = gnc.random_point(d, C, generator=torch.Generator().manual_seed(1), dtype=F64)
    E = gnc.simplex_etf(C, d, U)
    assert torch.allclose(E, U @ gnc.standard_simplex_etf(C, dtype=F64))
    W = gnc.etf_classifier(U)
    assert W.shape == (C, d)
    assert torch.allclose(W.norm(dim=1), torch.ones(C, dtype=F64), atol=1e-12)
    # W is the transposed ETF up to scale sqrt(C): the classifier and the means are self-dual.
    assert torch.allclose(W, math.sqrt(C) * E.T, atol=1e-12)


def test_random_point_is_haar_and_reproducible():
    d, C = 6, 3
    a = gnc.random_point(d, C, generator=torch.Generator().manual_seed(3), dtype=F64)
    b = gnc.random_point(d, C, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert torch.equal(a, b)
    assert gnc.orthonormality_error(a) < 1e-14
    # Haar: the mean of U over many draws is zero (QR without sign fix is biased).
    g = torch.Generator().manual_seed(4)
    mean = torch.stack([gnc.random_point(d, C, generator=g, dtype=F64) for _ in range(2000)]).mean(0)
    assert float(mean.abs().max()) < 0.06


def test_manifold_helpers():
    d, C = 8, 4
    g = torch.Generator().manual_seed(5)
    U = gnc.random_point(d, C, generator=g, dtype=F64)
    Z = torch.randn(d, C, generator=g, dtype=F64)
    T = gnc.projection(U, Z)
    assert torch.allclose(gnc.sym(U.T @ T), torch.zeros(C, C, dtype=F64), atol=1e-13)  # tangent
    assert torch.allclose(gnc.projection(U, T), T, atol=1e-13)  # idempotent
    R = gnc.retraction(U, 0.1 * T)
    assert gnc.orthonormality_error(R) < 1e-13
    assert torch.allclose(gnc.retraction(U, torch.zeros_like(U)), U, atol=1e-13)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: gnc.standard_simplex_etf(1), "at least 2 classes"),
        (lambda: gnc.simplex_etf(5, 3), "d >= C"),
        (lambda: gnc.simplex_etf(3, 4, "spiral"), "rotation must be"),
        (lambda: gnc.simplex_etf(3, 4, torch.ones(4, 3)), "not semi-orthogonal"),
        (lambda: gnc.simplex_etf(3, 5, torch.eye(4, 3)), "rows but dim"),
        (lambda: gnc.canonical_point(4, 2.5), "num_classes must be an int"),
        (lambda: gnc.etf_classifier(torch.ones(3)), "(d, C) matrix"),
    ],
)
def test_bad_input_messages(call, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


@pytest.mark.parametrize("shape", [(7, 3), (50, 12), (2, 4, 5)])
def test_mul_simplex_etf_is_the_dense_product(shape):
    X = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    M = gnc.standard_simplex_etf(shape[-1], dtype=F64)
    assert torch.allclose(gnc.mul_simplex_etf(X), X @ M, atol=1e-14)
    # The classifier (Eq. 8) built on it keeps its defining properties.
    if len(shape) == 2:
        U = gnc.random_point(shape[0], shape[1], generator=torch.Generator().manual_seed(1), dtype=F64)
        W = gnc.etf_classifier(U)
        assert W.is_contiguous() and torch.allclose(W, math.sqrt(shape[1]) * M @ U.T, atol=1e-14)
    with pytest.raises(ValueError, match="at least 2 classes"):
        gnc.mul_simplex_etf(torch.zeros(5, 1))
