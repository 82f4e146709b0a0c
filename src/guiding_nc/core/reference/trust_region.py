"""The paper's solver: pymanopt's Riemannian trust-region on ``Stiefel(d, C)``.

Kept as the faithful reference for :func:`guiding_nc.nearest_etf` with
``method="trust_region"``: the cost of Eq. 7 is written with ``autograd.numpy``
and pymanopt derives its gradient and Hessian, as the paper's code does; the
solve is capped at 30 iterations and warm-started at the previous solution.
It runs on the CPU in float64 (pymanopt works in NumPy), whatever the device of
the inputs; the result is returned on the input's device and dtype.
Book: chapter 3, "The paper's solver".
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["trust_region_solve"]


def trust_region_solve(
    H: Tensor,
    prox: Tensor,
    delta: float,
    *,
    initial: Optional[Tensor] = None,
    max_iterations: int = 30,
    min_gradient_norm: float = 1e-10,
    max_time: float = float("inf"),
    return_result: bool = False,
):
    """Minimise ``||H - U M||_F^2 + delta/2 ||U - prox||_F^2`` over ``St(d, C)`` by Riemannian trust-region.

    Parameters
    ----------
    H, prox : Tensor, shape (d, C)
    delta : float
    initial : Tensor, shape (d, C), optional
        Starting point (default: ``prox``).
    max_iterations : int
        Outer trust-region iterations (paper: 30).
    max_time : float
        Wall-clock cap in seconds (pymanopt stops after the iteration that exceeds it).
    return_result : bool
        Also return pymanopt's ``OptimizerResult`` (iterations, gradient norm, time).

    Returns
    -------
    U : Tensor, shape (d, C), same dtype and device as ``H``.
    """
    import autograd.numpy as anp
    import pymanopt
    from pymanopt.manifolds import Stiefel
    from pymanopt.optimizers import TrustRegions

    d, C = H.shape
    try:
        Hn = H.detach().to("cpu", torch.float64).numpy()
    except RuntimeError:  # a torch.func transform's wrapper: no storage NumPy could read
        raise RuntimeError("method='trust_region' solves in NumPy (pymanopt), which torch.func transforms (jvp, grad, "
                           "vmap, hessian) cannot see into; use torch.autograd (backward, forward_ad) or "
                           "method='closed_form'") from None
    Pn = prox.detach().to("cpu", torch.float64).numpy()
    M = (np.eye(C) - 1.0 / C) / np.sqrt(C - 1)
    manifold = Stiefel(d, C)

    @pymanopt.function.autograd(manifold)
    def cost(U):
        return anp.sum((Hn - U @ M) ** 2) + 0.5 * delta * anp.sum((U - Pn) ** 2)

    problem = pymanopt.Problem(manifold, cost)
    optimizer = TrustRegions(
        max_iterations=max_iterations,
        min_gradient_norm=min_gradient_norm,
        max_time=max_time,
        verbosity=0,
        log_verbosity=0,
    )
    start = Pn if initial is None else initial.detach().to("cpu", torch.float64).numpy()
    result = optimizer.run(problem, initial_point=start)
    U = torch.from_numpy(np.ascontiguousarray(result.point)).to(dtype=H.dtype, device=H.device)
    return (U, result) if return_result else U
