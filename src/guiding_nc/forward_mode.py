"""``torch.func.jvp`` without a warning about torch's own internals.

On the first Jacobian-vector product of a process, torch loads its forward-mode decompositions
through ``torch.jit.script``, which warns that ``torch.jit.script`` is deprecated: a notice about
torch's code, not this package's, whose text names a file of the local installation (and so showed
a machine's path in the book's outputs).  :func:`jvp` makes that first product with this one
warning filtered and is otherwise ``torch.func.jvp``.  Book: chapters 13 and 14.
"""
from __future__ import annotations

import warnings

import torch

__all__ = ["jvp"]

_loaded = False


def jvp(func, primals, tangents, **kwargs):
    """``torch.func.jvp(func, primals, tangents, **kwargs)``: ``(func(*primals), J v)``."""
    global _loaded
    if not _loaded:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
            torch.func.jvp(torch.sin, (torch.zeros(1),), (torch.ones(1),))
        _loaded = True
    return torch.func.jvp(func, primals, tangents, **kwargs)
