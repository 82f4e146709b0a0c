"""Interactive unconstrained-feature-model (UFM) explorer: the logic behind book page 06.

One concept, kept in one module although it passes 800 lines: the explorer's settings, runs and widget.

Everything the widget does is a plain function here, so tests (and readers without a
browser) can call it directly:

* :class:`ExplorerSettings` -- the reader's choices (C, d, N, method, tau, delta, optimiser,
  gain or learning rate, steps, seed), validated with clear errors.
* :func:`run_ufm` -- builds a :class:`~guiding_nc.training.config.TrainConfig` from the settings and
  trains it with the project's :class:`~guiding_nc.training.trainer.Trainer` (full batch, so one epoch
  is one optimiser step).  A trainer callback records the evaluation metrics and snapshots
  of the centred class means, the classifier and the nearest simplex ETF; returns an
  :class:`ExplorerResult`.
* :func:`projection_frames` -- 2-D or 3-D coordinates of the class means, the classifier rows
  and the nearest ETF vertices over time, in **one fixed basis** (so frames are comparable).
* :func:`build_explorer` -- the ipywidgets UI; its Run handler only calls the functions above
  and the figures of :mod:`guiding_nc.companions.plotting.explorer`.

Scales.  Every snapshot is taken on the features the classifier sees (``head.transform``:
on the unit sphere, except for ``standard-no-norm``).  The centred class means are scaled to
unit Frobenius norm, ``H~ = Hbar / ||Hbar||_F`` (Eq. 5); the nearest ETF is ``U* M~`` with
``U* = nearest_etf(H~)`` (Eq. 6 with the paper's two-stage start, so it is unique), whose
columns all have norm ``1/sqrt(C)``; the classifier is drawn as ``W^T / ||W||_F`` (same
scale when its rows have equal norms).  ``etf_distance = ||H~ - U* M~||_F`` is zero exactly
when the class means form a simplex ETF.

The projection basis.  Take the reference frame's nearest ETF ``E = U* M~`` (by default the
last snapshot).  For real Fourier vectors ``f_k`` of length ``C`` (orthogonal to the ones
vector) the vectors ``E f_k`` are orthogonal in ``R^d``; normalised, they form the basis.  In
it the reference ETF's vertices lie on a regular C-gon (2-D; for C = 4 in 3-D a regular
tetrahedron), so "the class means reached the ETF" reads as "the dots sit on the polygon's
corners".  With C = 2 (a 1-D ETF) or C = 3 in 3-D the remaining axes are the directions in
which the class means vary most, orthogonal to the ETF.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..core.etf import standard_simplex_etf
from ..core.methods import METHOD_NAMES, METHODS
from ..core.nearest import nearest_etf
from ..training.optim import OPTIMIZER_NAMES

__all__ = [
    "ExplorerSettingsError",
    "ExplorerSettings",
    "ExplorerResult",
    "ProjectionFrames",
    "MAIN_METHODS",
    "EARLY_STEPS",
    "METHOD_LABELS",
    "DEFAULT_LR",
    "METRIC_KEYS",
    "run_ufm",
    "run_comparison",
    "summary_markdown",
    "projection_frames",
    "projection_basis",
    "build_explorer",
    "Explorer",
]

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


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


# ------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class ExplorerSettings:
    """One UFM run of the explorer.

    ``C`` classes, ``N`` free features (``N/C`` per class) of dimension ``d``; full-batch
    training for ``steps`` optimiser steps.  ``method`` is one of
    :data:`guiding_nc.core.heads.METHOD_NAMES`; ``optimizer`` one of ``agd`` (uses ``gain``; ``lr``,
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
            if not _is_int(v):
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
            if not _is_real(v) or float(v) <= 0:
                raise err(f"{name} must be a finite number > 0, got {v!r}")
        if self.lr is not None and (not _is_real(self.lr) or float(self.lr) <= 0):
            raise err(f"lr must be a finite number > 0 (or None for the default), got {self.lr!r}")
        for name in ("snapshot_every", "eval_every", "num_threads"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
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
        from ..training.config import load_config

        overrides = dict(
            name="explorer", run_dir=str(run_dir), overwrite=True, method=self.method, seed=int(self.seed),
            num_classes=int(self.C), feature_dim=int(self.d), num_samples=int(self.N), batch_size=int(self.N),
            epochs=int(self.steps), eval_every=self.effective_eval_every, eval_test=False, report_epochs=[],
            checkpoint_every=0, record_step_losses=True, record_step_accuracy=True, save_margins=False,
            progress=False, verbose=False, timing="off", device=self.device, tau=float(self.tau),
            delta=float(self.delta), optimizer=self.optimizer, gain=float(self.gain), lr=self.effective_lr,
        )
        return load_config("ufm_base", overrides)


# ------------------------------------------------------------------------------- results
@dataclass
class ExplorerResult:
    """What one explorer run recorded.

    * ``eval_steps`` ``(E,)`` and ``metrics[key]`` ``(E,)`` for ``key`` in :data:`METRIC_KEYS`:
      the trainer's evaluation on all N features after that many steps (step 0 = the
      initialisation).  ``top1`` is a fraction in ``[0, 1]``.
    * ``step_loss`` / ``step_accuracy`` ``(steps,)``: the training-step loss and accuracy, entry
      ``t`` measured at the parameters after ``t`` steps (the batch is the whole data set).
    * ``snapshot_steps`` ``(S,)``; ``means``, ``etf``, ``classifier`` ``(S, d, C)``: the centred,
      unit-Frobenius class means ``H~``, the nearest ETF ``U* M~`` and ``W^T/||W||_F``;
      ``etf_distance`` ``(S,)`` ``= ||H~ - U* M~||_F``.
    """

    settings: ExplorerSettings
    eval_steps: np.ndarray
    metrics: Dict[str, np.ndarray]
    step_loss: np.ndarray
    step_accuracy: np.ndarray
    snapshot_steps: np.ndarray
    means: np.ndarray
    etf: np.ndarray
    classifier: np.ndarray
    etf_distance: np.ndarray
    steps_done: int
    wall_time_s: float
    status: str = "completed"

    @property
    def method(self) -> str:
        return self.settings.method

    @property
    def label(self) -> str:
        return self.settings.label

    def final(self, key: str) -> float:
        """The last evaluated value of a metric (``etf_distance`` from the last snapshot)."""
        if key == "etf_distance":
            return float(self.etf_distance[-1])
        return float(self.metrics[key][-1])

    def first_step(self, key: str, threshold: float, *, below: bool = False) -> Optional[int]:
        """First evaluated step at which metric ``key`` is >= ``threshold`` (``<=`` with
        ``below=True``); ``None`` if it never gets there."""
        x, y = (self.snapshot_steps, self.etf_distance) if key == "etf_distance" else (self.eval_steps,
                                                                                      self.metrics[key])
        hit = np.flatnonzero(y <= threshold if below else y >= threshold)
        return int(x[hit[0]]) if hit.size else None

    @property
    def etf_shift(self) -> float:
        """``||U*_0 M~ - U*_T M~||_F``: how far the ETF nearest to the class means moved between
        the first and the last snapshot (0: the means collapsed onto the ETF that was nearest to
        them at the start; each vertex has norm ``1/sqrt(C)``, so the value is at most 2)."""
        return float(np.linalg.norm(self.etf[-1].astype(np.float64) - self.etf[0].astype(np.float64)))

    def summary(self) -> Dict[str, Any]:
        """One table row: method, steps, first step with 100% train accuracy, final loss,
        accuracy, NC1-NC3, distance to the nearest ETF and how far that ETF moved."""
        out: Dict[str, Any] = {"method": self.method, "steps": self.steps_done,
                               "first step at 100% acc.": self.first_step("top1", 1.0)}
        for key in ("loss", "top1", "nc1", "nc2", "nc3", "etf_distance"):
            out[key] = self.final(key)
        out["etf_shift"] = self.etf_shift
        out["wall_time_s"] = self.wall_time_s
        return out


class _Recorder:
    """Trainer callback: evaluation rows and class-mean snapshots."""

    def __init__(self, settings: ExplorerSettings, on_update: Optional[Callable[[ExplorerResult], Any]],
                 update_every: int):
        self.s = settings
        self.on_update = on_update
        self.update_every = update_every
        self.eval_steps: List[int] = []
        self.metrics: Dict[str, List[float]] = {k: [] for k in METRIC_KEYS}
        self.snap_steps: List[int] = []
        self.means: List[np.ndarray] = []
        self.etf: List[np.ndarray] = []
        self.classifier: List[np.ndarray] = []
        self.dist: List[float] = []
        self.M = standard_simplex_etf(settings.C, dtype=torch.float64)
        self.trainer = None
        self.t0 = time.perf_counter()

    # -- recording -------------------------------------------------------------------
    def add_eval(self, step: int, row: Mapping[str, Any]) -> None:
        self.eval_steps.append(int(step))
        for k in METRIC_KEYS:
            self.metrics[k].append(float(row.get(k, float("nan"))))

    @torch.no_grad()
    def snapshot(self, trainer, step: int) -> None:
        head = trainer.head
        feats = trainer.network.backbone.features.detach()
        h = head.transform(feats).to(torch.float64).cpu()
        y = torch.as_tensor(trainer.train_ds.targets).long()
        C = self.s.C
        onehot = torch.nn.functional.one_hot(y, C).to(torch.float64)  # (N, C)
        means = (onehot.T @ h) / onehot.sum(0).unsqueeze(1)            # (C, d)
        hbar = (means - h.mean(0)).T                                   # (d, C), balanced classes
        Ht = hbar / hbar.norm().clamp_min(1e-300)
        U = nearest_etf(Ht, None, float(self.s.delta))
        E = U @ self.M
        W = head.weight.detach().to(torch.float64).cpu()
        Wt = W.T / W.norm().clamp_min(1e-300)
        self.snap_steps.append(int(step))
        self.means.append(Ht.numpy().astype(np.float32))
        self.etf.append(E.numpy().astype(np.float32))
        self.classifier.append(Wt.numpy().astype(np.float32))
        self.dist.append(float((Ht - E).norm()))

    def __call__(self, event: str, trainer) -> None:
        if event != "epoch_end":
            return
        row = trainer.history[-1]
        step = int(trainer.global_step)
        last = trainer.epoch >= trainer.cfg.epochs
        if "train_top1" in row:
            self.add_eval(step, {k[len("train_"):]: v for k, v in row.items() if k.startswith("train_")})
        elif step <= EARLY_STEPS:
            metrics, _ = trainer.evaluate("train")
            self.add_eval(step, metrics)
        if step % self.s.effective_snapshot_every == 0 or step <= EARLY_STEPS or last:
            self.snapshot(trainer, step)
        if self.on_update is not None and (step % self.update_every == 0 or last):
            self.on_update(self.result(trainer, status="completed" if last else "running"))

    def result(self, trainer, status: str = "completed") -> ExplorerResult:
        d, C = self.s.d, self.s.C
        stack = lambda xs: np.stack(xs) if xs else np.zeros((0, d, C), dtype=np.float32)
        steps_done = int(trainer.global_step)
        return ExplorerResult(
            settings=self.s,
            eval_steps=np.asarray(self.eval_steps, dtype=np.int64),
            metrics={k: np.asarray(v, dtype=np.float64) for k, v in self.metrics.items()},
            step_loss=np.asarray(trainer.step_losses[:steps_done], dtype=np.float64),
            step_accuracy=np.asarray(trainer.step_accuracies[:steps_done], dtype=np.float64),
            snapshot_steps=np.asarray(self.snap_steps, dtype=np.int64),
            means=stack(self.means), etf=stack(self.etf), classifier=stack(self.classifier),
            etf_distance=np.asarray(self.dist, dtype=np.float64),
            steps_done=steps_done, wall_time_s=time.perf_counter() - self.t0, status=status,
        )


def run_ufm(settings: Union[ExplorerSettings, Mapping[str, Any]], *,
            on_update: Optional[Callable[[ExplorerResult], Any]] = None,
            update_every: Optional[int] = None) -> ExplorerResult:
    """Train one UFM with the project's :class:`~guiding_nc.training.trainer.Trainer` and record it.

    ``settings``: an :class:`ExplorerSettings` or a mapping of its fields.  ``on_update`` is
    called with the partial :class:`ExplorerResult` every ``update_every`` steps (default:
    about ten times per run) and once at the end -- the widget redraws from it.  The trainer's
    run directory is a temporary folder, deleted afterwards.  Raises
    :class:`ExplorerSettingsError` for bad settings and
    :class:`~guiding_nc.training.trainer.NonFiniteError` if training diverges (e.g. a too-large SGD
    learning rate).
    """

    if isinstance(settings, Mapping):
        settings = ExplorerSettings(**settings)
    if not isinstance(settings, ExplorerSettings):
        raise TypeError(f"settings must be an ExplorerSettings or a mapping, got {type(settings).__name__}")
    if update_every is None:
        update_every = max(1, settings.steps // 10)
    if not _is_int(update_every) or update_every < 1:
        raise ValueError(f"update_every must be a positive integer, got {update_every!r}")
    rec = _Recorder(settings, on_update, int(update_every))
    threads_before = torch.get_num_threads()
    threads = settings.effective_num_threads
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(settings, rec)
    finally:
        if threads is not None:
            torch.set_num_threads(threads_before)


def _run(settings: ExplorerSettings, rec: "_Recorder") -> ExplorerResult:
    from ..training.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="guiding_nc_explorer_") as tmp:
        trainer = Trainer(settings.to_config(tmp), callbacks=[rec], argv=["guiding_nc.companions.explorer"])
        rec.trainer = trainer
        metrics0, _ = trainer.evaluate("train")
        rec.add_eval(0, metrics0)
        rec.snapshot(trainer, 0)
        rec.t0 = time.perf_counter()
        trainer.fit()
        return rec.result(trainer, status=trainer.status)


_SUMMARY_HEADERS = {
    "method": "method", "first step at 100% acc.": "100% train acc. at step", "loss": "loss",
    "top1": "train acc. %", "nc1": "NC1", "nc2": "NC2", "nc3": "NC3", "etf_distance": "distance to ETF",
    "etf_shift": "ETF moved by",
}


def summary_markdown(results: Union[ExplorerResult, Sequence[ExplorerResult], Mapping[str, ExplorerResult]]) -> str:
    """A Markdown table of :meth:`ExplorerResult.summary` for one or several runs: final values,
    the first step with 100% train accuracy, the final distance of the class means to their
    nearest ETF and how far that ETF moved since step 0 (:attr:`ExplorerResult.etf_shift`)."""
    if isinstance(results, ExplorerResult):
        results = [results]
    elif isinstance(results, Mapping):
        results = list(results.values())
    rows = [r.summary() for r in results]
    keys = list(_SUMMARY_HEADERS)
    lines = ["| " + " | ".join(_SUMMARY_HEADERS[k] for k in keys) + " |", "|" + "---|" * len(keys)]
    for row, r in zip(rows, results):
        cells = []
        for k in keys:
            v = row[k]
            if k == "method":
                cells.append(r.label)
            elif v is None:
                cells.append("never")
            elif k == "top1":
                cells.append(f"{100 * v:.1f}")
            elif isinstance(v, float):
                cells.append(f"{v:.3g}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_comparison(settings: ExplorerSettings, methods: Sequence[str] = MAIN_METHODS, *,
                   on_update: Optional[Callable[[str, ExplorerResult], Any]] = None,
                   update_every: Optional[int] = None) -> Dict[str, ExplorerResult]:
    """The same settings for several methods (same seed, same initial features): ``{method: result}``."""
    out: Dict[str, ExplorerResult] = {}
    for m in methods:
        cb = None if on_update is None else (lambda r, m=m: on_update(m, r))
        out[m] = run_ufm(settings.with_(method=m), on_update=cb, update_every=update_every)
    return out


# ---------------------------------------------------------------------------- projection
@dataclass
class ProjectionFrames:
    """Low-dimensional coordinates of one run, all in the same basis.

    ``means``, ``etf``, ``classifier``: ``(S, C, k)`` (one row per class, ``k`` = 2 or 3);
    ``reference`` ``(C, k)``: the vertices of the ETF that defined the basis; ``basis``
    ``(d, k)`` orthonormal columns; ``etf_norms`` ``(S, C)``: full-dimensional norms of the
    nearest-ETF vertices (all ``1/sqrt(C)``); ``captured`` ``(S,)``: the fraction of
    ``||H~||_F^2`` (= 1) that lies in the projection plane/space.
    """

    steps: np.ndarray
    means: np.ndarray
    etf: np.ndarray
    classifier: np.ndarray
    reference: np.ndarray
    basis: np.ndarray
    etf_norms: np.ndarray
    captured: np.ndarray
    reference_step: int
    dims: int
    method: str = ""
    label: str = ""

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[1])

    def index_of(self, step: int) -> int:
        """The snapshot closest to ``step`` (negative = from the end, like a list index)."""
        if step < 0:
            return int(len(self.steps) + step)
        return int(np.argmin(np.abs(self.steps - step)))


def _fourier_vectors(C: int) -> List[np.ndarray]:
    """Real Fourier vectors of length C orthogonal to the ones vector, lowest frequency first."""
    c = np.arange(C)
    out = []
    for j in range(1, C // 2 + 1):
        for fn in (np.cos, np.sin):
            v = fn(2 * np.pi * j * c / C)
            if np.linalg.norm(v) > 1e-8:
                out.append(v / np.linalg.norm(v))
    return out[: C - 1]


def projection_basis(etf: np.ndarray, dims: int = 2, extra: Optional[np.ndarray] = None) -> np.ndarray:
    """An orthonormal ``(d, dims)`` basis in which the ETF ``etf`` ``(d, C)`` is a regular polygon.

    Columns: ``etf @ f_k`` normalised, for the lowest-frequency Fourier vectors ``f_k``; if the
    ETF spans fewer than ``dims`` directions (C = 2, or C = 3 in 3-D) the basis is completed
    with the principal directions of ``extra`` (``(n, d)`` points, e.g. all class-mean
    snapshots) orthogonal to it, then with coordinate axes.
    """
    E = np.asarray(etf, dtype=np.float64)
    d, C = E.shape
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if d < dims:
        raise ValueError(f"a {dims}-D projection needs d >= {dims}, got d={d}")
    cols: List[np.ndarray] = []

    def add(v: np.ndarray) -> bool:
        for b in cols:
            v = v - (b @ v) * b
        n = np.linalg.norm(v)
        if n > 1e-6:
            cols.append(v / n)
            return True
        return False

    for f in _fourier_vectors(C):
        if len(cols) == dims:
            break
        add(E @ f)
    if len(cols) < dims and extra is not None and len(extra):
        X = np.asarray(extra, dtype=np.float64)
        X = X - X.mean(0)
        for b in cols:
            X = X - np.outer(X @ b, b)
        _, _, Vt = np.linalg.svd(X, full_matrices=False)
        for v in Vt:
            if len(cols) == dims:
                break
            add(v)
    for i in range(d):
        if len(cols) == dims:
            break
        add(np.eye(d)[i])
    return np.stack(cols, axis=1)


def projection_frames(result: ExplorerResult, dims: int = 2, *, reference: int = -1) -> ProjectionFrames:
    """Coordinates of the class means, classifier rows and nearest-ETF vertices over time.

    One basis for all frames, built from the nearest ETF of snapshot ``reference`` (default:
    the last one, where the means are closest to collapse; see :func:`projection_basis`).
    ``dims`` = 2, or 3 (needs C >= 4 so that the ETF itself is 3-D).
    """
    if not isinstance(result, ExplorerResult):
        raise TypeError(f"projection_frames expects an ExplorerResult, got {type(result).__name__}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    S, d, C = result.means.shape
    if S == 0:
        raise ValueError("the result holds no snapshots")
    if dims == 3 and C < 4:
        raise ValueError(f"a 3-D projection needs C >= 4 classes (the ETF of C={C} classes spans only "
                         f"{C - 1} dimension{'s' if C > 2 else ''}); use dims=2")
    r = reference if reference >= 0 else S + reference
    if not 0 <= r < S:
        raise IndexError(f"reference snapshot {reference} out of range for {S} snapshots")
    extra = result.means.transpose(0, 2, 1).reshape(-1, d)  # every class mean of every frame
    B = projection_basis(result.etf[r], dims, extra=extra)  # (d, k)
    proj = lambda X: np.einsum("sdc,dk->sck", X.astype(np.float64), B)
    means = proj(result.means)
    return ProjectionFrames(
        steps=result.snapshot_steps.copy(), means=means, etf=proj(result.etf), classifier=proj(result.classifier),
        reference=result.etf[r].astype(np.float64).T @ B, basis=B,
        etf_norms=np.linalg.norm(result.etf.astype(np.float64), axis=1),
        captured=(means ** 2).sum(axis=(1, 2)) / np.maximum((result.means.astype(np.float64) ** 2).sum(axis=(1, 2)),
                                                            1e-300),
        reference_step=int(result.snapshot_steps[r]), dims=dims, method=result.method, label=result.label,
    )


# -------------------------------------------------------------------------------- widget
class Explorer:
    """The ipywidgets UI of :func:`build_explorer`.

    ``ui`` is the top-level widget (displaying an ``Explorer`` displays it); ``controls`` maps
    each setting to its widget; ``min_redraw_s`` throttles the live redraws during a run; :meth:`settings` reads them; :meth:`run` is the Run button's
    handler (call it directly to run without a browser); ``results`` and ``figures`` hold what
    the last run produced.
    """

    def __init__(self, defaults: Optional[ExplorerSettings] = None, *, live: bool = True, compare: bool = False,
                 dims3: bool = False):
        import ipywidgets as w

        s = defaults or ExplorerSettings()
        self.defaults = s
        self.live = live
        self.min_redraw_s = 2.0  # live redraws at most this often (drawing costs more than training)
        self._last_draw = 0.0
        style = {"description_width": "150px"}
        lay = w.Layout(width="330px")
        self.controls: Dict[str, Any] = {
            "C": w.BoundedIntText(value=s.C, min=2, max=100, description="classes C", style=style, layout=lay),
            "d": w.BoundedIntText(value=s.d, min=2, max=2048, description="feature dim d", style=style, layout=lay),
            "N": w.BoundedIntText(value=s.N, min=2, max=20000, description="samples N (× of C)", style=style,
                                  layout=lay),
            "method": w.Dropdown(options=[(METHOD_LABELS[m], m) for m in METHOD_NAMES], value=s.method,
                                 description="method", style=style, layout=lay),
            "compare": w.Checkbox(value=bool(compare), description="compare standard / fixed / implicit",
                                  indent=False, layout=w.Layout(width="330px")),
            "tau": w.BoundedFloatText(value=s.tau, min=1e-3, max=1e3, step=0.5, description="temperature τ",
                                      style=style, layout=lay),
            "delta": w.FloatLogSlider(value=s.delta, base=10, min=-6, max=0, step=0.5,
                                      description="proximal δ", readout_format=".0e", style=style, layout=lay),
            "optimizer": w.Dropdown(options=list(OPTIMIZER_NAMES), value=s.optimizer, description="optimiser",
                                    style=style, layout=lay),
            "gain": w.BoundedFloatText(value=s.gain, min=1e-3, max=1e3, step=1.0, description="AGD gain",
                                       style=style, layout=lay),
            "lr": w.FloatLogSlider(value=s.effective_lr or DEFAULT_LR["sgd"], base=10, min=-4, max=1, step=0.1,
                                   description="learning rate", readout_format=".2g", style=style, layout=lay),
            "steps": w.IntSlider(value=s.steps, min=10, max=2000, step=10, description="steps", style=style,
                                 layout=lay),
            "seed": w.BoundedIntText(value=s.seed, min=0, max=10 ** 6, description="seed", style=style, layout=lay),
            "dims3": w.Checkbox(value=bool(dims3), description="also show a 3-D projection (C ≥ 4)", indent=False,
                                layout=w.Layout(width="330px")),
        }
        self.run_button = w.Button(description="Run", button_style="primary", icon="play",
                                   tooltip="train the UFM with these settings")
        self.status = w.HTML(value="Pick settings and press <b>Run</b>.")
        self.frame_slider = w.IntSlider(value=0, min=0, max=0, description="snapshot", disabled=True,
                                        continuous_update=False, style=style, layout=w.Layout(width="500px"))
        self.curves_out = w.Output()
        self.projection_out = w.Output()
        self.results: Dict[str, ExplorerResult] = {}
        self.frames: Dict[str, ProjectionFrames] = {}
        self.figures: Dict[str, Any] = {}
        self.error: Optional[str] = None
        self.run_button.on_click(self._on_click)
        self.controls["optimizer"].observe(self._sync_optimizer, names="value")
        self.controls["lr"].observe(self._lr_touched, names="value")
        self.frame_slider.observe(self._on_frame, names="value")
        self._lr_set_by_user = False
        self._sync_optimizer()
        c = self.controls
        left = w.VBox([w.HTML("<b>Model</b>"), c["C"], c["d"], c["N"], c["method"], c["compare"], c["tau"],
                       c["delta"]])
        right = w.VBox([w.HTML("<b>Optimisation</b>"), c["optimizer"], c["gain"], c["lr"], c["steps"], c["seed"],
                        c["dims3"]])
        self.ui = w.VBox([w.HBox([left, right]), w.HBox([self.run_button, self.status]), self.curves_out,
                          self.frame_slider, self.projection_out])

    # -- display ---------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

    # -- controls --------------------------------------------------------------------
    def _sync_optimizer(self, change=None) -> None:
        opt = self.controls["optimizer"].value
        self.controls["gain"].disabled = opt != "agd"
        self.controls["lr"].disabled = opt == "agd"
        if opt in DEFAULT_LR and not self._lr_set_by_user:
            self._setting_lr = True
            self.controls["lr"].value = DEFAULT_LR[opt]
            self._setting_lr = False

    def _lr_touched(self, change) -> None:
        if not getattr(self, "_setting_lr", False):
            self._lr_set_by_user = True

    def settings(self, method: Optional[str] = None) -> ExplorerSettings:
        """The settings the controls describe (raises :class:`ExplorerSettingsError`)."""
        c = self.controls
        opt = c["optimizer"].value
        return replace(
            self.defaults, C=int(c["C"].value), d=int(c["d"].value), N=int(c["N"].value),
            method=method or c["method"].value, tau=float(c["tau"].value), delta=float(c["delta"].value),
            optimizer=opt, gain=float(c["gain"].value), lr=None if opt == "agd" else float(c["lr"].value),
            steps=int(c["steps"].value), seed=int(c["seed"].value),
        )

    def set(self, **values: Any) -> "Explorer":
        """Set controls by name (``C``, ``d``, ``N``, ``method``, ``compare``, ``tau``, ``delta``,
        ``optimizer``, ``gain``, ``lr``, ``steps``, ``seed``, ``dims3``); returns ``self``."""
        for k, v in values.items():
            if k not in self.controls:
                raise KeyError(f"no control {k!r}; controls are {', '.join(self.controls)}")
            if k == "lr":
                self._lr_set_by_user = True
            self.controls[k].value = v
        return self

    # -- running ---------------------------------------------------------------------
    def _on_click(self, button=None) -> None:
        self.run()

    def _show(self, out, fig) -> None:
        """Put ``fig`` into the Output widget ``out`` (only inside a kernel; tests just keep it)."""
        import matplotlib.pyplot as plt

        if _in_kernel():
            from IPython.display import display

            with out:
                out.clear_output(wait=True)
                display(fig)
        plt.close(fig)

    def _draw(self, final: bool) -> None:
        from .plotting import explorer as px

        if not self.results:
            return
        self.figures["curves"] = fig = px.plot_curves(list(self.results.values()))
        self._show(self.curves_out, fig)
        self._draw_projection(final)

    def _draw_projection(self, final: bool, index: Optional[int] = None) -> None:
        from .plotting import explorer as px

        if not self.results:
            return
        self.frames = {m: projection_frames(r, 2) for m, r in self.results.items() if len(r.snapshot_steps)}
        if not self.frames:
            return
        first = next(iter(self.frames.values()))
        idx = len(first.steps) - 1 if index is None else int(index)
        step = int(first.steps[min(idx, len(first.steps) - 1)])
        fig = px.plot_projection_panels(list(self.frames.values()), step=step)
        self.figures["projection"] = fig
        self._show(self.projection_out, fig)
        C = next(iter(self.results.values())).settings.C
        if final and self.controls["dims3"].value and C >= 4:
            frames3 = [projection_frames(r, 3) for r in self.results.values()]
            fig3 = px.plot_projection_3d_panels(frames3, step=step)
            self.figures["projection_3d"] = fig3
            if _in_kernel():
                from IPython.display import display

                with self.projection_out:
                    display(fig3)
            import matplotlib.pyplot as plt

            plt.close(fig3)
        else:
            self.figures.pop("projection_3d", None)

    def _on_frame(self, change) -> None:
        if self._busy or not self.results:
            return
        self._draw_projection(final=True, index=change["new"])

    _busy = False

    def run(self) -> Dict[str, ExplorerResult]:
        """The Run button: read the settings, train (live redraws), draw the final figures."""
        self.error = None
        try:
            base = self.settings()
        except ExplorerSettingsError as exc:
            self.error = str(exc)
            self.status.value = f"<span style='color:#b00'>Cannot run: {_html_escape(exc)}</span>"
            return {}
        methods = list(MAIN_METHODS) if self.controls["compare"].value else [base.method]
        self._busy = True
        self._last_draw = time.perf_counter()
        self.run_button.disabled = True
        self.frame_slider.disabled = True
        self.results = {}
        t0 = time.perf_counter()
        try:
            for m in methods:
                s = base.with_(method=m)
                self.status.value = f"running <b>{_html_escape(s.label)}</b> ..."

                def update(r: ExplorerResult, m=m) -> None:
                    self.results[m] = r
                    self.status.value = (f"<b>{_html_escape(r.label)}</b>: step {r.steps_done}/{r.settings.steps}, "
                                         f"loss {r.final('loss'):.4g}, train acc {100 * r.final('top1'):.1f}%")
                    now = time.perf_counter()
                    if (self.live and r.status == "running" and _in_kernel()
                            and now - self._last_draw >= self.min_redraw_s):
                        self._draw(final=False)
                        self._last_draw = time.perf_counter()

                self.results[m] = run_ufm(s, on_update=update, update_every=max(1, s.steps // 6))
        except Exception as exc:  # noqa: BLE001 - shown to the reader, not swallowed silently
            self.error = f"{type(exc).__name__}: {exc}"
            self.status.value = f"<span style='color:#b00'>Run failed: {_html_escape(self.error)}</span>"
            self._busy = False
            self.run_button.disabled = False
            if self.results:
                self._draw(final=True)
            return self.results
        n = max(len(r.snapshot_steps) for r in self.results.values())
        self.frame_slider.max = n - 1
        self.frame_slider.value = n - 1
        self.frame_slider.disabled = False
        self._draw(final=True)
        self._busy = False
        self.run_button.disabled = False
        self.status.value = (f"done in {time.perf_counter() - t0:.1f} s — drag <i>snapshot</i> to replay the "
                             "class means")
        return self.results


def _html_escape(x: Any) -> str:
    import html

    return html.escape(str(x))


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def build_explorer(defaults: Optional[ExplorerSettings] = None, *, live: bool = True, compare: bool = False,
                   dims3: bool = False) -> Explorer:
    """The interactive UFM explorer (an :class:`Explorer`; display it in a notebook).

    Controls for every :class:`ExplorerSettings` field, a *compare* switch (runs standard, fixed
    and implicit with the same settings), a Run button, live figures (curves and the 2-D
    projection; optionally 3-D) and a slider to replay the snapshots.  ``live=False`` draws
    only at the end of a run; ``compare`` and ``dims3`` set the two checkboxes.  Works without a
    kernel: call ``explorer.run()``.
    """
    return Explorer(defaults, live=live, compare=compare, dims3=dims3)
