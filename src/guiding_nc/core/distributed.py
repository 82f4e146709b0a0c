"""Multi-process training under ``torchrun``: the process group, ranks and reductions.

Every rank builds the same model; the trainer wraps it in ``DistributedDataParallel`` and the
implicit head all-reduces its per-class sums (:mod:`guiding_nc.core.running_means`) so that every rank solves
for the same nearest ETF.  Book: chapter 9 (ImageNet on several GPUs).
"""
from __future__ import annotations

import os
from typing import Tuple

import torch
from torch import Tensor

__all__ = ["dist", "is_distributed", "world", "init_distributed", "all_reduce_"]


def dist():
    """The ``torch.distributed`` module (imported on first use)."""
    import torch.distributed

    return torch.distributed


def is_distributed() -> bool:
    """Whether a process group is up (``torchrun`` with more than one process)."""
    d = dist()
    return d.is_available() and d.is_initialized()


def world() -> Tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    if is_distributed():
        return dist().get_rank(), dist().get_world_size()
    return 0, 1


def init_distributed(device_pref: str = "auto") -> Tuple[int, int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment if needed; returns (rank, world, local_rank)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if size > 1 and not is_distributed():
        use_cuda = torch.cuda.is_available() and device_pref in ("auto",) or str(device_pref).startswith("cuda")
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist().init_process_group(backend=backend)
    rank, size = world()
    return rank, size, local_rank


def all_reduce_(t: Tensor) -> Tensor:
    """Sum ``t`` over the ranks in place (nothing outside a process group); returns ``t``."""
    if is_distributed():
        dist().all_reduce(t)
    return t
