"""Types, estimator names and input checks of the forward-gradient code (shared by its modules)."""
from __future__ import annotations

from typing import List, Optional, Tuple

from torch import Tensor


Layer = Tuple[Tensor, Optional[Tensor]]
Params = List[Layer]

#: Estimator names accepted by :func:`estimate`.
ESTIMATORS: Tuple[str, ...] = (
    "weight",
    "activation",
    "wt",
    "upstream",
    "upstream_ns",
    "upstream_precond",
)
#: Estimators that are unbiased by construction (``upstream_precond`` only with ``k=None``).
UNBIASED_ESTIMATORS: Tuple[str, ...] = ("weight", "activation", "upstream_precond")
K_METHODS = ("upstream", "upstream_ns", "upstream_precond")
_ACT_METHODS = ESTIMATORS[1:]
#: Seed of the fixed sketch ``Omega`` used by the Newton–Schulz top-k subspace iteration.
NS_SKETCH_SEED = 1234


# --------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------
def check_params(params) -> Params:
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise ValueError("params must be a non-empty list of (weight, bias) pairs")
    out: Params = []
    prev_out = None
    dtype = None
    for i, layer in enumerate(params):
        if not isinstance(layer, (list, tuple)) or len(layer) != 2:
            raise ValueError(f"params[{i}] must be a (weight, bias) pair, got {type(layer).__name__}")
        W, b = layer
        if not isinstance(W, Tensor) or W.dim() != 2:
            raise ValueError(f"params[{i}] weight must be a 2-D tensor (out, in)")
        if b is not None and (not isinstance(b, Tensor) or b.shape != (W.shape[0],)):
            raise ValueError(
                f"params[{i}] bias must be None or a tensor of shape ({W.shape[0]},), "
                f"got {None if not isinstance(b, Tensor) else tuple(b.shape)}"
            )
        if not W.is_floating_point():
            raise ValueError(f"params[{i}] weight must be floating point")
        if dtype is None:
            dtype = W.dtype
        elif W.dtype != dtype or (b is not None and b.dtype != dtype):
            raise ValueError("all parameters must share one dtype")
        if prev_out is not None and W.shape[1] != prev_out:
            raise ValueError(
                f"params[{i}] weight expects {W.shape[1]} inputs but layer {i - 1} has {prev_out} outputs"
            )
        prev_out = W.shape[0]
        out.append((W, b))
    return out


def check_x(params: Params, x) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError("x must be a tensor of shape (B, d_0) (or (B, *) with prod(*) == d_0)")
    x = x.reshape(x.shape[0], -1)
    d0 = params[0][0].shape[1]
    if x.shape[1] != d0:
        raise ValueError(f"x has {x.shape[1]} features per example, the network expects {d0}")
    if x.shape[0] == 0:
        raise ValueError("x must contain at least one example")
    return x.to(params[0][0].dtype)


def check_xy(params: Params, x, y) -> Tuple[Tensor, Tensor]:
    x = check_x(params, x)
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be a 1-D tensor of {x.shape[0]} class indices")
    if y.is_floating_point() or y.is_complex():
        raise ValueError("y must hold integer class indices")
    C = params[-1][0].shape[0]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= C):
        raise ValueError(f"class indices in y must lie in [0, {C})")
    return x, y.long()


def check_name(name: str) -> str:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {ESTIMATORS}")
    return name


def max_k(params: Params) -> Optional[int]:
    """Largest admissible k: max over hidden layers of rank bound min(d_l, d_{l+1})."""
    bounds = [min(params[i][0].shape[0], params[i + 1][0].shape[0]) for i in range(len(params) - 1)]
    return max(bounds) if bounds else None


def check_k(name: str, params: Params, k) -> Optional[int]:
    if k is None:
        return None
    if name not in K_METHODS:
        raise ValueError(f"k is only used by {K_METHODS}; estimator {name!r} takes k=None")
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be a positive int or None, got {k!r}")
    kmax = max_k(params)
    if k < 1 or (kmax is not None and k > kmax):
        raise ValueError(
            f"k={k} out of range: need 1 <= k <= {kmax} (max over hidden layers of min(d_l, d_l+1))"
        )
    return k


def check_pos_int(what: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}")
    return v
