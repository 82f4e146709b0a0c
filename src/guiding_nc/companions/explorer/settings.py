"""The explorer's settings: :class:`ExplorerSettings` (the reader's choices, validated with clear
errors) and the constants the explorer's runs and controls share (book page 06).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ...core.methods import METHOD_NAMES, METHODS
from ...training.optim import OPTIMIZER_NAMES

__all__ = [
    "MAX_3D_CLASSES",
    "ExplorerSettingsError",
    "ExplorerSettings",
    "MAIN_METHODS",
    "EARLY_STEPS",
    "METHOD_LABELS",
    "DEFAULT_LR",
    "METRIC_KEYS",
]

# The most classes the explorer draws in 3-D: a simplex of C vertices spans C - 1 dimensions, so
# three axes show 3/(C - 1) of it, and beyond six classes the vertices crowd into one another.
MAX_3D_CLASSES = 6

MAIN_METHODS: Tuple[str, ...] = ("standard", "fixed", "implicit")
METHOD_LABELS: Dict[str, str] = {name: m.label for name, m in METHODS.items()}  # the registry's
# Learning rates that train the default explorer UFM (C=4, d=16, N=40) in about 150 steps.
DEFAULT_LR: Dict[str, float] = {"sgd": 1.0, "adam": 0.05}
# The evaluation metrics recorded by the trainer (its ``train_<key>`` columns).
METRIC_KEYS: Tuple[str, ...] = ("loss", "top1", "nc1", "nc2", "nc3", "equinorm", "ncc_mismatch",
                                "cosine_margin_mean", "cosine_margin_min")
MAX_SNAPSHOTS = 200
MAX_EVALS = 300
# Every one of the first EARLY_STEPS steps is evaluated and snapshotted whatever the schedule:
# that is where most of the motion happens.
EARLY_STEPS = 20


class ExplorerSettingsError(ValueError):
    """Settings the explorer cannot run; the message says which field and why."""


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


# ------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class ExplorerSettings:
    """One UFM run of the explorer.

    ``C`` classes, ``N`` free features (``N/C`` per class) of dimension ``d``; full-batch
    training for ``steps`` optimiser steps.  ``method`` is one of
    :data:`guiding_nc.core.methods.METHOD_NAMES`; ``optimizer`` one of ``agd`` (uses ``gain``; ``lr``,
    if given, is AGD's dimensionless multiplier), ``sgd`` or ``adam`` (use ``lr``; default
    :data:`DEFAULT_LR`).  ``delta`` is the proximal coefficient of the implicit method (ignored
    by the others).  ``snapshot_every`` / ``eval_every`` (``None`` = automatic, at most
    :data:`MAX_SNAPSHOTS` snapshots and :data:`MAX_EVALS` evaluations) set how often class
    means are stored and metrics evaluated; the first :data:`EARLY_STEPS` steps are always
    evaluated and stored, since most of the motion happens there.  ``num_threads``: torch's CPU threads during the
    run (``None`` = one thread for small problems, ``N * d <= 2**22``, whose matrices are too
    small to gain from threading -- on a busy machine extra threads make them many times
    slower; torch's setting is restored afterwards).
    """

    C: int = 4
    d: int = 16
    N: int = 40
    method: str = "implicit"
    tau: float = 5.0
    delta: float = 1e-3
    optimizer: str = "agd"
    gain: float = 10.0
    lr: Optional[float] = None
    steps: int = 150
    seed: int = 0
    snapshot_every: Optional[int] = None
    eval_every: Optional[int] = None
    device: str = "cpu"
    num_threads: Optional[int] = None

    def __post_init__(self) -> None:
        err = ExplorerSettingsError
        for name in ("C", "d", "N", "steps", "seed"):
            v = getattr(self, name)
            if not is_int(v):
                raise err(f"{name} must be an integer, got {v!r} ({type(v).__name__})")
        if self.C < 2:
            raise err(f"C (number of classes) must be at least 2, got {self.C}")
        if self.d < self.C:
            raise err(f"d (feature dimension) must be at least C={self.C}: a simplex ETF of C vertices "
                      f"needs d >= C; got d={self.d}")
        if self.N < self.C or self.N % self.C:
            raise err(f"N (number of samples) must be a positive multiple of C={self.C} so every class has "
                      f"N/C samples; got N={self.N}")
        if self.steps < 1:
            raise err(f"steps must be > 0, got {self.steps}")
        if self.seed < 0:
            raise err(f"seed must be >= 0, got {self.seed}")
        if not isinstance(self.method, str) or self.method not in METHOD_NAMES:
            raise err(f"unknown method {self.method!r}; choose one of {', '.join(METHOD_NAMES)}")
        if not isinstance(self.optimizer, str) or self.optimizer.lower() not in OPTIMIZER_NAMES:
            raise err(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZER_NAMES)}")
        if self.optimizer != self.optimizer.lower():
            object.__setattr__(self, "optimizer", self.optimizer.lower())
        for name in ("tau", "delta", "gain"):
            v = getattr(self, name)
            if not is_real(v) or float(v) <= 0:
                raise err(f"{name} must be a finite number > 0, got {v!r}")
        if self.lr is not None and (not is_real(self.lr) or float(self.lr) <= 0):
            raise err(f"lr must be a finite number > 0 (or None for the default), got {self.lr!r}")
        for name in ("snapshot_every", "eval_every", "num_threads"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 1):
                raise err(f"{name} must be a positive integer or None (automatic), got {v!r}")
        if not isinstance(self.device, str):
            raise err(f"device must be a string such as 'cpu' or 'cuda', got {self.device!r}")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise err(f"invalid device {self.device!r}: {exc}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise err("device 'cuda' requested but CUDA is not available; use device='cpu'")

    # -- derived ------------------------------------------------------------------------
    @property
    def effective_lr(self) -> Optional[float]:
        """The learning rate handed to the optimiser (``None`` = AGD's default multiplier 1)."""
        if self.lr is not None:
            return float(self.lr)
        return DEFAULT_LR.get(self.optimizer)

    @property
    def effective_num_threads(self) -> Optional[int]:
        """Threads to use (``None``: leave torch's setting alone)."""
        if self.num_threads is not None:
            return int(self.num_threads)
        if torch.device(self.device).type == "cpu" and self.N * self.d <= 2 ** 22:
            return 1
        return None

    @property
    def effective_snapshot_every(self) -> int:
        return self.snapshot_every or max(1, math.ceil(self.steps / MAX_SNAPSHOTS))

    @property
    def effective_eval_every(self) -> int:
        return self.eval_every or max(1, math.ceil(self.steps / MAX_EVALS))

    @property
    def label(self) -> str:
        return METHOD_LABELS.get(self.method, self.method)

    def with_(self, **changes: Any) -> "ExplorerSettings":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_config(self, run_dir: str):
        """The :class:`~guiding_nc.training.config.TrainConfig` of this run (UFM defaults + these settings)."""
        from ...training.config import load_config

        overrides = dict(
            name="explorer", run_dir=str(run_dir), overwrite=True, method=self.method, seed=int(self.seed),
            num_classes=int(self.C), feature_dim=int(self.d), num_samples=int(self.N), batch_size=int(self.N),
            epochs=int(self.steps), eval_every=self.effective_eval_every, eval_test=False, report_epochs=[],
            checkpoint_every=0, record_step_losses=True, record_step_accuracy=True, save_margins=False,
            progress=False, verbose=False, timing="off", device=self.device, tau=float(self.tau),
            delta=float(self.delta), optimizer=self.optimizer, gain=float(self.gain), lr=self.effective_lr,
            weight_decay=5e-4,  # stated, as every experiment does: Adam and SGD apply it, AGD has none
        )
        return load_config("ufm_base", overrides)
