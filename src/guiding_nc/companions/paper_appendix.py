"""The paper's Appendix B as printed, formula by formula, so the book can test each against the
closed form and autograd (chapters 4 and 5: the errata -- Eq. 20's sign, which M the symbol
M~ means, K for C, the size of the constraint elimination matrix).

Nothing here is used by the solver or the trainer: these are the paper's own expressions,
written literally, next to which the book puts the correct ones.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor

from ..core.etf import standard_simplex_etf

__all__ = ["centring_matrix", "paper_eq19_objective", "paper_eq20_lines", "paper_gradient_candidates",
           "paper_objective_gradient", "paper_mixed_hessian", "paper_elimination_matrix"]


def centring_matrix(C: int, *, dtype=torch.float64, device=None) -> Tensor:
    """The unnormalised centring matrix ``P = I_C - 1 1^T / C``; the ETF is ``M = P / sqrt(C - 1)``."""
    return torch.eye(C, dtype=dtype, device=device) - 1.0 / C


def paper_eq19_objective(H: Tensor, U: Tensor, Mhat: Tensor) -> float:
    """Eq. 19 as printed: ``H:H - 2/sqrt(C-1) H:(U Mhat) + 1/(C-1) U:(U Mhat)``.

    With ``Mhat`` the unnormalised centring matrix this equals ``||H - U M||_F^2`` for every
    ``U``; with ``Mhat`` the unit-Frobenius ETF (the symbol the paper uses) it does not.
    """
    C = H.shape[1]
    return float((H * H).sum() - 2 / math.sqrt(C - 1) * (H * (U @ Mhat)).sum() + (U * (U @ Mhat)).sum() / (C - 1))


def paper_eq20_lines(H: Tensor, U: Tensor, dU: Tensor, Mhat: Tensor) -> Dict[str, float]:
    """The directional derivative ``df`` in direction ``dU`` from each line of Eq. 20 as printed.

    ``line 1``: ``-2/sqrt(C-1) H:(dU Mhat) + 1/(C-1) (dU:(U Mhat) + U:(dU Mhat))``;
    ``line 2``: ``2/sqrt(C-1) (H Mhat):dU + 2/(C-1) (U Mhat):dU`` (the sign of the first term flips here);
    ``line 4``: ``D_U f : dU`` with ``D_U f`` the final line (same as line 2);
    ``Eq. 32``: ``(2/(C-1) U Mhat - 2/sqrt(C-1) H Mhat) : dU`` (the proximal version, ``delta = 0``, ``K`` read as ``C``).
    """
    C = H.shape[1]
    a, b = 2 / math.sqrt(C - 1), 1 / (C - 1)
    ip = lambda X, Y: float((X * Y).sum())
    line1 = -a * ip(H, dU @ Mhat) + b * (ip(dU, U @ Mhat) + ip(U, dU @ Mhat))
    line2 = a * ip(H @ Mhat, dU) + 2 * b * ip(U @ Mhat, dU)
    eq32 = ip(2 * b * U @ Mhat - a * H @ Mhat, dU)
    return {"Eq. 20, line 1": line1, "Eq. 20, line 2": line2, "Eq. 20, final gradient": line2, "Eq. 32": eq32}


def paper_gradient_candidates(H: Tensor, U: Tensor, prox: Tensor, delta: float) -> Dict[str, Tensor]:
    """Euclidean gradients of Eq. 7 as the paper prints them, under both readings of its ``M``.

    Keys: ``"Eq. 20 (P)"``, ``"Eq. 20 (M)"``, ``"Eq. 32 (P)"``, ``"Eq. 32 (M)"`` where ``P`` is the
    centring matrix and ``M`` the unit-Frobenius ETF substituted for the paper's symbol, and
    ``"book"``: ``2 U M^2 - 2 H M + delta (U - prox)``.  The proximal term is added to Eq. 20.
    """
    C = H.shape[1]
    Pc = centring_matrix(C, dtype=H.dtype, device=H.device)
    M = standard_simplex_etf(C, dtype=H.dtype, device=H.device)
    a, b = 2 / math.sqrt(C - 1), 2 / (C - 1)
    prox_term = delta * (U - prox)
    out = {}
    for name, X in (("P", Pc), ("M", M)):
        out[f"Eq. 20 ({name})"] = a * H @ X + b * U @ X + prox_term
        out[f"Eq. 32 ({name})"] = b * U @ X - a * H @ X + prox_term
    out["book"] = 2 * U @ M @ M - 2 * H @ M + prox_term
    return out


def paper_objective_gradient(H: Tensor, U: Tensor, *, as_in: str = "eq32", prox: Optional[Tensor] = None, delta: float = 0.0) -> Tensor:
    """``D_U f`` exactly as printed in Appendix B, with the centring matrix for M~.

    ``as_in="eq20"``: ``2/sqrt(C-1) H M + 2/(C-1) U M`` (the last line of Eq. 20);
    ``as_in="eq32"``: ``2/(C-1) U M - 2/sqrt(C-1) H M + delta (U - prox)`` (Eq. 32, K read as C).
    """
    C = H.shape[1]
    Mc = centring_matrix(C, dtype=H.dtype, device=H.device)
    if as_in == "eq20":
        return 2 / math.sqrt(C - 1) * H @ Mc + 2 / (C - 1) * U @ Mc
    if as_in == "eq32":
        g = 2 / (C - 1) * U @ Mc - 2 / math.sqrt(C - 1) * H @ Mc
        return g + delta * (U - prox) if prox is not None and delta else g
    raise ValueError(f"as_in must be 'eq20' or 'eq32', got {as_in!r}")


def paper_mixed_hessian(d: int, C: int, *, unit_frobenius: bool = False, dtype=torch.float64) -> Tensor:
    """Eq. 23, ``-2/sqrt(C-1) (I_d kron M~)``, with M~ the centring matrix (default) or the unit-Frobenius ETF."""
    M = standard_simplex_etf(C, dtype=dtype) if unit_frobenius else centring_matrix(C, dtype=dtype)
    return -2 / math.sqrt(C - 1) * torch.kron(torch.eye(d, dtype=dtype), M)


def paper_elimination_matrix(n: int, dtype=torch.float64) -> Tensor:
    """``L_n`` built literally from Eqs. 27–28: ``sum_{i>=j} u_ij vec(E_ij)^T`` (column-major vec)."""
    m = n * (n + 1) // 2
    L = torch.zeros(m, n * n, dtype=dtype)
    for j in range(1, n + 1):
        for i in range(j, n + 1):
            row = (j - 1) * n + i - j * (j - 1) // 2  # Eq. 28, 1-based
            col = (j - 1) * n + i  # position of E_ij in column-major vec, 1-based
            L[row - 1, col - 1] = 1.0
    return L
