"""guiding_nc — an exact, differentiable nearest-simplex-ETF layer and the tools to reproduce
"Guiding Neural Collapse: Optimising Towards the Nearest Simplex Equiangular Tight Frame"
(Markou, Ajanthan, Gould, NeurIPS 2024).

Quick start::

    import torch, guiding_nc as gnc
    H = torch.randn(512, 10)                     # (d, C) class means
    H = H - H.mean(1, keepdim=True); H = H / H.norm()
    U = gnc.nearest_etf(H)                       # (d, C), U^T U = I, differentiable in H
    W = gnc.etf_classifier(U)                    # (C, d) classifier rows
"""
from .core.etf import (
    canonical_point,
    etf_classifier,
    euclidean_to_riemannian_gradient,
    euclidean_to_riemannian_hessian,
    orthonormality_error,
    projection,
    random_point,
    retraction,
    mul_simplex_etf,
    simplex_etf,
    standard_simplex_etf,
    sym,
)
from .core.nearest import NearestETF, nearest_etf, nearest_etf_objective
from .core.polar import polar_factor, polar_route, polar_vjp

__version__ = "0.1.0"

__all__ = [
    "canonical_point",
    "etf_classifier",
    "euclidean_to_riemannian_gradient",
    "euclidean_to_riemannian_hessian",
    "orthonormality_error",
    "projection",
    "random_point",
    "retraction",
    "mul_simplex_etf",
    "simplex_etf",
    "standard_simplex_etf",
    "sym",
    "NearestETF",
    "nearest_etf",
    "nearest_etf_objective",
    "polar_factor",
    "polar_route",
    "polar_vjp",
]
