"""What a training run keeps in its run directory, and how the trainer writes and reads it back.

The checkpoint (``checkpoint.pt``: :meth:`RunFiles.state_dict`, :meth:`RunFiles.save_checkpoint`,
:meth:`RunFiles.load_checkpoint`), the metrics (``metrics.jsonl`` and ``metrics.csv``), the provenance
(``provenance.json``, with the earlier segments of a resumed run) and the results dict with its summary
line.  :class:`RunFiles` holds these methods; :class:`guiding_nc.training.trainer.Trainer` inherits them.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from .checkpoints import CHECKPOINT_FORMAT, CheckpointError, read_checkpoint, rng_state, set_rng_state
from .config import ConfigError
from .evaluation import nonfinite_state
from .provenance import (atomic_torch_save, atomic_write, atomic_write_json, atomic_write_text, collect_provenance,
                         result_settings, to_jsonable, write_provenance)

__all__ = ["RunFiles"]

_TIME_KEYS_PREFIX = ("time_", "peak_", "wall_")


def _margin_summary(m: np.ndarray) -> Dict[str, Any]:
    if m.size == 0:
        return {}
    q = np.quantile(m, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    hist, edges = np.histogram(m, bins=50)
    return {
        "quantiles": dict(zip(["min", "p05", "p25", "median", "p75", "p95", "max"], q.tolist())),
        "mean": float(m.mean()),
        "histogram": {"counts": hist.tolist(), "edges": edges.tolist()},
    }


class RunFiles:
    """The run-directory part of :class:`~guiding_nc.training.trainer.Trainer`, which inherits it.

    A mixin without state of its own: it reads and sets the trainer's ``cfg``, ``run_dir``,
    ``checkpoint_path``, ``is_main``, ``network``, optimiser, scheduler, scaler, epoch counters,
    history and margins.
    """

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler_epoch": self.epoch,
            "rng": rng_state(self.device),
            "history": self.history,
            "step_losses": self.step_losses,
            "step_accuracies": self.step_accuracies,
        }

    def save_checkpoint(self) -> Optional[Path]:
        """Write ``checkpoint.pt`` atomically (rank 0 only); returns its path."""
        if not self.is_main:
            return None
        state = self.state_dict()
        path = atomic_torch_save(state, self.checkpoint_path)
        if self.cfg.keep_checkpoints:
            atomic_torch_save(state, self.run_dir / f"checkpoint_epoch{self.epoch:04d}.pt")
        self.last_checkpoint_epoch = self.epoch
        if hasattr(self, "_provenance"):
            # What this process has computed so far that a later process can take over from: a
            # killed run's segment is credited with this much wall time.
            self._provenance["checkpoint_epoch"] = self.epoch
            self._provenance["wall_time_at_checkpoint_s"] = time.time() - self._t0
            write_provenance(self.run_dir / "provenance.json", self._provenance)
        return path

    # What may change when a run resumes: when it pauses, not what it computes.
    RESUME_MAY_DIFFER = ("stop_after_epoch",)

    def resume_differences(self, old: Dict[str, Any], path: Union[str, os.PathLike]) -> List[str]:
        """The settings that determine the result (:func:`~guiding_nc.training.provenance.result_settings`,
        the rule the result files' settings hash follows too) in which the config ``old`` that the
        checkpoint ``path`` records differs from this run's, as ``"key (old vs new)"``; a checkpoint
        resumes only with none."""
        from .config import TrainConfig

        if not old:
            raise CheckpointError(f"{path} records no settings, so resuming it could continue another run: delete it "
                                  "or pass overwrite=true to start the run again")
        try:
            then = result_settings(TrainConfig.from_dict(dict(old)))
        except (ConfigError, TypeError, ValueError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise CheckpointError(f"cannot resume {path}: its settings are not readable by this version ({first}); "
                                  "pass overwrite=true to start the run again") from None
        now = result_settings(self.cfg)
        keys = sorted(k for k in set(then) | set(now) if k not in self.RESUME_MAY_DIFFER and then.get(k) != now.get(k))
        return [f"{k} ({then.get(k)!r} vs {now.get(k)!r})" for k in keys]

    def load_checkpoint(self, path: Union[str, os.PathLike]) -> None:
        state = read_checkpoint(path, map_location=self.device)
        old = state.get("config") if isinstance(state.get("config"), dict) else {}
        diffs = self.resume_differences(old, path)
        if diffs:
            raise ConfigError(f"cannot resume {path}: the checkpoint was written with a different {', '.join(diffs)}; "
                              "rerun with the settings it was written with, or pass overwrite=true to start again")
        fix = "delete it or pass overwrite=true to start the run again"
        try:
            epoch, step = state["epoch"], state["global_step"]
            if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= self.cfg.epochs:
                raise CheckpointError(f"{path} says it was written at epoch {epoch!r} of a run of {self.cfg.epochs}; "
                                      f"it belongs to another run or is damaged: {fix}")
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise CheckpointError(f"{path} holds a step count {step!r}; it is damaged: {fix}")
            self.network.load_state_dict(state["model"])
            bad = nonfinite_state(self.network)
            if bad:
                raise CheckpointError(f"{path} holds non-finite {', '.join(bad[:3])}, not a state to continue from: "
                                      f"{fix}")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.epoch = int(epoch)
            self.global_step = int(step)
            self.history = list(state["history"])
            self.step_losses = list(state.get("step_losses", []))
            self.step_accuracies = list(state.get("step_accuracies", []))
            self.last_checkpoint_epoch = self.epoch
            set_rng_state(state["rng"])
        except KeyError as exc:
            raise CheckpointError(f"{path} has no {exc.args[0]!r} entry; it is incomplete or not this package's: "
                                  f"{fix}") from None
        except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if len(first) > 160:
                first = first[:157] + "..."
            raise CheckpointError(f"{path} does not fit this run's model or optimiser ({first}): {fix}") from None

    # -- files -----------------------------------------------------------------------------
    def _append_metrics(self, row: Dict[str, Any]) -> None:
        """Append one epoch to ``metrics.jsonl`` (cheap: O(1) per epoch); the full files are
        rewritten atomically at checkpoints and at the end (:meth:`_write_metrics`)."""
        if not self.is_main:
            return
        import json

        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Appended, not rewritten (O(1) per epoch): a line a kill cuts short is dropped by the
        # atomic rewrite at the next checkpoint or resume.  Never through a planted symbolic link.
        path = self.run_dir / "metrics.jsonl"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            if path.is_symlink():
                raise ConfigError(f"{path} is a symbolic link, and the run writes only inside its directory: remove "
                                  "it and resume") from None
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(to_jsonable(row)) + "\n")

    def _write_metrics(self) -> None:
        if not self.is_main:
            return
        import json

        from .tables import csv_text

        rows = [to_jsonable(r) for r in self.history]
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_text(self.run_dir / "metrics.csv", csv_text(rows))

    def _segments_before(self, epoch: int) -> List[Dict[str, Any]]:
        """What the provenance of the interrupted process said: a resumed run keeps, under
        ``resumed_segments``, the command, commit, device and date of every earlier process and
        the epoch the next one took over at, so a result made by two commits names both."""
        p = self.run_dir / "provenance.json"
        if not self.is_main or not p.exists():
            return []
        try:
            old = json.loads(p.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(old, dict):
            raise ConfigError(f"{p} holds a {type(old).__name__}, not a run's provenance record; it is damaged: "
                              "delete it (the checkpoint is kept) and resume again, or pass overwrite=true")
        git = old.get("git") or {}
        status = old.get("status")
        # A process that never wrote its end is a killed one; it is credited with the wall time it
        # had spent when it wrote the checkpoint this process resumes from.
        wall = old.get("wall_time_s") if status == "completed" else old.get("wall_time_at_checkpoint_s")
        segment = {"command": old.get("command"), "commit": git.get("commit"), "dirty": git.get("dirty"),
                   "date": old.get("date"), "device": old.get("device_name") or old.get("device"),
                   "num_threads": old.get("num_threads"), "status": "killed" if status == "running" else status,
                   "until_epoch": epoch, "wall_time_s": wall}
        return list(old.get("resumed_segments") or []) + [segment]

    def _earlier_wall(self) -> float:
        """Wall time of the earlier processes of a resumed run (0 for a run in one process)."""
        return float(sum(seg.get("wall_time_s") or 0.0 for seg in getattr(self, "_earlier_segments", None) or []))

    def _write_provenance(self, status: str, wall: Optional[float], best_effort: bool = False) -> None:
        """Write ``provenance.json`` with ``status``; ``best_effort``: on the way out of a failure,
        whose own error (a full disk, say) is the one to report, an ``OSError`` here is ignored."""
        if not self.is_main:
            return
        if best_effort:
            try:
                return self._write_provenance(status, wall)
            except OSError:
                return
        if not hasattr(self, "_provenance"):
            self._provenance = collect_provenance(self.cfg.to_dict(), seed=self.cfg.seed, device=self.device,
                                                  argv=self.argv, world_size=self.world_size)
            if getattr(self, "_earlier_segments", None):
                self._provenance["resumed_segments"] = self._earlier_segments
        self._provenance["status"] = status
        self._provenance["wall_time_s"] = wall
        self._provenance["wall_time_all_processes_s"] = None if wall is None else wall + self._earlier_wall()
        self._provenance["epochs_completed"] = self.epoch
        self._provenance["global_step"] = self.global_step
        write_provenance(self.run_dir / "provenance.json", self._provenance)

    # -- results -------------------------------------------------------------------------
    def _write_results(self, results: Dict[str, Any]) -> None:
        """``results.json`` and, if asked, the final per-sample margins (``cosine_margins_final.npz``),
        both written atomically in the run directory."""
        if not self.is_main:
            return
        atomic_write_json(self.run_dir / "results.json", {k: v for k, v in results.items() if k != "history"})
        if self.cfg.save_margins and self.final_margins:
            margins = dict(self.final_margins)

            def _savez(tmp: str) -> None:
                with open(tmp, "wb") as fh:  # a file object: np.savez adds no ".npz" to its name
                    np.savez(fh, **margins)

            atomic_write(self.run_dir / "cosine_margins_final.npz", _savez)

    def _results(self, wall: float, resumed_from: Optional[int]) -> Dict[str, Any]:
        cfg = self.cfg
        last = self.history[-1] if self.history else {}
        evaluated = [r for r in self.history if "train_top1" in r or "test_top1" in r]
        final_eval = evaluated[-1] if evaluated else {}
        at_epochs: Dict[str, Dict[str, Any]] = {}
        for r in self.history:
            if r["epoch"] in cfg.report_epochs or r["epoch"] == cfg.epochs:
                at_epochs[str(r["epoch"])] = {k: v for k, v in r.items() if not k.startswith(_TIME_KEYS_PREFIX)}
        return {
            "status": self.status,
            "method": cfg.method,
            "seed": cfg.seed,
            "run_dir": str(self.run_dir),
            "epochs_completed": self.epoch,
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "resumed_from_epoch": resumed_from,
            # All processes of a resumed run (each credited up to the checkpoint the next took over).
            "wall_time_s": wall + self._earlier_wall(),
            "wall_time_this_process_s": wall,
            "world_size": self.world_size,
            "device": str(self.device),
            "num_classes": self.num_classes,  # inferred from the data when the config leaves it out
            "feature_dim": self.feature_dim,
            "stratified": cfg.stratified_batches,
            "protocol": cfg.protocol_label(),
            "final": last,
            "final_eval": final_eval,
            "at_epochs": at_epochs,
            "peak_mem_gb": max((r.get("peak_mem_gb", 0.0) for r in self.history), default=None),
            "cosine_margin_distribution": {k: _margin_summary(v) for k, v in self.final_margins.items()},
            "history": self.history,
            "step_losses": list(self.step_losses) if cfg.record_step_losses else None,
            "step_accuracies": list(self.step_accuracies) if cfg.record_step_accuracy else None,
            "config": cfg.to_dict(),
        }

    def summary_line(self, results: Dict[str, Any]) -> str:
        f = results["final_eval"] or results["final"]
        parts = [f"[guiding_nc] {self.cfg.name} {self.cfg.method} seed={self.cfg.seed} {results['status']}: "
                 f"{results['epochs_completed']}/{self.cfg.epochs} epochs, {results['global_step']} steps, "
                 f"{results['wall_time_s']:.1f}s"]
        for key, label in (("train_loss_running", "loss"), ("train_top1", "train top1"), ("test_top1", "test top1"),
                           ("train_nc1", "NC1"), ("train_nc3", "NC3")):
            v = f.get(key, results["final"].get(key))
            if v is not None:
                parts.append(f"{label} {v:.4g}")
        if results.get("peak_mem_gb") is not None:
            parts.append(f"peak mem {results['peak_mem_gb']:.2f} GB")
        parts.append(f"-> {results['run_dir']}")
        return ", ".join(parts)
