"""Memory measurements shared by the trainer, the benchmarks and the cost experiment.

* :func:`peak_memory` -- the peak of a run so far: ``torch.cuda.max_memory_allocated`` on CUDA,
  the process's peak resident size (``getrusage``) on the CPU, in GiB.
* :func:`process_memory_bytes` / :func:`reset_peak_rss` -- the resident size and its high-water
  mark from ``/proc/self/status`` (Linux), and a reset of the mark, so that one computation's
  extra peak can be measured inside a process.
"""
from __future__ import annotations

import resource
import sys
from typing import Dict

import torch

__all__ = ["peak_memory", "process_memory_bytes", "reset_peak_rss"]

GIB = 1024 ** 3


def peak_memory(device: torch.device) -> Dict[str, float]:
    """``peak_mem_gb`` (the device's peak allocation, or the CPU's peak resident size) and
    ``peak_rss_gb`` (always the process's peak resident size), in GiB."""
    out: Dict[str, float] = {}
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / GIB
        out["peak_mem_reserved_gb"] = torch.cuda.max_memory_reserved(device) / GIB
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    scale = 1024 if sys.platform != "darwin" else 1
    out["peak_rss_gb"] = rss_kb * scale / GIB
    if device.type != "cuda":
        out["peak_mem_gb"] = out["peak_rss_gb"]
    return out


def process_memory_bytes(field: str = "VmRSS") -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset this process's peak resident size to its current one; returns that size in bytes.

    Freed heap is given back to the OS first, so that later allocations show up as new resident
    pages; the high-water mark is otherwise inherited across fork/exec and from the set-up.
    Linux only (``/proc/self/clear_refs``).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return process_memory_bytes("VmRSS")
