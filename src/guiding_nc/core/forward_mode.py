"""torch's forward-mode AD without a warning about torch's own internals.

On the first forward-mode product of a process (``torch.func.jvp``, ``jacfwd``, ``hessian``),
torch loads its forward-mode decompositions through ``torch.jit.script``, which warns that
``torch.jit.script`` is deprecated: a notice about torch's code, not this package's, whose text
names a file of the local installation (and so showed a machine's path in the book's outputs).
:func:`load` makes that first product with this one warning filtered; :func:`jvp` is
``torch.func.jvp`` after it.  Book: chapters 13 and 14.
"""
from __future__ import annotations

import warnings

import torch

__all__ = ["load", "jvp"]

_loaded = False


def load() -> None:
    """Load torch's forward-mode decompositions once, quietly (idempotent)."""
    global _loaded
    if not _loaded:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
            torch.func.jvp(torch.sin, (torch.zeros(1),), (torch.ones(1),))
        _loaded = True


def jvp(func, primals, tangents, **kwargs):
    """``torch.func.jvp(func, primals, tangents, **kwargs)``: ``(func(*primals), J v)``."""
    load()
    return torch.func.jvp(func, primals, tangents, **kwargs)
