"""Training loop for the paper's comparison: standard vs fixed-ETF vs implicit-ETF classifiers.

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

Beside it: the run directory's files (checkpoint, metrics, provenance, results) are the methods of
:class:`~guiding_nc.training.run_files.RunFiles`, which :class:`Trainer` inherits; the evaluation is
:func:`guiding_nc.training.evaluation.evaluate_split`.

Decisions (see also :class:`guiding_nc.core.running_means.ClassMeanEMA`)
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
* **Non-finite values.** The first step whose loss, features or parameters are non-finite (or
  overflow: AGD at an absurd learning rate) is recorded on the device (no sync) and checked every
  ``nonfinite_check_every`` steps and at the end of every epoch; the whole state is checked before
  a checkpoint is written, the features at every evaluation: a bad state is never saved or
  reported, and the run stops (:class:`NonFiniteError`, exit status 3) whatever the optimiser.
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
from ..core.methods import build_head
from .checkpoints import CHECKPOINT_NAME
from ..core.distributed import all_reduce_, dist, init_distributed
from ..core.errors import NonFiniteInputError
from .timing import StepTimer
from ..core.memory import peak_memory
from .evaluation import all_finite, evaluate_split, nonfinite_state, params_finite
from .loaders import SubsetDataset, stratified_subset_indices
from .provenance import atomic_write_text, to_jsonable
from .run_files import RunFiles
from .samplers import EvalShardSampler

__all__ = [
    "NonFiniteError",
    "validate_labels",
    "Trainer",
    "train_run",
]


class NonFiniteError(RuntimeError):
    """Training produced a non-finite (or overflowing) loss, features or parameters."""


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


_all_finite = all_finite  # every entry finite, and so is the norm (guiding_nc.training.evaluation)


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


def _is_interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# ------------------------------------------------------------------------------ trainer
class Trainer(RunFiles):
    """One (method, seed) run.  ``Trainer(config).fit() -> results``.

    ``config`` must name a single method and seed (use :func:`guiding_nc.training.seed_sweep.run_seeds` for several).
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
        from .datasets import build_dataset
        from .loaders import build_loader, dataset_collate_fn, ufm_dataset
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
                idx = stratified_subset_indices(train_ds.targets, int(cfg.max_train_samples))
                train_ds = SubsetDataset(train_ds, idx)
                if eval_train_ds is not None:
                    eval_train_ds = SubsetDataset(eval_train_ds, idx)
            if cfg.max_test_samples and test_ds is not None:
                test_ds = SubsetDataset(test_ds, stratified_subset_indices(test_ds.targets, int(cfg.max_test_samples)))
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
                    ds, batch_sampler=EvalShardSampler(len(ds), eval_bs, self.rank, self.world_size),
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

    def evaluate(self, split: str) -> Tuple[Dict[str, float], np.ndarray]:
        """Loss, top-1/top-5, NC1-NC3, NCC mismatch (NC4), equinorm, cosine margins on a split
        (:func:`guiding_nc.core.metrics.neural_collapse_metrics`), and the dead units of the features.

        Features are what the classifier sees (``head.transform``).  All sums are reduced over
        ranks; returns ``(metrics, per-sample cosine margins)``.
        """
        metrics, margins = evaluate_split(
            self.eval_loaders[split], self.network, self.head, num_classes=self.num_classes, feature_dim=self.feature_dim,
            device=self.device, cache_mode=self.cfg.eval_cache, autocast=self._autocast, world_size=self.world_size)
        if metrics.pop("nonfinite_batches", 0):
            self._raise_nonfinite(self.global_step, f"non-finite features in the evaluation of the {split} split",
                                  at_step=False)
        return metrics, margins

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
            self._raise_nonfinite(first, "non-finite loss, features or parameters")

    def _check_state(self) -> None:
        """Stop unless every parameter and buffer is finite: what a checkpoint may hold."""
        bad = nonfinite_state(self.network)
        if bad:
            self._raise_nonfinite(self.global_step, f"non-finite {', '.join(bad[:3])}", at_step=False)

    def _raise_nonfinite(self, step: int, what: str, at_step: bool = True) -> None:
        spe = self.steps_per_epoch
        epoch = (step - 1) // spe + 1
        within = (step - 1) % spe + 1
        # "Good": every checkpoint passed _check_state before it was written, or when it was loaded.
        ck = (f"the last good checkpoint ({self.checkpoint_path}, epoch {self.last_checkpoint_epoch}) is intact"
              if self.last_checkpoint_epoch is not None else "no checkpoint had been written yet")
        where = (f"at epoch {epoch}, step {within} of {spe} (global step {step})" if at_step
                 else f"after epoch {self.epoch} (global step {step})")
        self.status = "failed: non-finite"
        self._write_provenance(self.status, time.time() - getattr(self, "_t0", time.time()), best_effort=True)
        raise NonFiniteError(f"{what} {where}; training stopped, {ck}")

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
            finite = finite & params_finite(self.network)  # after the update: caught at the step that diverged
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
                    self._check_state()  # a checkpoint holds only a finite state
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
                # Ctrl-C (SIGINT) or a kill that Python sees is a killed run, which resume=true continues.
                interrupted = isinstance(sys.exc_info()[1], (KeyboardInterrupt, SystemExit))
                self.status = "killed" if interrupted else "failed"
                self._write_provenance(self.status, time.time() - self._t0, best_effort=True)
        if self.status == "completed" and not self.final_margins and self.history and \
                self.history[-1]["epoch"] == cfg.epochs:
            # Resumed from the final checkpoint (a kill after it, or resume of a finished run): the
            # per-sample margins are not in a checkpoint; the final model gives them again.
            self._sync_buffers()
            for split in self.eval_loaders:
                self.final_margins[split] = self.evaluate(split)[1]
        wall = time.time() - self._t0
        results = self._results(wall, resumed_from)
        self._write_results(results)
        self._write_provenance(self.status, wall)
        if self.is_main and cfg.verbose:
            print(self.summary_line(results), flush=True)
        return results


def train_run(config: Union[TrainConfig, Dict[str, Any], str], *, callbacks: Optional[Sequence[Callable]] = None,
              argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train one (method, seed) run and return its results (see :class:`Trainer`)."""
    return Trainer(config if isinstance(config, TrainConfig) else load_config(config), callbacks=callbacks,
                   argv=argv).fit()
