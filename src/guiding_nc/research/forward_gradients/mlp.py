"""The functional ReLU MLP the estimators differentiate: parameters as ``[(W, b), ...]``, its forward
pass with every pre-activation recorded, its losses, and flattening for ``torch.func``."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from .validation import (
    Params,
    check_params,
    check_pos_int,
    check_x,
    check_xy,
)


# --------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------
def random_mlp(
    dims: Sequence[int],
    *,
    bias: bool = True,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Params:
    """He-initialised ReLU MLP ``dims = [d_0, d_1, ..., d_L]`` -> params (list of (W, b)).

    ``W_l ~ N(0, 2 / d_{l-1})`` of shape ``(d_l, d_{l-1})``; biases ``~ N(0, 0.01)`` so that
    units are not exactly tied (``None`` when ``bias=False``).
    """
    dims = [check_pos_int(f"dims[{i}]", d) for i, d in enumerate(dims)]
    if len(dims) < 2:
        raise ValueError("dims needs at least an input and an output size")
    params: Params = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        W = torch.randn(d_out, d_in, generator=generator, dtype=dtype, device=device) * math.sqrt(2.0 / d_in)
        b = torch.randn(d_out, generator=generator, dtype=dtype, device=device) * 0.1 if bias else None
        params.append((W, b))
    return params


def from_module(module: nn.Module) -> Params:
    """Detached copy of the ``Linear`` layers of an ``nn.Sequential`` / ``guiding_nc.training.models.mlp.MLP``.

    The module must be ``[Flatten] -> Linear -> ReLU -> ... -> Linear`` (ReLU between linear
    layers and *no* activation after the last one, e.g. ``MLP(..., final_activation=False)``).
    Returns params as a list of ``(W (out, in), b (out,) or None)``.
    """
    if not isinstance(module, nn.Module):
        raise ValueError("module must be a torch.nn.Module")
    # leaves in registration order (guiding_nc.training.models.mlp.MLP keeps them in a child Sequential)
    mods = [m for m in module.modules() if len(list(m.children())) == 0]
    params: Params = []
    expect_linear = True
    for m in mods:
        if isinstance(m, (nn.Flatten, nn.Identity)):
            continue
        if isinstance(m, nn.Linear):
            if not expect_linear:
                raise ValueError("two Linear layers without a ReLU in between are not supported")
            b = None if m.bias is None else m.bias.detach().clone()
            params.append((m.weight.detach().clone(), b))
            expect_linear = False
        elif isinstance(m, nn.ReLU):
            if expect_linear:
                raise ValueError("ReLU must follow a Linear layer")
            expect_linear = True
        else:
            raise ValueError(f"unsupported module {type(m).__name__}: only Flatten, Linear and ReLU")
    if not params:
        raise ValueError("module contains no Linear layer")
    if expect_linear:
        raise ValueError(
            "the functional MLP ends with a Linear layer producing logits; a trailing ReLU "
            "is not supported (build guiding_nc.training.models.mlp.MLP with final_activation=False)"
        )
    return check_params(params)


def forward_record(params: Params, x: Tensor, deltas: Optional[Dict[int, Tensor]] = None):
    """Forward pass returning (logits, inputs h_{l-1} per layer, pre-activations z_l per layer)."""
    h = x
    inputs, pre = [], []
    L = len(params)
    for i, (W, b) in enumerate(params):
        inputs.append(h)
        z = h @ W.T
        if b is not None:
            z = z + b
        if deltas is not None and i in deltas:
            z = z + deltas[i]
        pre.append(z)
        h = torch.relu(z) if i < L - 1 else z
    return h, inputs, pre


def mlp_forward(params: Params, x: Tensor) -> Tensor:
    """Logits ``(B, C)`` of the ReLU MLP ``params`` on ``x`` ``(B, d_0)`` (or ``(B, *)``)."""
    params = check_params(params)
    return forward_record(params, check_x(params, x))[0]


def per_example_loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy ``(B,)``."""
    params = check_params(params)
    x, y = check_xy(params, x, y)
    return F.cross_entropy(forward_record(params, x)[0], y, reduction="none")


def mlp_loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy (scalar): the objective ``f`` whose gradient is estimated."""
    return per_example_loss(params, x, y).mean()


# --------------------------------------------------------------------------------------
# flattening of the (W, b) structure for torch.func
# --------------------------------------------------------------------------------------
def flatten_params(params: Params) -> Tuple[Tensor, ...]:
    out = []
    for W, b in params:
        out.append(W)
        if b is not None:
            out.append(b)
    return tuple(out)


def unflatten_params(params: Params, flat: Sequence[Tensor]) -> Params:
    out: Params = []
    j = 0
    for W, b in params:
        Wn = flat[j]
        j += 1
        bn = None
        if b is not None:
            bn = flat[j]
            j += 1
        out.append((Wn, bn))
    return out
