"""Newton–Schulz iterations of a fixed length: matrix products only, batched where noted, and so
differentiable to any order by autograd and ``torch.func``.

* :func:`newton_schulz_steps` -- the polar factor's iteration ``X <- X (3 I - X^T X) / 2`` from
  ``A / ||A||_F``, a given number of times (chapter 14's orthogonalised guesses);
* :func:`inverse_sqrt_newton_schulz` -- the coupled iteration for ``S^{-1/2}`` (chapter 13's
  implicit ETF as a polar factor, differentiable at collapse).

The polar factor of the nearest-ETF layer on CUDA runs the same polar iteration, stopped by a
proven bound on its residual instead of a count: :func:`guiding_nc.core.polar.newton_schulz_polar`.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["newton_schulz_steps", "inverse_sqrt_newton_schulz"]


def newton_schulz_steps(A: Tensor, num_iters: int = 10) -> Tensor:
    """Approximate (pseudo-)polar factor ``U V^T`` of ``A`` (``(..., m, n)``, batched).

    Cubic Newton–Schulz iteration ``X <- 1.5 X - 0.5 X X^T X`` from ``X_0 = A / ||A||_F``
    (so every singular value starts in (0, 1]). Each step maps a singular value
    ``s -> 1.5 s - 0.5 s^3``: non-zero ones converge (quadratically near 1) to 1, zero ones
    stay 0, so the limit is ``sum_{s_i > 0} u_i v_i^T`` — the SVD polar factor. Small singular
    values need about ``log(s_max / s) / log(1.5)`` steps, so a few iterations act as a soft
    top-subspace orthogonalisation. Uses only matrix products.
    """
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters must be a positive integer, got {num_iters!r}")
    if A.dim() < 2:
        raise ValueError("A must have at least 2 dimensions (..., m, n)")
    norm = torch.linalg.matrix_norm(A, ord="fro", keepdim=True)
    X = A / norm.clamp_min(torch.finfo(A.dtype).tiny)
    tall = A.shape[-2] > A.shape[-1]
    for _ in range(num_iters):
        if tall:  # X (X^T X): the Gram matrix is the smaller n x n
            X = 1.5 * X - 0.5 * X @ (X.transpose(-1, -2) @ X)
        else:
            X = 1.5 * X - 0.5 * (X @ X.transpose(-1, -2)) @ X
    return X


def inverse_sqrt_newton_schulz(S: Tensor, iterations: int) -> Tensor:
    """``S^{-1/2}`` of a symmetric positive-definite ``S`` (C, C) with spectrum in (0, 1].

    The coupled Newton–Schulz iteration (Higham, *Functions of Matrices*, §6.7)::

        Y_0 = S, Z_0 = I;   T_k = (3 I - Z_k Y_k) / 2,   Y_{k+1} = Y_k T_k,   Z_{k+1} = T_k Z_k

    converges to ``Z = S^{-1/2}`` when ``||I - S|| < 1``: an eigenvalue ``lam`` needs about
    ``log(1/lam) / log(9/4)`` iterations to reach O(1), then converges quadratically (to float64
    precision in 11 / 17 / 23 / 28 / 34 / 40 iterations for ``lam`` = 1e-2 / 1e-4 / 1e-6 / 1e-8 /
    1e-10 / 1e-12).  Needs ``S.shape == (C, C)`` (unbatched).  Only
    matrix products are used, so the result is differentiable to any order by autograd and
    ``torch.func`` — also where ``S`` has repeated eigenvalues (the neural-collapse regime),
    where eigendecomposition-based derivatives are infinite.  The unrolled map is a
    polynomial of ``S``; at convergence it is stable, so its derivatives converge to those of
    ``S^{-1/2}``.
    """
    C = S.shape[-1]
    eye = torch.eye(C, dtype=S.dtype, device=S.device)
    Y, Z = S, eye
    for _ in range(iterations):
        # T = 1.5 I - 0.5 Z Y as one fused op: much cheaper than separate elementwise ops under
        # torch.func forward-over-reverse, where elementwise ops run through Python decompositions.
        T = torch.addmm(eye, Z, Y, beta=1.5, alpha=-0.5)
        Y, Z = Y @ T, T @ Z
    return Z
