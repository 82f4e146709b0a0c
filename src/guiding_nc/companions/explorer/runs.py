"""Running a UFM for the explorer: :func:`run_ufm` trains one with the project's trainer and records
the evaluation metrics and snapshots (:class:`ExplorerResult`); :func:`run_comparison` runs several
methods, :func:`summary_markdown` tabulates the results (book page 06).

Scales.  Every snapshot is taken on the features the classifier sees (``head.transform``:
on the unit sphere, except for ``standard-no-norm``).  The centred class means are scaled to
unit Frobenius norm, ``H~ = Hbar / ||Hbar||_F`` (Eq. 5); the nearest ETF is ``U* M~`` with
``U* = nearest_etf(H~)`` (Eq. 6 with the paper's two-stage start, so it is unique), whose
columns all have norm ``1/sqrt(C)``; the classifier is drawn as ``W^T / ||W||_F`` (same
scale when its rows have equal norms).  ``etf_distance = ||H~ - U* M~||_F`` is zero exactly
when the class means form a simplex ETF.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ...core.etf import standard_simplex_etf
from ...core.nearest import nearest_etf
from .settings import EARLY_STEPS, MAIN_METHODS, METRIC_KEYS, ExplorerSettings, is_int
from ..tables import Table

__all__ = [
    "ExplorerResult",
    "run_ufm",
    "run_comparison",
    "summary_markdown",
    "print_progress",
]


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


def print_progress(result: "ExplorerResult") -> None:
    """An ``on_update`` callback for :func:`run_ufm` that prints one line per update: the step,
    the loss, the train accuracy and the distance of the class means to their nearest ETF."""
    print(f"step {result.steps_done:4d}: loss {result.final('loss'):.3g}, train accuracy "
          f"{100 * result.final('top1'):.0f}%, distance to nearest ETF {result.final('etf_distance'):.3g}")


def run_ufm(settings: Union[ExplorerSettings, Mapping[str, Any]], *,
            on_update: Optional[Callable[[ExplorerResult], Any]] = None,
            update_every: Optional[int] = None) -> ExplorerResult:
    """Train one UFM with the project's :class:`~guiding_nc.training.trainer.Trainer` and record it.

    ``settings``: an :class:`ExplorerSettings` or a mapping of its fields.  ``on_update`` is
    called with the partial :class:`ExplorerResult` every ``update_every`` steps (default:
    about ten times per run) and once at the end -- the widget redraws from it.  The trainer's
    run directory is a temporary folder, deleted afterwards.  Raises
    :class:`~guiding_nc.companions.explorer.settings.ExplorerSettingsError` for bad settings and
    :class:`~guiding_nc.training.trainer.NonFiniteError` if training diverges (e.g. a too-large SGD
    learning rate).
    """

    if isinstance(settings, Mapping):
        settings = ExplorerSettings(**settings)
    if not isinstance(settings, ExplorerSettings):
        raise TypeError(f"settings must be an ExplorerSettings or a mapping, got {type(settings).__name__}")
    if update_every is None:
        update_every = max(1, settings.steps // 10)
    if not is_int(update_every) or update_every < 1:
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
    from ...training.trainer import Trainer

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
    return Table("\n".join(lines))


def run_comparison(settings: ExplorerSettings, methods: Sequence[str] = MAIN_METHODS, *,
                   on_update: Optional[Callable[[str, ExplorerResult], Any]] = None,
                   update_every: Optional[int] = None) -> Dict[str, ExplorerResult]:
    """The same settings for several methods (same seed, same initial features): ``{method: result}``."""
    out: Dict[str, ExplorerResult] = {}
    for m in methods:
        cb = None if on_update is None else (lambda r, m=m: on_update(m, r))
        out[m] = run_ufm(settings.with_(method=m), on_update=cb, update_every=update_every)
    return out
