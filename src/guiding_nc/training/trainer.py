"""Training loop for the paper's comparison: standard vs fixed-ETF vs implicit-ETF classifiers.

One concept, kept in one module although it passes 800 lines: the loop, its evaluation, its
checkpoints and its provenance are one object's life cycle (:class:`Trainer`).

One switch (``method``) changes the classifier head (:mod:`guiding_nc.core.heads`); everything
else -- data, sampler, model, optimiser, schedule, feature normalisation, temperature,
evaluation -- is shared.

Entry points
------------
* :class:`~guiding_nc.training.config.TrainConfig` -- every setting (module :mod:`guiding_nc.training.config`:
  YAML files, overrides, validation).
* :func:`train_run` -- one (method, seed) run -> results dict; writes a run directory.
* :func:`train` -- every (method, seed) pair the config names (``methods:``, ``seeds:``),
  then a summary table (median and min-max over seeds per method, like Tables 1-2).
* :class:`Trainer` -- the object behind :func:`train_run` (tests and notebooks use it to
  reach the model/head after training).

Decisions (see also :class:`guiding_nc.core.heads.ClassMeanEMA`)
----------------------------------------------------------
* **UFM epochs.** The paper runs UFMs for "2000 iterations" and plots them against
  "epochs"; the two coincide for full-batch gradient descent, which is what the UFM configs
  do: ``batch_size = N`` so one epoch = one pass over the N free features = one optimiser
  step, and ``epochs: 2000``.  With a smaller ``batch_size`` an epoch is ``ceil(N / b)``
  steps, exactly as for real data.
* **Timing split.** Per step we time the backbone forward, the implicit head's EMA +
  nearest-ETF solve (``etf_forward``), the DDN backward (from the moment the gradient of
  ``U*`` is ready to the moment the gradient of ``H`` is -- tensor hooks around the custom
  backward), the whole backward, and the optimiser step.  ``time_backbone_ms`` is the backbone
  forward plus the backward minus the DDN backward.  On CUDA the default
  ``timing: events`` records CUDA events (no host sync in the loop; resolved lazily and at
  the end of the epoch); ``timing: sync`` calls ``torch.cuda.synchronize()`` around every
  segment (exact wall time, slower); ``timing: off`` disables it.  On CPU ``perf_counter``.
* **Peak memory.** ``torch.cuda.max_memory_allocated`` on CUDA (reset at the start of a
  run); the process's peak RSS (``resource.getrusage``) on CPU.
* **Non-finite values.** The first step whose loss or features are non-finite is recorded
  on the device (no sync) and checked every ``nonfinite_check_every`` steps and at the end
  of every epoch -- always before a checkpoint is written -- so a bad state is never saved.
* **Resume.** Checkpoints hold the model (backbone + head, including the EMA and proximal
  state), optimiser, scheduler, AMP scaler, epoch/step, metrics history and the RNG states
  (python, numpy, torch, cuda).  The samplers are seeded by ``(seed, epoch)`` and the loader
  generator is re-seeded per epoch, so a resumed run replays the same batches; on CPU a
  resumed run is bit-identical to an uninterrupted one.
* **Distributed.** Under ``torchrun`` every rank builds the same model; the network (backbone
  + head) is wrapped in ``DistributedDataParallel``; the loaders give each rank its slice of
  the same global batch; the implicit head all-reduces its per-class sums (differentiably)
  and counts, so every rank solves for the same ``U*``; evaluation statistics are summed over
  ranks; only rank 0 writes files.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from .config import ConfigError, TrainConfig, load_config
from ..core.heads import build_head
from .checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_NAME, CheckpointError, read_checkpoint, rng_state, set_rng_state
from ..core.distributed import all_reduce_, dist, init_distributed
from ..core.errors import NonFiniteInputError
from .timing import StepTimer
from ..core.memory import peak_memory
from ..core.metrics import neural_collapse_metrics
from .provenance import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    collect_provenance,
    to_jsonable,
    write_provenance,
)

__all__ = [
    "NonFiniteError",
    "CheckpointError",
    "read_checkpoint",
    "validate_labels",
    "Trainer",
    "train_run",
]

_TIME_KEYS_PREFIX = ("time_", "peak_", "wall_")


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or non-finite features."""


def validate_labels(targets: Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` unless every label is an integer in ``[0, num_classes)``."""
    t = torch.as_tensor(targets)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {t.dtype}")
    if t.numel() == 0:
        raise ValueError("the dataset has no labels")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"labels outside [0, C) with C={num_classes}: found label {bad} "
                         f"(labels range over [{lo}, {hi}])")


def _all_finite(t: Tensor) -> Tensor:
    """0-dim bool tensor: every entry of ``t`` is finite.  One reduction pass (min and max
    propagate NaN and keep +-inf) where ``isfinite(t).all()`` writes a full-size mask first."""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    lo, hi = torch.aminmax(t)
    return torch.isfinite(lo) & torch.isfinite(hi)


# ---------------------------------------------------------------------------- network
class Network(nn.Module):
    """Backbone (features) + head (logits); ``forward(x, labels) -> (logits, features)``."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.timer: Optional[StepTimer] = None

    def forward(self, x: Tensor, labels: Optional[Tensor] = None):
        timer = self.timer
        if timer is not None:
            timer.start("backbone_forward")
        features = self.backbone(x)
        if timer is not None:
            timer.stop("backbone_forward")
        return self.head(features, labels), features


class _SubsetDataset(torch.utils.data.Dataset):
    def __init__(self, base, indices: Tensor):
        self.base = base
        self.indices = indices.long()
        self.targets = torch.as_tensor(base.targets)[self.indices]
        self.num_classes = base.num_classes
        self.input_shape = getattr(base, "input_shape", ())
        self.name = getattr(base, "name", "")

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]


class _EvalShardSampler(torch.utils.data.Sampler):
    """Evaluation batches over this rank's contiguous shard ``[r N / R, (r+1) N / R)``.

    Every sample is evaluated exactly once over all ranks and no rank ever gets an empty
    batch (ranks may get different numbers of batches; evaluation has no collectives inside
    its loops).
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.start = rank * num_samples // world_size
        self.end = (rank + 1) * num_samples // world_size
        self.batch_size = int(batch_size)

    def __iter__(self):
        for i in range(self.start, self.end, self.batch_size):
            yield list(range(i, min(i + self.batch_size, self.end)))

    def __len__(self) -> int:
        return -(-(self.end - self.start) // self.batch_size)


def _stratified_subset_indices(targets: Tensor, k: int) -> Tensor:
    """Deterministic class-balanced subset of about ``k`` indices (first ones of each class)."""
    targets = torch.as_tensor(targets).long()
    N = targets.numel()
    if k >= N:
        return torch.arange(N)
    classes = torch.unique(targets)
    per = max(1, k // len(classes))
    keep = [torch.nonzero(targets == c).flatten()[:per] for c in classes]
    return torch.sort(torch.cat(keep)).values


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


def _is_interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# ------------------------------------------------------------------------------ trainer
class Trainer:
    """One (method, seed) run.  ``Trainer(config).fit() -> results``.

    ``config`` must name a single method and seed (use :func:`train` for sweeps).
    ``callbacks``: callables ``cb(event, trainer)`` with ``event`` in ``{"step_end",
    "epoch_end"}`` (``trainer.epoch``/``trainer.global_step`` say where we are) -- a hook for
    tests and notebooks; it runs on every rank.
    """

    def __init__(self, config: TrainConfig, *, callbacks: Optional[Sequence[Callable]] = None,
                 argv: Optional[Sequence[str]] = None):
        if not isinstance(config, TrainConfig):
            config = load_config(config)
        cfg = config.apply_quick()
        if len(cfg.method_list) != 1 or len(cfg.seed_list) != 1:
            raise ConfigError("Trainer runs a single (method, seed); use train() for several")
        cfg = cfg.replace(method=cfg.method_list[0], methods=None, seed=cfg.seed_list[0], seeds=None)
        cfg.validate()
        self.cfg = cfg
        self.callbacks = list(callbacks or [])
        self.argv = list(argv) if argv is not None else list(sys.argv)
        self.rank, self.world_size, self.local_rank = init_distributed(cfg.device)
        self.is_main = self.rank == 0
        self.device = self._pick_device(cfg.device)
        if cfg.num_threads is not None:
            # Small problems (UFMs) on a busy CPU run far faster on one intra-op thread.
            torch.set_num_threads(int(cfg.num_threads))
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if cfg.batch_size % self.world_size:
            raise ConfigError(f"batch_size={cfg.batch_size} (the global batch) must be divisible by the "
                              f"number of processes {self.world_size}")
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else Path(cfg.output_dir) / cfg.name / cfg.method / f"seed{cfg.seed}"
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        self._seed_everything(cfg.seed)
        self._build()

    # -- setup ---------------------------------------------------------------------------
    def _pick_device(self, pref: str) -> torch.device:
        if pref == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", self.local_rank if self.world_size > 1 else torch.cuda.current_device())
            return torch.device("cpu")
        dev = torch.device(pref)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("device 'cuda' requested but CUDA is not available")
            if dev.index is None:
                dev = torch.device("cuda", self.local_rank if self.world_size > 1 else torch.cuda.current_device())
        return dev

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)

    def _build(self) -> None:
        from .data import build_dataset, build_loader, dataset_collate_fn, ufm_dataset
        from .models import build_model
        from .optim import agd_init_, build_optimizer, build_scheduler

        cfg = self.cfg
        # ---- data
        if cfg.is_ufm:
            train_ds = ufm_dataset(int(cfg.num_samples), int(cfg.num_classes))
            eval_train_ds, test_ds = train_ds, None
            C = int(cfg.num_classes)
            input_shape = None
        else:
            name = cfg.dataset.lower()
            train_ds = build_dataset(name, root=cfg.data_root, train=True, download=cfg.download,
                                     augment=cfg.augment, seed=cfg.split_seed)
            eval_train_ds = build_dataset(name, root=cfg.data_root, train=True, download=False,
                                          augment=False, seed=cfg.split_seed) if cfg.eval_train else None
            test_ds = None
            if cfg.eval_test:
                test_ds = build_dataset(name, root=cfg.data_root, train=False, download=cfg.download,
                                        augment=False, seed=cfg.split_seed)
            C = int(cfg.num_classes) if cfg.num_classes is not None else int(train_ds.num_classes)
            if cfg.max_train_samples:
                idx = _stratified_subset_indices(train_ds.targets, int(cfg.max_train_samples))
                train_ds = _SubsetDataset(train_ds, idx)
                if eval_train_ds is not None:
                    eval_train_ds = _SubsetDataset(eval_train_ds, idx)
            if cfg.max_test_samples and test_ds is not None:
                test_ds = _SubsetDataset(test_ds, _stratified_subset_indices(test_ds.targets, int(cfg.max_test_samples)))
            input_shape = tuple(train_ds.input_shape)
        validate_labels(train_ds.targets, C)
        if test_ds is not None:
            validate_labels(test_ds.targets, C)
        if C < 2:
            raise ConfigError(f"need at least 2 classes, got C={C}")
        self.num_classes = C
        self.train_ds, self.eval_train_ds, self.test_ds = train_ds, eval_train_ds, test_ds

        # ---- model + head
        agd = cfg.optimizer.lower() == "agd"
        choices = cfg.protocol_choices()
        kwargs = dict(cfg.model_kwargs)
        if cfg.is_ufm:
            kwargs.setdefault("check_indices", False)  # indices come from our own sampler
            if kwargs.get("init") == "mean_free":
                kwargs["labels"] = train_ds.targets  # its class structure is built from them
            backbone = build_model("ufm", num_samples=int(cfg.num_samples), feature_dim=int(cfg.feature_dim), **kwargs)
        else:
            from .models import model_defaults

            if "final_activation" in model_defaults(cfg.model):  # a protocol option (guiding_nc.training.protocol)
                kwargs["final_activation"] = bool(choices["final_activation"])
            backbone = build_model(cfg.model, num_classes=C, input_shape=input_shape, feature_dim=cfg.feature_dim,
                                   agd_compatible=agd, **kwargs)
        d = int(backbone.feature_dim)
        if C > d:
            raise ConfigError(f"number of classes C={C} exceeds the feature dimension d={d}: a simplex ETF needs "
                              "d >= C (raise feature_dim)")
        self.feature_dim = d
        head = build_head(cfg.method, d, C, **cfg.head_options())
        network = Network(backbone, head)
        if agd:
            agd_init_(network, generator=torch.Generator().manual_seed(int(cfg.seed)))
            head.after_step()  # AGD's init, then what a head does after every step (re-normalise its rows)
        network.to(self.device)
        self.network = network
        self.head = head
        self.timer = StepTimer(cfg.timing, self.device)
        network.timer = self.timer
        head.timer = self.timer
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(network, device_ids=ids)  # buffers (BN statistics) synced from rank 0
        else:
            self.model = network

        # ---- loaders
        pin = cfg.pin_memory if cfg.pin_memory is not None else self.device.type == "cuda"
        common = dict(num_workers=cfg.num_workers, num_replicas=self.world_size, rank=self.rank, pin_memory=pin)
        self.train_loader = build_loader(train_ds, cfg.batch_size, stratified=cfg.stratified_batches, seed=cfg.seed,
                                         shuffle=True, drop_last=cfg.drop_last, **common)
        eval_bs = max(1, (cfg.eval_batch_size or cfg.batch_size) // self.world_size)  # per rank
        self.eval_loaders: Dict[str, Any] = {}
        for split, ds, wanted in (("train", eval_train_ds, cfg.eval_train), ("test", test_ds, cfg.eval_test)):
            if wanted and ds is not None:
                self.eval_loaders[split] = torch.utils.data.DataLoader(
                    ds, batch_sampler=_EvalShardSampler(len(ds), eval_bs, self.rank, self.world_size),
                    num_workers=cfg.num_workers, pin_memory=pin, collate_fn=dataset_collate_fn(ds))
        self.steps_per_epoch = len(self.train_loader.batch_sampler)
        if self.steps_per_epoch < 1:
            raise ConfigError("the training loader yields no batches (dataset smaller than the batch with drop_last?)")

        # ---- optimiser
        params = network.parameters()
        depth = None
        if agd:
            params = list(network.named_parameters())
            if choices["agd_depth"] == "layers" and not any(p.requires_grad for p in head.parameters()):
                depth = len(params) + 1  # the classifier is a layer of the network, trained or not
        elif "weight_decay" not in cfg.explicit_keys and cfg.weight_decay:
            import warnings

            warnings.warn(f"optimizer {cfg.optimizer!r} runs with weight_decay={cfg.weight_decay:g}, the default, which "
                          "the config does not set (AGD has none); set weight_decay to say so", stacklevel=2)
        betas = tuple(cfg.betas) if cfg.betas is not None else (0.9, 0.999)
        self.optimizer = build_optimizer(cfg.optimizer, params, lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, gain=cfg.gain, betas=betas, depth=depth)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, total_steps=self.total_steps,
                                         warmup_steps=cfg.warmup_steps)
        self.use_amp = bool(cfg.amp) and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

        # ---- state
        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.history: List[Dict[str, Any]] = []
        self.step_losses: List[float] = []
        self.step_accuracies: List[float] = []
        self.status = "initialised"
        self.last_checkpoint_epoch: Optional[int] = None
        self.final_margins: Dict[str, np.ndarray] = {}

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

    _RESUME_MUST_MATCH = ("method", "seed", "dataset", "model", "num_classes", "num_samples", "feature_dim",
                          "batch_size", "optimizer", "scheduler", "epochs", "tau", "delta",
                          "ddn_backward", "max_train_samples", "protocol", "standard_centring", "fixed_centring",
                          "implicit_centring", "standard_sampler", "fixed_sampler", "implicit_sampler",
                          "implicit_class_means", "final_activation", "agd_depth")

    def load_checkpoint(self, path: Union[str, os.PathLike]) -> None:
        state = read_checkpoint(path, map_location=self.device)
        old = state.get("config", {})
        diffs = [k for k in self._RESUME_MUST_MATCH if k in old and old[k] != getattr(self.cfg, k)]
        if diffs:
            raise ConfigError("cannot resume: the checkpoint was written with a different "
                              + ", ".join(f"{k} ({old[k]!r} vs {getattr(self.cfg, k)!r})" for k in diffs))
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])
        self.step_losses = list(state.get("step_losses", []))
        self.step_accuracies = list(state.get("step_accuracies", []))
        self.last_checkpoint_epoch = self.epoch
        set_rng_state(state["rng"])

    # -- files -----------------------------------------------------------------------------
    def _append_metrics(self, row: Dict[str, Any]) -> None:
        """Append one epoch to ``metrics.jsonl`` (cheap: O(1) per epoch); the full files are
        rewritten atomically at checkpoints and at the end (:meth:`_write_metrics`)."""
        if not self.is_main:
            return
        import json

        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(to_jsonable(row)) + "\n")

    def _write_metrics(self) -> None:
        if not self.is_main:
            return
        import csv
        import io
        import json

        rows = [to_jsonable(r) for r in self.history]
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        keys: List[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())

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

    def _write_provenance(self, status: str, wall: Optional[float]) -> None:
        if not self.is_main:
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

    # -- evaluation ------------------------------------------------------------------------
    def _autocast(self):
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return nullcontext()

    def _sync_buffers(self) -> None:
        """Make every rank evaluate with rank 0's buffers (BatchNorm running statistics)."""
        if self.world_size > 1:
            for b in self.network.buffers():
                dist().broadcast(b, 0)

    @torch.no_grad()
    def evaluate(self, split: str) -> Tuple[Dict[str, float], np.ndarray]:
        """Loss, top-1/top-5, NC1-NC3, NCC mismatch (NC4), equinorm, cosine margins on a split
        (:func:`guiding_nc.core.metrics.neural_collapse_metrics`), and the dead units of the features.

        Features are what the classifier sees (``head.transform``).  All sums are reduced over
        ranks; returns ``(metrics, per-sample cosine margins)``.
        """
        loader = self.eval_loaders[split]
        net, head = self.network, self.head
        was_training = net.training
        net.eval()
        d, dev = self.feature_dim, self.device
        cache_mode = self.cfg.eval_cache
        if cache_mode == "auto":
            cache = len(loader.dataset) * d * 4 <= (2 * 1024 ** 3 if dev.type == "cuda" else 4 * 1024 ** 3)
        else:
            cache = bool(cache_mode)
        # Feature coordinates that are not zero on some sample; the rest are dead units (a ReLU
        # that never fires), invisible to any classifier weight on them.
        alive = torch.zeros(d, dtype=torch.bool, device=dev)

        def batches():
            for x, y in loader:
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                with self._autocast():
                    f = net.backbone(x)
                alive.logical_or_((f != 0).any(0))
                yield head.transform(f.float()), y

        W = head.weight.detach().to(dev)
        distributed = self.world_size > 1
        out = neural_collapse_metrics(
            batches, W, num_classes=self.num_classes, logits_fn=lambda h: head.logits_from(h).float(), check=False,
            cache=cache, empty_classes="nan", reduce=all_reduce_ if distributed else None,
            gather=self._gather_margins if distributed else None)
        margins = out.pop("cosine_margins").numpy()
        alive_any = alive.to(torch.uint8)
        if distributed:
            dist().all_reduce(alive_any, op=dist().ReduceOp.MAX)
        dead = alive_any == 0
        out["dead_units"] = int(dead.sum())
        # Share of the classifier's squared weight on dead units: 1 means it reads nothing alive.
        w2 = W.double().pow(2).sum(0)
        out["dead_weight"] = float(w2[dead].sum() / w2.sum().clamp_min(1e-300))
        net.train(was_training)
        return out, margins

    def _gather_margins(self, local: np.ndarray) -> np.ndarray:
        gathered: List[Any] = [None] * self.world_size
        dist().all_gather_object(gathered, local)
        return np.concatenate(gathered)

    # -- training --------------------------------------------------------------------------
    def _fire(self, event: str) -> None:
        for cb in self.callbacks:
            cb(event, self)

    def _check_finite(self, bad_step: Tensor, where: str) -> None:
        flag = bad_step.clone()
        if self.world_size > 1:
            # max over ranks of the first bad step (-1 = none); any rank's failure stops all.
            dist().all_reduce(flag, op=dist().ReduceOp.MAX)
        first = int(flag)
        if first >= 0:
            self._raise_nonfinite(first, "non-finite loss or features")

    def _raise_nonfinite(self, step: int, what: str) -> None:
        spe = self.steps_per_epoch
        epoch = (step - 1) // spe + 1
        within = (step - 1) % spe + 1
        ck = (f"the last good checkpoint ({self.checkpoint_path}, epoch {self.last_checkpoint_epoch}) is intact"
              if self.last_checkpoint_epoch is not None else "no checkpoint had been written yet")
        self.status = "failed: non-finite"
        self._write_provenance(self.status, time.time() - self._t0)
        raise NonFiniteError(f"{what} at epoch {epoch}, step {within} of {spe} (global step {step}); "
                             f"training stopped, {ck}")

    def _train_epoch(self, bar_batches: bool) -> Dict[str, Any]:
        cfg, dev = self.cfg, self.device
        net = self.network
        net.train()
        sampler = self.train_loader.batch_sampler
        sampler.set_epoch(self.epoch)
        gen = getattr(self.train_loader, "generator", None)
        if gen is not None:  # worker seeds depend only on (seed, epoch, rank): resume-safe
            gen.manual_seed((int(cfg.seed) * 1_000_003 + self.epoch) * 4099 + self.rank)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        count = torch.zeros((), dtype=torch.float64, device=dev)
        bad_step = torch.full((), -1, dtype=torch.int64, device=dev)
        timer = self.timer
        it: Iterable = self.train_loader
        pbar = None
        if bar_batches:
            from tqdm.auto import tqdm

            pbar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}", leave=False, dynamic_ncols=True)
        epoch_t0 = time.perf_counter()
        data_t = time.perf_counter()
        step_losses = []
        step_correct = []  # (correct, total) per step, kept on the device until the epoch ends
        for x, y in it:
            if timer.enabled:
                timer.add("data", (time.perf_counter() - data_t) * 1e3)
            self.global_step += 1
            step = self.global_step
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            loss, logits, finite = self.train_step(x, y)
            bad_step = torch.where((bad_step < 0) & ~finite, torch.full_like(bad_step, step), bad_step)
            ld = loss.detach()
            loss_sum += ld.double() * y.numel()
            count += y.numel()
            if cfg.record_step_losses:
                step_losses.append(ld.double().clone())
            if cfg.record_step_accuracy:
                # Accuracy of the batch at the parameters *before* this step; for a full-batch
                # UFM this is the exact training accuracy at step - 1.
                correct = (logits.detach().argmax(1) == y).sum().double()
                # torch.full, not torch.tensor: a fill on the device, not a host-to-device copy (a sync).
                step_correct.append(torch.stack([correct, torch.full((), float(y.numel()), dtype=torch.float64,
                                                                     device=dev)]))
            if step % cfg.nonfinite_check_every == 0:
                self._check_finite(bad_step, "step")
            if pbar is not None:
                pbar.update(1)
                if step % 20 == 0:
                    pbar.set_postfix(loss=f"{float(ld):.4f}")
            self._fire("step_end")
            data_t = time.perf_counter()
        if pbar is not None:
            pbar.close()
        self._check_finite(bad_step, "epoch end")
        if step_losses:
            sl = torch.stack(step_losses)
            if self.world_size > 1:
                all_reduce_(sl)
                sl = sl / self.world_size
            self.step_losses += sl.cpu().tolist()
        if step_correct:
            sc = torch.stack(step_correct)
            if self.world_size > 1:
                all_reduce_(sc)
            self.step_accuracies += (sc[:, 0] / sc[:, 1]).cpu().tolist()
        both = torch.stack([loss_sum, count])
        all_reduce_(both)
        row: Dict[str, Any] = {"train_loss_running": float(both[0] / both[1].clamp_min(1))}
        row["time_epoch_s"] = time.perf_counter() - epoch_t0
        row.update(self.timer.collect(self.steps_per_epoch))
        return row

    def train_step(self, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """One optimiser step on the batch ``(x, y)`` (already on the device): forward, loss,
        backward, update, and the head's after-step hook, timed by the step timer.

        Returns ``(loss, logits, finite)``: the batch loss before the update, its logits, and a
        device flag that the loss and the features were finite (no host sync).  The training loop
        and the per-step benchmarks (``python -m guiding_nc.bench overhead``) both call this.
        """
        timer, head = self.timer, self.head
        timer.start("step")
        try:
            with self._autocast():
                logits, features = self.model(x, y)
            loss = F.cross_entropy(logits.float(), y)
        except NonFiniteInputError as exc:
            self._raise_nonfinite(self.global_step, f"non-finite values ({exc})")
        finite = torch.isfinite(loss) & _all_finite(features.detach())
        timer.start("backward")
        self.scaler.scale(loss).backward()
        timer.stop("backward")
        timer.start("optimizer")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        head.after_step()
        timer.stop("optimizer")
        timer.stop("step")
        return loss, logits, finite

    def _should_eval(self, epoch: int) -> bool:
        cfg = self.cfg
        return epoch % cfg.eval_every == 0 or epoch == cfg.epochs or epoch in cfg.report_epochs

    def fit(self) -> Dict[str, Any]:
        """Train (resuming if asked and possible); returns the results dict."""
        cfg = self.cfg
        self._t0 = time.time()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed_from = None
        if self.is_main:
            # Temporary files of a process killed while it wrote (atomic writes leave no half file).
            for orphan in self.run_dir.glob(".*.tmp"):
                orphan.unlink(missing_ok=True)
        if self.checkpoint_path.exists():
            if cfg.resume:
                self.load_checkpoint(self.checkpoint_path)
                resumed_from = self.epoch
                self._earlier_segments = self._segments_before(resumed_from)
                self._write_metrics()  # drop rows appended after the checkpoint: they are re-run
            elif not cfg.overwrite:
                raise ConfigError(f"{self.run_dir} already holds a checkpoint; pass resume=true to continue it "
                                  "or overwrite=true to start again")
        if resumed_from is None and self.is_main:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run appends epoch by epoch
        if self.is_main:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(to_jsonable(cfg.to_dict()), sort_keys=False))
        self._write_provenance("running", None)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        interactive = cfg.progress and self.is_main and _is_interactive()
        epoch_bar = None
        if interactive:
            from tqdm.auto import tqdm

            epoch_bar = tqdm(total=cfg.epochs, initial=self.epoch, desc=f"{cfg.method} seed {cfg.seed}",
                             dynamic_ncols=True)
        self.status = "running"
        try:
            while self.epoch < cfg.epochs:
                row = self._train_epoch(bar_batches=interactive and self.steps_per_epoch > 1)
                self.epoch += 1
                epoch = self.epoch
                row = {"epoch": epoch, "step": self.global_step, "method": cfg.method, "seed": cfg.seed,
                       "lr": float(self.optimizer.param_groups[0]["lr"]), **row}
                row.update(self.head.epoch_metrics())
                eta = self.optimizer.param_groups[0].get("eta")
                if eta is not None:
                    row["agd_eta"] = float(eta)
                if self._should_eval(epoch):
                    self._sync_buffers()
                    for split in self.eval_loaders:
                        metrics, margins = self.evaluate(split)
                        row.update({f"{split}_{k}": v for k, v in metrics.items()})
                        if epoch == cfg.epochs:
                            self.final_margins[split] = margins
                row.update(peak_memory(self.device))
                self.history.append(row)
                checkpoint_now = (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0) or epoch == cfg.epochs
                if checkpoint_now:
                    self._write_metrics()  # full, consistent rewrite alongside the checkpoint
                else:
                    self._append_metrics(row)
                self._fire("epoch_end")
                if checkpoint_now:
                    self.save_checkpoint()
                if epoch_bar is not None:
                    epoch_bar.update(1)
                    shown = {k: row[k] for k in ("train_loss_running", "train_top1", "test_top1") if k in row}
                    epoch_bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})
                if cfg.stop_after_epoch is not None and epoch >= cfg.stop_after_epoch and epoch < cfg.epochs:
                    self.status = "stopped"
                    break
            else:
                self.status = "completed"
        finally:
            if epoch_bar is not None:
                epoch_bar.close()
            if self.status == "running":
                self.status = "failed"
                self._write_provenance("failed", time.time() - self._t0)
        if self.status == "completed" and not self.final_margins and self.history and \
                self.history[-1]["epoch"] == cfg.epochs:
            # Resumed from the final checkpoint (a kill after it, or resume of a finished run): the
            # per-sample margins are not in a checkpoint; the final model gives them again.
            self._sync_buffers()
            for split in self.eval_loaders:
                self.final_margins[split] = self.evaluate(split)[1]
        wall = time.time() - self._t0
        results = self._results(wall, resumed_from)
        if self.is_main:
            atomic_write_json(self.run_dir / "results.json", {k: v for k, v in results.items() if k != "history"})
            if cfg.save_margins and self.final_margins:
                np.savez(self.run_dir / "cosine_margins_final.npz", **self.final_margins)
        self._write_provenance(self.status, wall)
        if self.is_main and cfg.verbose:
            print(self.summary_line(results), flush=True)
        return results

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


def train_run(config: Union[TrainConfig, Dict[str, Any], str], *, callbacks: Optional[Sequence[Callable]] = None,
              argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train one (method, seed) run and return its results (see :class:`Trainer`)."""
    return Trainer(config if isinstance(config, TrainConfig) else load_config(config), callbacks=callbacks,
                   argv=argv).fit()
