"""Full-batch gradient descent on a flat-tensor objective, with its trajectory recorded
(:func:`gradient_descent`, :class:`GDResult`): the runs along which
:mod:`guiding_nc.research.reduction_mappings` measures the curvature of the UFM reductions.
Book: chapter 13 (``book/13_reduction_mappings.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..curvature import ScalarFn, check_point, scalar_output

__all__ = ["GDResult", "gradient_descent"]


@dataclass
class GDResult:
    """Output of :func:`gradient_descent`.

    values, grad_norms_sq : Tensor (steps + 1,), float64 — ``f(x_t)`` and ``||∇f(x_t)||²``, t = 0..steps.
    record_steps : list of int — the steps at which points were kept.
    points : list of Tensor — ``x_t`` at ``record_steps`` (detached clones, flat).
    lr : list of float — the step size of each step taken.
    diverged : bool — a value or gradient became non-finite (the run stopped there).
    """

    values: Tensor
    grad_norms_sq: Tensor
    record_steps: list
    points: list
    lr: list
    diverged: bool


def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return float(lr)


def gradient_descent(f: ScalarFn, x0: Tensor, lr, steps: int, *, record_every: int = 10,
                     callback: Optional[Callable[[int], None]] = None) -> GDResult:
    """Full-batch gradient descent ``x_{t+1} = x_t - lr_t ∇f(x_t)`` (torch.autograd), recording the trajectory.

    Parameters
    ----------
    f : callable, flat tensor (n,) -> scalar
    x0 : Tensor (n,) — the start (not modified).
    lr : float > 0, or a callable ``x -> float > 0`` evaluated at every recorded point and used
        until the next one (e.g. ``1 / lambda_max(∇²f(x))``, the local "step 1/L" rule).
    steps : int >= 0; record_every : int >= 1 — points are kept at t = 0, record_every,
        2 record_every, ... and at the last step.
    callback : optional, called with t after each step (progress bars).

    Returns a :class:`GDResult`; its ``lr`` is the list of step sizes used (one per step).
    """
    check_point(x0, "x0")
    lr_fn = lr if callable(lr) else None
    if lr_fn is None:
        _check_lr(lr)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise ValueError(f"record_every must be an int >= 1, got {record_every!r}")
    x = x0.detach().clone()
    values, gns, rec, pts, lrs = [], [], [], [], []
    diverged = False
    current = None
    for t in range(steps + 1):
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            val = scalar_output(f)(xg)
            (g,) = torch.autograd.grad(val, xg)
        v, gn = float(val.detach()), float((g.detach().to(torch.float64) ** 2).sum())
        values.append(v)
        gns.append(gn)
        if not (math.isfinite(v) and math.isfinite(gn)):
            diverged = True
            break
        if t % record_every == 0 or t == steps:
            rec.append(t)
            pts.append(x.clone())
            if lr_fn is not None:
                current = _check_lr(lr_fn(x.clone()))
        if t < steps:
            step = current if lr_fn is not None else float(lr)
            lrs.append(step)
            x = x - step * g.detach()
            if callback is not None:
                callback(t)
    return GDResult(torch.tensor(values, dtype=torch.float64), torch.tensor(gns, dtype=torch.float64),
                    rec, pts, lrs, diverged)
