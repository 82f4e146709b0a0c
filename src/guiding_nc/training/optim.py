"""Optimisers and learning-rate schedules for the Guiding-NC experiments.

The paper (Markou et al., 2024, §4 "Experiments", first paragraph) trains every model with
Automatic Gradient Descent (AGD; Bernstein, Mingard, Huang, Azizan, Yue, 2023,
arXiv:2304.05187) with gain 10. :class:`AGD` implements AGD from that paper's description
(its Algorithm 1 and §"Experiments"); :func:`build_optimizer` and :func:`build_scheduler` also
provide SGD/Adam and standard schedules for comparisons.

AGD as implemented
------------------
The network has ``L`` weight tensors ``W_1 .. W_L`` ("layers"; ``L`` = number of parameters
handed to the optimiser, over all groups). A matrix ``W_k`` of shape ``(d_k, d_{k-1})``
(PyTorch's ``(out, in)`` convention) has the scale ``s_k = sqrt(d_k / d_{k-1})``. Each step::

    G   = (1/L) * sum_k  s_k * ||grad W_k||_F                    # gradient summary
    eta = log((1 + sqrt(1 + 4 G)) / 2)                           # automatic step size
    W_k <- W_k - lr * gain * (eta / L) * s_k * grad W_k / ||grad W_k||_F

``gain`` is the single AGD hyperparameter (the Guiding-NC paper uses 10; the AGD paper reports
its results with 1). ``lr`` is *not* a learning rate: it is a dimensionless multiplier, default
1.0 (pure AGD), that exists so ``torch.optim.lr_scheduler`` schedules can be attached.

Convolution kernels ``(out, in, kx, ky)`` (any number of kernel dimensions) are treated as the
matrix ``(out, in*kx*ky)``: the scale is ``s = sqrt(out / (in*kx*ky))``, i.e. AGD's
``sqrt(fan_out / fan_in)`` with the kernel-size factor ``1/sqrt(kx*ky)``. The normalisation
follows the AGD paper's "per-submatrix" scheme (§Experiments: "for a convolutional tensor with
filters of size kx × ky, we implemented the normalisation separately for each of the kx × ky
submatrices of dimension channels_in × channels_out"): with ``conv_norm="per_position"``
(default) every ``(out, in)`` slice ``grad[:, :, i, j]`` is divided by its own Frobenius norm and
the layer contributes ``s * sum_ij ||grad[:, :, i, j]||_F`` to ``G``. With ``conv_norm="full"``
the whole flattened kernel is normalised at once and contributes ``s * ||grad||_F``.
Both agree for 1×1 convolutions and for matrices.

Unconstrained feature models: the free feature matrix ``H`` of a
:class:`guiding_nc.training.models.ufm.UFM`, shape ``(N, d)``, is one AGD "layer" like any other matrix
(scale ``sqrt(N/d)`` under the ``(out, in)`` convention). A UFM's input is a one-hot sample
index, not an input normalised as AGD's derivation assumes, so AGD's theory does not fix this
scale; pass ``{"params": ..., "agd_scale": value}`` as a parameter group to override ``s`` for
some parameters. :func:`agd_init_` leaves ``H`` at its UFM initialisation.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .models.ufm import UFM

__all__ = [
    "AGD",
    "agd_init_",
    "agd_scale",
    "build_optimizer",
    "build_scheduler",
    "OPTIMIZER_NAMES",
    "SCHEDULER_NAMES",
    "CONV_NORMS",
]

OPTIMIZER_NAMES: Tuple[str, ...] = ("agd", "sgd", "adam")
SCHEDULER_NAMES: Tuple[str, ...] = ("none", "cosine", "step")
CONV_NORMS: Tuple[str, ...] = ("per_position", "full")

_AGD_HINT = (
    "AGD supports only matrices and convolution kernels (parameters with >= 2 dimensions); "
    "build the model with agd_compatible=True (no biases, BatchNorm affine=False)"
)


# ------------------------------------------------------------------------------------ helpers
def agd_scale(shape: Sequence[int]) -> float:
    """AGD's per-layer scale ``sqrt(fan_out / fan_in)`` for a weight of the given shape.

    ``shape = (out, in, *kernel)`` -> ``sqrt(out / (in * prod(kernel)))``.
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"agd_scale needs a shape with >= 2 dimensions, got {shape}")
    fan_in = math.prod(shape[1:])
    if shape[0] == 0 or fan_in == 0:
        raise ValueError(f"agd_scale needs a non-empty shape, got {shape}")
    return math.sqrt(shape[0] / fan_in)


def _check_conv_norm(conv_norm: str) -> str:
    if conv_norm not in CONV_NORMS:
        raise ValueError(f"unknown conv_norm {conv_norm!r}; valid values are {', '.join(CONV_NORMS)}")
    return conv_norm


def _check_nonneg_float(name: str, value, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def _named_params(params) -> List[Tuple[str, Tensor]]:
    """Normalise a Module / iterable of tensors / iterable of (name, tensor) to named pairs."""
    if isinstance(params, nn.Module):
        return list(params.named_parameters())
    if isinstance(params, Tensor):
        raise TypeError("params must be an iterable of tensors or an nn.Module, got a single Tensor")
    out: List[Tuple[str, Tensor]] = []
    for i, item in enumerate(params):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append(item)
        elif isinstance(item, Tensor):
            out.append((f"params[{i}]", item))
        else:
            raise TypeError(f"params[{i}] is a {type(item).__name__}, expected a Tensor or (name, Tensor)")
    return out


def _grad_norms(grad: Tensor, conv_norm: str) -> Tensor:
    """Frobenius norms used by AGD: a 0-d tensor, or ``(1, 1, *kernel)`` per kernel position."""
    dtype = torch.float32 if grad.dtype in (torch.float16, torch.bfloat16) else None
    if grad.dim() > 2 and conv_norm == "per_position":
        return torch.linalg.vector_norm(grad, dim=(0, 1), keepdim=True, dtype=dtype)
    return torch.linalg.vector_norm(grad, dtype=dtype)


# ---------------------------------------------------------------------------------------- AGD
class AGD(Optimizer):
    """Automatic Gradient Descent (Bernstein et al., 2023, Algorithm 1), as used by the paper (§4).

    Args:
        params: an ``nn.Module``, an iterable of parameters, of ``(name, parameter)`` pairs
            (e.g. ``model.named_parameters()``, which makes error messages name the parameter),
            or of parameter-group dicts. Every parameter must have >= 2 dimensions
            (``(out, in)`` matrices or ``(out, in, *kernel)`` kernels); anything else raises
            ``ValueError`` naming it.
        gain: update multiplier (paper: 10). Must be > 0.
        lr: dimensionless multiplier of the whole update (default 1.0 = pure AGD); exists only
            so that torch LR schedulers can drive AGD.
        conv_norm: ``"per_position"`` (AGD paper, default) or ``"full"``; see the module
            docstring.
        depth: ``L`` in the formula below; ``None`` (default) counts the parameters, as the AGD
            paper and the code release of Guiding Neural Collapse do.  A larger value counts
            layers that are not trained (a fixed classifier), so two networks of the same
            architecture take the same step whether or not their classifier is learned.

    Per-group options: ``gain``, ``lr``, ``conv_norm`` and ``agd_scale`` (``None`` = use
    ``sqrt(fan_out/fan_in)``; a float overrides the scale ``s_k`` of the group's parameters).

    Formula (``L`` = number of parameters over all groups, ``s_k`` = :func:`agd_scale`)::

        G = (1/L) sum_k s_k ||g_k||_F ;  eta = log((1 + sqrt(1 + 4G)) / 2)
        W_k -= lr * gain * eta / L * s_k * g_k / ||g_k||_F

    Parameters whose ``.grad`` is ``None`` are skipped (they still count in ``L``, the depth).
    A zero gradient gives a zero update. No host-device synchronisation happens in ``step``.

    State: AGD has no per-parameter state. After each step every param group holds
    ``"eta"`` and ``"grad_summary"`` (0-d tensors on the gradients' device) and ``"step"``
    (int); these travel in :meth:`state_dict`, so a resumed run continues bit-identically.
    :attr:`last_eta` returns ``eta`` as a Python float (``None`` before the first step).
    """

    def __init__(
        self,
        params,
        gain: float = 10.0,
        *,
        lr: float = 1.0,
        conv_norm: str = "per_position",
        depth: Optional[int] = None,
    ) -> None:
        gain = _check_nonneg_float("gain", gain, positive=True)
        lr = _check_nonneg_float("lr", lr, positive=False)
        _check_conv_norm(conv_norm)
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise ValueError(f"depth must be a positive integer or None (the number of parameters), got {depth!r}")
        if isinstance(params, nn.Module):
            params = list(params.named_parameters())
        defaults = dict(gain=gain, lr=lr, conv_norm=conv_norm, agd_scale=None)
        self._depth = depth
        super().__init__(params, defaults)

    # validation happens here, so groups added later are checked too
    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate_group(group, len(self.param_groups) - 1)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise
        group.setdefault("step", 0)
        group.setdefault("eta", None)
        group.setdefault("grad_summary", None)

    @staticmethod
    def _validate_group(group: Dict[str, Any], index: int) -> None:
        _check_nonneg_float("gain", group["gain"], positive=True)
        _check_nonneg_float("lr", group["lr"], positive=False)
        _check_conv_norm(group["conv_norm"])
        if group["agd_scale"] is not None:
            _check_nonneg_float("agd_scale", group["agd_scale"], positive=True)
        names = group.get("param_names")
        for j, p in enumerate(group["params"]):
            if p.dim() < 2 or p.numel() == 0:
                name = names[j] if names is not None else f"param_groups[{index}]['params'][{j}]"
                raise ValueError(
                    f"AGD cannot optimise parameter {name!r} of shape {tuple(p.shape)}: {_AGD_HINT}"
                )

    @property
    def depth(self) -> int:
        """``L``: the number of parameters (layers) over all groups, or the ``depth`` given (the
        network's layers counted with one that is not trained, e.g. a fixed classifier)."""
        n = sum(len(g["params"]) for g in self.param_groups)
        if self._depth is not None and self._depth < n:
            raise ValueError(f"AGD depth {self._depth} is smaller than the {n} parameters it optimises")
        return n if self._depth is None else self._depth

    @property
    def last_eta(self) -> Optional[float]:
        """The automatic step size of the last step as a float (syncs), ``None`` before any."""
        eta = self.param_groups[0].get("eta")
        return None if eta is None else float(eta)

    def _scale(self, p: Tensor, group: Dict[str, Any]) -> float:
        return group["agd_scale"] if group["agd_scale"] is not None else agd_scale(p.shape)

    @torch.no_grad()
    def step(self, closure=None):
        """One AGD update. ``closure`` (optional) re-evaluates and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        depth = self.depth
        entries = []
        summary: Optional[Tensor] = None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AGD does not support sparse gradients")
                s = self._scale(p, group)
                norms = _grad_norms(p.grad, group["conv_norm"])
                term = norms.sum() * s
                summary = term if summary is None else summary + term
                entries.append((group, p, s, norms))
        if summary is None:  # no gradients at all: nothing to do
            return loss
        summary = summary / depth
        eta = torch.log((1.0 + torch.sqrt(1.0 + 4.0 * summary)) / 2.0)
        for group, p, s, norms in entries:
            coef = -group["lr"] * group["gain"] * s / depth
            direction = p.grad / norms.clamp_min(torch.finfo(norms.dtype).tiny)
            p.add_(direction * (eta * coef))
        for group in self.param_groups:
            group["eta"] = eta
            group["grad_summary"] = summary
            group["step"] += 1
        return loss


@torch.no_grad()
def agd_init_(
    params,
    *,
    conv_norm: str = "per_position",
    generator: Optional[torch.Generator] = None,
    skip: Iterable[Tensor] = (),
):
    """AGD initialisation in place (Bernstein et al., 2023, Algorithm 1 ``initialise_weights``).

    Every matrix ``W`` of shape ``(out, in)`` is drawn uniformly from the (semi-)orthogonal
    matrices and rescaled by ``sqrt(out/in)`` (all singular values equal ``sqrt(out/in)``).
    A kernel ``(out, in, *kernel)`` is rescaled by ``s = sqrt(out / (in * prod(kernel)))``
    (:func:`agd_scale`); with ``conv_norm="per_position"`` (the AGD paper's per-submatrix view)
    every ``(out, in)`` slice is an independent semi-orthogonal matrix times ``s``; with
    ``"full"`` the flattened ``(out, in*prod(kernel))`` matrix is semi-orthogonal times ``s``.

    Args:
        params: an ``nn.Module`` or an iterable of parameters / ``(name, parameter)`` pairs.
            The free features of every :class:`~guiding_nc.training.models.ufm.UFM` inside a module are
            skipped (they keep the UFM's Gaussian initialisation).
        conv_norm: ``"per_position"`` or ``"full"`` (should match the optimiser's).
        generator: optional CPU ``torch.Generator`` for reproducibility.
        skip: further parameters to leave untouched.

    Returns:
        ``params`` (for chaining). Raises ``ValueError`` naming any parameter with < 2
        dimensions that is not skipped.
    """
    _check_conv_norm(conv_norm)
    skip_ids = {id(p) for p in skip}
    if isinstance(params, nn.Module):
        for m in params.modules():
            if isinstance(m, UFM):
                skip_ids.update(id(p) for p in m.parameters())
    seen = set()
    for name, p in _named_params(params):
        if id(p) in skip_ids or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2 or p.numel() == 0:
            raise ValueError(f"agd_init_ cannot initialise parameter {name!r} of shape {tuple(p.shape)}: {_AGD_HINT}")
        out, inp = p.shape[0], p.shape[1]
        k = math.prod(p.shape[2:])
        s = agd_scale(p.shape)
        if p.dim() == 2 or conv_norm == "full" or k == 1:
            w = torch.empty(out, inp * k, dtype=torch.float64)
            nn.init.orthogonal_(w, generator=generator)
            w = w.reshape(p.shape)
        else:
            w = torch.empty(k, out, inp, dtype=torch.float64)
            for i in range(k):
                nn.init.orthogonal_(w[i], generator=generator)
            w = w.permute(1, 2, 0).reshape(p.shape)
        p.copy_(w * s)
    return params


# ------------------------------------------------------------------------------------ factories
def build_optimizer(
    name: str,
    params,
    *,
    lr: Optional[float] = None,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    gain: float = 10.0,
    betas: Tuple[float, float] = (0.9, 0.999),
    depth: Optional[int] = None,
) -> Optimizer:
    """Build ``"agd"``, ``"sgd"`` or ``"adam"`` (case-insensitive); see :data:`OPTIMIZER_NAMES`.

    * ``"agd"``: :class:`AGD` with ``gain`` and ``depth``; ``lr`` (default ``None`` -> 1.0) is AGD's
      dimensionless update multiplier; ``momentum``, ``weight_decay`` and ``betas`` are ignored
      (AGD has none of them — the paper uses plain AGD with gain 10).
    * ``"sgd"``: ``torch.optim.SGD(lr, momentum, weight_decay)``; ``lr`` required.
    * ``"adam"``: ``torch.optim.Adam(lr, betas, weight_decay)``; ``lr`` required.

    ``params`` may be an ``nn.Module`` or anything the torch optimisers accept.
    """
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in OPTIMIZER_NAMES:
        raise ValueError(f"unknown optimizer {name!r}; valid names are {', '.join(OPTIMIZER_NAMES)}")
    if key == "agd":
        return AGD(params, gain=gain, lr=1.0 if lr is None else lr, depth=depth)
    if lr is None:
        raise ValueError(f"optimizer {key!r} needs a learning rate: pass lr=...")
    lr = _check_nonneg_float("lr", lr, positive=True)
    weight_decay = _check_nonneg_float("weight_decay", weight_decay, positive=False)
    if isinstance(params, nn.Module):
        params = params.parameters()
    if key == "sgd":
        momentum = _check_nonneg_float("momentum", momentum, positive=False)
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise TypeError(f"betas must be a pair of floats, got {betas!r}")
    for i, b in enumerate(betas):
        b = _check_nonneg_float(f"betas[{i}]", b, positive=False)
        if b >= 1:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {b}")
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


class _LRFactor:
    """Picklable LR multiplier ``step -> factor`` (its ``__dict__`` goes into the state dict)."""

    def __init__(self, kind: str, total_steps: int, warmup_steps: int, gamma: float) -> None:
        self.kind = kind
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.gamma = gamma
        self.milestones = (int(0.5 * total_steps), int(0.75 * total_steps))

    def __call__(self, step: int) -> float:
        factor = 1.0
        if step < self.warmup_steps:
            factor = (step + 1) / self.warmup_steps
        if self.kind == "cosine" and step >= self.warmup_steps:
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.kind == "step":
            factor *= self.gamma ** sum(step >= m for m in self.milestones)
        return factor


def build_scheduler(
    name: str,
    optimizer: Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    gamma: float = 0.1,
) -> LambdaLR:
    """LR schedule stepped once per optimiser step; see :data:`SCHEDULER_NAMES`.

    The factor multiplying each group's initial ``lr`` at scheduler step ``t`` is
    ``warmup(t) * main(t)`` with ``warmup(t) = min(1, (t+1)/warmup_steps)`` (1 if no warm-up) and

    * ``"none"``: ``main = 1``;
    * ``"cosine"``: ``main = (1 + cos(pi * min(1, (t - warmup_steps)/(total_steps - warmup_steps)))) / 2``
      after the warm-up (1 during it);
    * ``"step"``: ``main = gamma ** #{m in (total_steps//2, int(0.75*total_steps)) : t >= m}``.

    For :class:`AGD` the ``lr`` it scales is AGD's dimensionless multiplier (initially 1).
    Returns a ``torch.optim.lr_scheduler.LambdaLR`` (its ``state_dict`` is picklable).
    """
    if not isinstance(name, str):
        raise TypeError(f"scheduler name must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {name!r}; valid names are {', '.join(SCHEDULER_NAMES)}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    for arg, value, minimum in (("total_steps", total_steps, 1), ("warmup_steps", warmup_steps, 0)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
        if value < minimum:
            raise ValueError(f"{arg} must be >= {minimum}, got {value}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} exceeds total_steps={total_steps}")
    gamma = _check_nonneg_float("gamma", gamma, positive=True)
    return LambdaLR(optimizer, _LRFactor(key, total_steps, warmup_steps, gamma))
