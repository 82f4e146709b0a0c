"""Per-step timing of training: where the time of a step goes (backbone, nearest-ETF solve,
DDN backward, optimiser), measured with CUDA events (no host sync in the loop) or wall clocks.
See :mod:`guiding_nc.training.trainer` ("Timing split") for what each segment covers.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor

__all__ = ["StepTimer"]


class StepTimer:
    """Accumulates per-segment durations (milliseconds) over an epoch; see the module docstring."""

    def __init__(self, mode: str, device: torch.device):
        self.mode = mode
        self.enabled = mode != "off"
        self.cuda = device.type == "cuda"
        self.use_events = self.enabled and self.cuda and mode == "events"
        self._open: Dict[str, Any] = {}
        self._pending: List[Tuple[str, Any, Any]] = []
        self.totals: Dict[str, float] = defaultdict(float)
        self.counts: Dict[str, int] = defaultdict(int)

    def start(self, name: str) -> None:
        if not self.enabled:
            return
        if self.use_events:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._open[name] = ev
        else:
            if self.cuda:
                torch.cuda.synchronize()
            self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        if not self.enabled or name not in self._open:
            return
        begin = self._open.pop(name)
        if self.use_events:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._pending.append((name, begin, ev))
            if len(self._pending) > 256:
                self._poll()
        else:
            if self.cuda:
                torch.cuda.synchronize()
            self.totals[name] += (time.perf_counter() - begin) * 1e3
            self.counts[name] += 1

    def add(self, name: str, ms: float) -> None:
        self.totals[name] += ms
        self.counts[name] += 1

    def _poll(self) -> None:
        keep = []
        for i, (name, a, b) in enumerate(self._pending):
            if b.query():
                self.totals[name] += a.elapsed_time(b)
                self.counts[name] += 1
            else:
                keep = self._pending[i:]
                break
        self._pending = keep

    def backward_hooks(self, U: Tensor, H: Tensor) -> None:
        """Time the DDN backward: from grad(U*) ready to grad(H) ready."""
        if not self.enabled:
            return

        def _start(grad):
            self.start("ddn_backward")

        def _stop(grad):
            self.stop("ddn_backward")

        U.register_hook(_start)
        H.register_hook(_stop)

    def collect(self, steps: int) -> Dict[str, float]:
        """Mean milliseconds per step of each segment (and derived splits); resets the totals."""
        if self.use_events and self._pending:
            torch.cuda.synchronize()
            for name, a, b in self._pending:
                self.totals[name] += a.elapsed_time(b)
                self.counts[name] += 1
            self._pending = []
        steps = max(int(steps), 1)
        t = {k: v / steps for k, v in self.totals.items()}
        out = {f"time_{k}_ms": v for k, v in sorted(t.items())}
        if self.enabled:
            out["time_backbone_ms"] = t.get("backbone_forward", 0.0) + t.get("backward", 0.0) - t.get("ddn_backward", 0.0)
            out.setdefault("time_etf_forward_ms", 0.0)
            out.setdefault("time_ddn_backward_ms", 0.0)
        self.totals = defaultdict(float)
        self.counts = defaultdict(int)
        self._open = {}
        return out
