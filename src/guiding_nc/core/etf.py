"""Simplex equiangular tight frames and the Stiefel-manifold operations they need.

Conventions (see the book's notation page, ``book/00_notation.md``):

* ``num_classes`` is :math:`C`, ``dim`` is the feature dimension :math:`d \\ge C`.
* Class-mean matrices ``H`` have shape ``(d, C)``: one column per class.
* ``U`` is a point of the Stiefel manifold :math:`St(d, C) = \\{U : U^\\top U = I_C\\}`, shape ``(d, C)``.
* ``M`` (``standard_simplex_etf``) is the unit-Frobenius standard simplex ETF
  :math:`\\tilde M = (I_C - \\mathbf 1 \\mathbf 1^\\top / C)/\\sqrt{C-1}`, shape ``(C, C)``.

The manifold helpers follow pymanopt's names (``projection``, ``retraction``,
``euclidean_to_riemannian_gradient``, ``euclidean_to_riemannian_hessian``) so the
book can move between the two libraries without renaming anything.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from .checks import CLASSES

__all__ = [
    "check_num_classes",
    "orthonormality_tolerance",
    "standard_simplex_etf",
    "mul_simplex_etf",
    "simplex_etf",
    "canonical_point",
    "random_point",
    "etf_classifier",
    "projection",
    "retraction",
    "euclidean_to_riemannian_gradient",
    "euclidean_to_riemannian_hessian",
    "sym",
    "orthonormality_error",
    "random_class_means",
]


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` if it is an int (not a bool) ``>= 2`` (:data:`guiding_nc.core.checks.CLASSES`)."""
    return CLASSES("num_classes", num_classes)


def _check_dim(dim: Optional[int], num_classes: int) -> int:
    if dim is None:
        return num_classes
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if dim < num_classes:
        raise ValueError(
            f"a simplex ETF of C={num_classes} classes needs feature dimension d >= C, got d={dim}"
        )
    return dim


def random_class_means(d: int, C: int, *, seed: Optional[int] = 0, generator: Optional[torch.Generator] = None,
                       dtype=torch.float64) -> Tensor:
    """Random centred, unit-Frobenius class means (Eq. 5), shape ``(d, C)``: the input the nearest
    ETF is fed, for checks and benchmarks.

    Draws one ``(d, C)`` standard normal matrix in float64 from ``generator`` (or a fresh one
    seeded with ``seed``), removes each row's mean over the classes and scales to unit Frobenius
    norm; returned in ``dtype``.
    """
    check_num_classes(C)
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    H = torch.randn(int(d), C, generator=generator, dtype=torch.float64)
    H = H - H.mean(1, keepdim=True)
    return (H / H.norm()).to(dtype)


def standard_simplex_etf(num_classes: int, *, dtype=None, device=None) -> Tensor:
    """The standard simplex ETF with unit Frobenius norm.

    Returns ``M = (I_C - 1 1^T / C) / sqrt(C - 1)``, shape ``(C, C)``.  ``M`` is
    symmetric, has rank ``C - 1`` (``M @ 1 = 0``), ``||M||_F = 1`` and
    ``M @ M = M / sqrt(C - 1)``.  Book: chapter 2, "Simplex ETFs".
    """
    C = check_num_classes(num_classes)
    eye = torch.eye(C, dtype=dtype or torch.get_default_dtype(), device=device)
    return (eye - 1.0 / C) / math.sqrt(C - 1)


def mul_simplex_etf(X: Tensor) -> Tensor:
    """``X @ M`` for the standard simplex ETF ``M``, in O(numel) instead of O(numel * C).

    ``M = (I - 1 1^T / C) / sqrt(C - 1)``, so ``X @ M`` centres each row of ``X`` and
    divides by ``sqrt(C - 1)``; ``M`` is symmetric, so this is also ``(M @ X^T)^T``.
    At ``C = 1000`` this replaces a dense ``(d, C) x (C, C)`` product (2 d C^2 flops)
    by one pass over ``X``, and the centring is exact where the dense product leaves
    round-off in the row sums.

    Parameters
    ----------
    X : Tensor, shape (..., C)

    Returns
    -------
    Tensor, shape (..., C)
    """
    C = check_num_classes(X.shape[-1])
    return (X - X.mean(dim=-1, keepdim=True)) / math.sqrt(C - 1)


def canonical_point(dim: int, num_classes: int, *, dtype=None, device=None) -> Tensor:
    """The canonical Stiefel point ``[I_C; 0]``, shape ``(d, C)``.

    This is the paper's "canonical direction" for the ETF and its default
    proximal point on the first step.
    """
    C = check_num_classes(num_classes)
    d = _check_dim(dim, C)
    return torch.eye(d, C, dtype=dtype or torch.get_default_dtype(), device=device)


def random_point(
    dim: int,
    num_classes: int,
    *,
    generator: Optional[torch.Generator] = None,
    dtype=None,
    device=None,
) -> Tensor:
    """A Haar-distributed random point of ``St(d, C)``, shape ``(d, C)``.

    QR of a Gaussian matrix with the signs of ``diag(R)`` moved into ``Q``, which
    makes the distribution exactly Haar (Mezzadri 2006) rather than biased by
    the QR sign convention.
    """
    C = check_num_classes(num_classes)
    d = _check_dim(dim, C)
    dtype = dtype or torch.get_default_dtype()
    gen_device = generator.device if generator is not None else "cpu"
    Z = torch.randn(d, C, generator=generator, dtype=torch.float64, device=gen_device)
    Q, R = torch.linalg.qr(Z)
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1.0
    return (Q * signs).to(dtype=dtype, device=device if device is not None else gen_device)


def simplex_etf(
    num_classes: int,
    dim: Optional[int] = None,
    rotation: Union[None, str, Tensor] = None,
    *,
    generator: Optional[torch.Generator] = None,
    dtype=None,
    device=None,
) -> Tensor:
    """A simplex ETF ``U @ M`` with unit Frobenius norm, shape ``(d, C)`` (Eq. 1, alpha chosen so ||.||_F = 1).

    Parameters
    ----------
    num_classes : int
        ``C >= 2``.
    dim : int, optional
        Feature dimension ``d >= C``; defaults to ``C``.
    rotation : None, "random" or Tensor of shape (d, C)
        ``None`` uses the canonical direction ``[I_C; 0]``; ``"random"`` draws a
        Haar-random Stiefel point (pass ``generator`` for reproducibility); a
        tensor must be semi-orthogonal (``U^T U = I``).

    The columns are the class vertices: each has norm ``1/sqrt(C)`` and every
    pair has cosine ``-1/(C-1)`` (Eq. 17).  Book: chapter 2.
    """
    C = check_num_classes(num_classes)
    if isinstance(rotation, Tensor):
        if rotation.ndim != 2 or rotation.shape[1] != C:
            raise ValueError(f"rotation must have shape (d, {C}), got {tuple(rotation.shape)}")
        if dim is not None and rotation.shape[0] != dim:
            raise ValueError(f"rotation has {rotation.shape[0]} rows but dim={dim}")
        d = _check_dim(rotation.shape[0], C)
        err = orthonormality_error(rotation)
        if err > orthonormality_tolerance(rotation.dtype):
            raise ValueError(f"rotation is not semi-orthogonal: max |U^T U - I| = {err:.3g}")
        U = rotation.to(dtype=dtype or rotation.dtype, device=device or rotation.device)
    elif rotation is None or rotation == "canonical":
        d = _check_dim(dim, C)
        U = canonical_point(d, C, dtype=dtype, device=device)
    elif rotation in ("random", "haar"):
        d = _check_dim(dim, C)
        U = random_point(d, C, generator=generator, dtype=dtype, device=device)
    else:
        raise ValueError(f"rotation must be None, 'canonical', 'random' or a tensor, got {rotation!r}")
    return mul_simplex_etf(U)


def etf_classifier(U: Tensor, *, check: bool = True) -> Tensor:
    """Classifier weights of the simplex ETF with direction ``U`` (Eq. 8).

    ``W = sqrt(C/(C-1)) (I - 1 1^T / C) U^T = sqrt(C) M U^T``, shape ``(C, d)``.
    Every row has unit norm and rows meet at cosine ``-1/(C-1)`` -- when ``U`` is a point of
    ``St(d, C)``, which is checked.

    Parameters
    ----------
    U : Tensor, shape (d, C), ``d >= C >= 2``, floating point, ``U^T U = I``
    check : bool
        Check that ``U^T U = I`` (to :func:`orthonormality_tolerance`); this reads one value back to
        the host, so a caller whose ``U`` is orthonormal by construction (the nearest-ETF layer's
        output inside a training step) passes ``False``.  Shape and dtype checks always run.
    """
    if not isinstance(U, Tensor):
        raise TypeError(f"U must be a torch.Tensor, got {type(U).__name__}")
    if U.ndim != 2:
        raise ValueError(f"U must be a (d, C) matrix, got shape {tuple(U.shape)}")
    if not U.is_floating_point():
        raise TypeError(f"U must be a floating-point tensor, got dtype {U.dtype}")
    C = check_num_classes(U.shape[1])
    if U.shape[0] < C:
        raise ValueError(f"U must be (d, C) with d >= C (a simplex ETF of C={C} classes needs d >= C), "
                         f"got shape {tuple(U.shape)}")
    if not isinstance(check, bool):
        raise TypeError(f"check must be true or false, got {check!r}")
    if check:
        err = orthonormality_error(U.detach())
        tol = orthonormality_tolerance(U.dtype)
        if not err <= tol:
            raise ValueError(f"U must be a point of the Stiefel manifold (U^T U = I); max |U^T U - I| = {err:.3g} > "
                             f"{tol:.1g}: pass U = nearest_etf(H), canonical_point(d, C) or random_point(d, C)")
    return (math.sqrt(C) * mul_simplex_etf(U)).T.contiguous()


def sym(X: Tensor) -> Tensor:
    """Symmetric part ``(X + X^T) / 2`` of the trailing two dimensions."""
    return 0.5 * (X + X.transpose(-1, -2))


def projection(U: Tensor, Z: Tensor) -> Tensor:
    """Orthogonal projection of ``Z`` onto the tangent space of ``St(d, C)`` at ``U``.

    ``P_U(Z) = Z - U sym(U^T Z)`` (Euclidean metric).  Shapes ``(d, C)``.
    """
    return Z - U @ sym(U.transpose(-1, -2) @ Z)


def euclidean_to_riemannian_gradient(U: Tensor, egrad: Tensor) -> Tensor:
    """Riemannian gradient of a function on ``St(d, C)`` from its Euclidean gradient.

    With the metric inherited from the embedding this is the tangent projection.
    Book: chapter 4, "Lagrange multipliers on the Stiefel manifold".
    """
    return projection(U, egrad)


def euclidean_to_riemannian_hessian(U: Tensor, egrad: Tensor, ehess: Tensor, Z: Tensor) -> Tensor:
    """Riemannian Hessian-vector product on ``St(d, C)``.

    ``Hess f(U)[Z] = P_U(D^2 f(U)[Z] - Z sym(U^T grad f(U)))``, where
    ``ehess = D^2 f(U)[Z]`` is the Euclidean Hessian applied to the tangent
    vector ``Z``.  The ``Z sym(U^T grad f)`` term is the Lagrange-multiplier
    correction ``I_d kron Sigma(U)`` of the paper's Eq. 49.  Book: chapter 4.
    """
    return projection(U, ehess - Z @ sym(U.transpose(-1, -2) @ egrad))


def retraction(U: Tensor, Z: Tensor) -> Tensor:
    """Polar retraction ``R_U(Z) = polar(U + Z)`` back onto ``St(d, C)``."""
    Y, _, Vh = torch.linalg.svd(U + Z, full_matrices=False)
    return Y @ Vh


def orthonormality_error(U: Tensor) -> float:
    """``max |U^T U - I|``: how far ``U`` (shape (d, C)) is from the Stiefel manifold."""
    C = U.shape[-1]
    gram = U.transpose(-1, -2) @ U
    return float((gram - torch.eye(C, dtype=U.dtype, device=U.device)).abs().max())


def orthonormality_tolerance(dtype) -> float:
    # Loose enough for a float32 polar factor at C = 1000, tight enough to catch a
    # matrix that was never orthonormalised.
    return max(1e-6, 1e4 * torch.finfo(dtype).eps)
