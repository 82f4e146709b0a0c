"""Shared helpers of the feature extractors in :mod:`guiding_nc.training.models`: argument
checks (ints, bools, activation names, bias under AGD, image batches), the small projection
layer, and switching off BatchNorm's affine parameters for AGD."""
from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn

__all__ = [
    "check_int",
    "check_bool",
    "check_activation",
    "resolve_bias",
    "check_images",
    "make_projection",
    "disable_batchnorm_affine",
]

_ACTIVATIONS: dict = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


def check_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


def check_activation(activation: str) -> Callable[[], nn.Module]:
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a str, got {type(activation).__name__}")
    key = activation.lower()
    if key not in _ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; valid activations are {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[key]


def resolve_bias(bias: Optional[bool], agd_compatible: bool) -> bool:
    """``bias=None`` means "True unless agd_compatible"; an explicit conflict is an error."""
    if not isinstance(agd_compatible, bool):
        raise TypeError(f"agd_compatible must be a bool, got {type(agd_compatible).__name__}")
    if bias is None:
        return not agd_compatible
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool or None, got {type(bias).__name__}")
    if bias and agd_compatible:
        raise ValueError(
            "bias=True conflicts with agd_compatible=True: AGD does not support bias vectors"
        )
    return bias


def check_images(x: Tensor, in_channels: int, model: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{model} expects a torch.Tensor input, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{model} expects images of shape (B, C, H, W), got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{model} was built for in_channels={in_channels} but got input with {x.shape[1]} "
            f"channels (shape {tuple(x.shape)})"
        )


def make_projection(in_dim: int, out_dim: int, agd_compatible: bool) -> nn.Module:
    """A small ``Linear(in_dim, out_dim) -> ReLU`` projection (bias-free when AGD-compatible)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim, bias=not agd_compatible), nn.ReLU(inplace=True))


def disable_batchnorm_affine(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm{1,2}d`` in ``module`` by an identical one with ``affine=False``.

    Done after construction because torchvision's ResNet initialiser writes to ``bn.weight``.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            replacement = type(child)(
                child.num_features,
                eps=child.eps,
                momentum=child.momentum,
                affine=False,
                track_running_stats=child.track_running_stats,
            )
            setattr(module, name, replacement)
        else:
            disable_batchnorm_affine(child)
    return module
