"""Exception types shared across layers (so no caller has to match an error by its text)."""
from __future__ import annotations

__all__ = ["NonFiniteInputError"]


class NonFiniteInputError(ValueError):
    """An input held NaN or Inf (class means, a proximal point, features, logits)."""
