"""guiding_nc — an exact, differentiable nearest-simplex-ETF layer and the tools to reproduce
"Guiding Neural Collapse: Optimising Towards the Nearest Simplex Equiangular Tight Frame"
(Markou, Ajanthan, Gould, NeurIPS 2024).

Quick start::

    import torch, guiding_nc as gnc
    H = torch.randn(512, 10)                     # (d, C) class means
    H = H - H.mean(1, keepdim=True); H = H / H.norm()
    U = gnc.nearest_etf(H)                       # (d, C), U^T U = I, differentiable in H
    W = gnc.etf_classifier(U)                    # (C, d) classifier rows

The public API, by what it is for (each name also lives in its layer, e.g. ``guiding_nc.core.nearest``):

* the layer: :func:`nearest_etf`, :class:`NearestETF`, :func:`nearest_etf_objective`,
  :func:`polar_factor`, :func:`polar_route`, :func:`polar_vjp`;
* simplex ETFs and the Stiefel manifold: :func:`simplex_etf`, :func:`standard_simplex_etf`,
  :func:`mul_simplex_etf`, :func:`etf_classifier`, :func:`canonical_point`, :func:`random_point`,
  :func:`random_class_means`,
  :func:`projection`, :func:`retraction`, :func:`sym`, :func:`orthonormality_error`,
  :func:`euclidean_to_riemannian_gradient`, :func:`euclidean_to_riemannian_hessian`;
* the classifier heads: :func:`build_head`, :data:`METHODS`, :class:`HeadOptions`,
  :class:`LinearHead`, :class:`FixedETFHead`, :class:`ImplicitETFHead`;
* the neural-collapse metrics: :func:`neural_collapse_metrics`, :class:`ClassStatistics`,
  :func:`nc1`, :func:`nc2`, :func:`nc3`, :func:`equinorm`, :func:`cosine_margin`,
  :func:`cross_entropy_lower_bound`;
* the trainer (imported when first used): :class:`TrainConfig`, :func:`load_config`,
  :class:`Trainer`, :func:`train_run`.
"""
from .core.class_statistics import ClassStatistics
from .core.etf import (
    canonical_point,
    etf_classifier,
    euclidean_to_riemannian_gradient,
    euclidean_to_riemannian_hessian,
    mul_simplex_etf,
    orthonormality_error,
    projection,
    random_class_means,
    random_point,
    retraction,
    simplex_etf,
    standard_simplex_etf,
    sym,
)
from .core.heads import FixedETFHead, HeadOptions, ImplicitETFHead, LinearHead
from .core.methods import METHODS, build_head
from .core.metric_formulas import cosine_margin, cross_entropy_lower_bound, equinorm, nc1, nc2, nc3
from .core.metrics import neural_collapse_metrics
from .core.nearest import NearestETF, nearest_etf, nearest_etf_objective
from .core.polar import polar_factor, polar_route, polar_vjp

__version__ = "0.1.0"

# The trainer pulls in the data and model code (torchvision): imported on first use.
_LAZY = {"TrainConfig": "training.config", "load_config": "training.config", "Trainer": "training.trainer",
         "train_run": "training.trainer"}

__all__ = [
    # the layer
    "nearest_etf", "NearestETF", "nearest_etf_objective", "polar_factor", "polar_route", "polar_vjp",
    # simplex ETFs and the Stiefel manifold
    "simplex_etf", "standard_simplex_etf", "mul_simplex_etf", "etf_classifier", "canonical_point",
    "random_point", "random_class_means", "projection", "retraction", "sym", "orthonormality_error",
    "euclidean_to_riemannian_gradient", "euclidean_to_riemannian_hessian",
    # the classifier heads
    "build_head", "METHODS", "HeadOptions", "LinearHead", "FixedETFHead", "ImplicitETFHead",
    # the neural-collapse metrics
    "neural_collapse_metrics", "ClassStatistics", "nc1", "nc2", "nc3", "equinorm", "cosine_margin",
    "cross_entropy_lower_bound",
    # the trainer
    "TrainConfig", "load_config", "Trainer", "train_run",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'guiding_nc' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
