"""Training configurations: every setting with the paper's defaults, YAML files with ``base:``
inheritance, ``key=value`` overrides, and the checks that run before anything is built.

* :class:`TrainConfig` -- every setting; values are checked against their types on construction
  (:func:`_coerce`) and for consistency by :meth:`TrainConfig.validate`.
* :func:`load_config` -- a config by name (``configs/<name>.yaml``, shipped inside the package),
  path, mapping or :class:`TrainConfig`, plus overrides (``model_kwargs.hidden=[64]`` sets one
  entry of a mapping).
* :data:`CONFIG_DIR` -- the shipped configs and, under ``experiments/``, the experiment specs.

A bad value is a :class:`ConfigError` whose one-line message names the key and what it accepts.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml

from ..core.heads import METHOD_NAMES

__all__ = ["CONFIG_DIR", "ConfigError", "TrainConfig", "check_name", "load_config", "parse_overrides",
           "project_root"]

# Shipped as package data, so a regular (non-editable) install finds them too.
CONFIG_DIR = Path(str(resources.files("guiding_nc") / "configs"))


def project_root() -> Path:
    """Where outputs and committed results live by default: the source checkout this package runs
    from (an editable install, the book, the tests), else the current directory (an installed wheel)."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and (root / "src" / "guiding_nc").is_dir():
        return root
    return Path.cwd()


class ConfigError(ValueError):
    """A configuration that cannot run (unknown key, bad name, impossible sizes)."""


def _number(text: str):
    """``"1e-5"`` -> ``1e-05``: YAML 1.1 reads exponents without a dot as strings."""
    try:
        return float(text)
    except ValueError:
        return None


def _coerce(key: str, kind: str, value: Any) -> Any:
    """``value`` checked against the field type ``kind`` (its annotation as text), with the
    conversions a user means: ``"1e-5"`` for a float, ``2`` for a float, one name for a list of
    names.  Anything else is a :class:`ConfigError` that names the key and what it accepts."""
    optional = kind.startswith("Optional[")
    inner = kind[len("Optional["):-1] if optional else kind
    if value is None:
        if optional or inner == "Any":
            return None
        raise ConfigError(f"{key} must be {_KIND_TEXT.get(inner, inner)}, got null")
    if inner == "Any":
        return value
    if inner == "bool":
        if isinstance(value, bool):
            return value
    elif inner == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif inner == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _number(value) is not None:
            return _number(value)
    elif inner == "str":
        if isinstance(value, str):
            return value
    elif inner.startswith("List["):
        item = inner[len("List["):-1]
        if isinstance(value, str) and item == "str":
            value = [value]  # `methods=implicit` means the one method
        if isinstance(value, (int, float)) and not isinstance(value, bool) and item in ("int", "float"):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    elif inner.startswith("Dict["):
        if isinstance(value, dict):
            return value
    else:  # pragma: no cover - a field type this function does not know
        return value
    raise ConfigError(f"{key} must be {_KIND_TEXT.get(inner, inner)}{' or null' if optional else ''}, got {value!r}")


_KIND_TEXT = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
              "List[int]": "a list of integers, e.g. [0, 1]", "List[float]": "a list of numbers, e.g. [0.9, 0.999]",
              "List[str]": "a list of names, e.g. [standard, implicit]",
              "Dict[str, Any]": "a mapping, e.g. {hidden: [64]}"}


@dataclass
class TrainConfig:
    """Every training setting.  Defaults are the paper's (§4) where it gives one.

    Groups: run naming (``name``, ``output_dir``, ``run_dir``); what to compare (``method`` or
    ``methods``, ``seed`` or ``seeds``); data (``dataset``, sizes); model; optimiser and
    schedule; the classifier head (``tau``, ``delta``, ``ddn_backward``, ...); evaluation and
    checkpointing; runtime (``device``, ``amp``, ``progress``, ``timing``).
    """

    # naming / output
    name: str = "run"
    description: str = ""
    output_dir: str = "runs"
    run_dir: Optional[str] = None
    overwrite: bool = False
    # what to compare
    method: str = "implicit"
    methods: Optional[List[str]] = None
    seed: int = 0
    seeds: Optional[List[int]] = None
    # data
    dataset: str = "ufm"
    data_root: str = "data/raw"
    download: bool = False
    augment: bool = True
    num_classes: Optional[int] = None
    num_samples: Optional[int] = None
    max_train_samples: Optional[int] = None
    max_test_samples: Optional[int] = None
    split_seed: int = 0
    batch_size: int = 256
    eval_batch_size: Optional[int] = None
    drop_last: bool = False
    num_workers: int = 0
    pin_memory: Optional[bool] = None
    # model
    model: str = "ufm"
    feature_dim: Optional[int] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # optimisation
    optimizer: str = "agd"
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gain: float = 10.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "none"
    warmup_steps: int = 0
    epochs: int = 200
    # head
    tau: float = 5.0
    delta: float = 1e-3
    ddn_backward: str = "closed_form"
    solver: str = "closed_form"
    solver_max_iterations: int = 30
    ema_floor: float = 1e-4
    solve_dtype: str = "float32"
    head_bias: bool = False
    etf_seed: Optional[int] = None
    # protocol (guiding_nc.training.protocol): a named set of choices; each option below, when not null,
    # overrides the protocol's choice for it
    protocol: str = "one_switch"
    standard_centring: Optional[str] = None
    fixed_centring: Optional[str] = None
    implicit_centring: Optional[str] = None
    standard_sampler: Optional[str] = None
    fixed_sampler: Optional[str] = None
    implicit_sampler: Optional[str] = None
    implicit_class_means: Optional[str] = None
    final_activation: Optional[bool] = None
    agd_depth: Optional[str] = None
    # evaluation / logging
    eval_every: int = 1
    eval_train: bool = True
    eval_test: bool = True
    eval_cache: Any = "auto"
    report_epochs: List[int] = field(default_factory=lambda: [50, 200])
    record_step_losses: bool = False
    record_step_accuracy: bool = False
    save_margins: bool = True
    # checkpointing
    checkpoint_every: int = 10
    keep_checkpoints: bool = False
    resume: bool = False
    stop_after_epoch: Optional[int] = None
    # runtime
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "bfloat16"
    deterministic: bool = False
    progress: bool = True
    verbose: bool = True
    timing: str = "events"
    nonfinite_check_every: int = 20
    quick: bool = False
    num_threads: Optional[int] = None

    # -- construction ------------------------------------------------------------------
    @classmethod
    def valid_keys(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        """Build from a mapping; unknown keys raise :class:`ConfigError` listing the valid ones, and
        every value is checked against its field's type (:func:`_coerce`)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of key: value, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if k != "base"}
        unknown = sorted(set(data) - set(cls.valid_keys()))
        if "stratified" in unknown:
            raise ConfigError("stratified is now per method: standard_sampler, fixed_sampler, implicit_sampler "
                              "(stratified or shuffled; null = the protocol's choice)")
        if unknown:
            raise ConfigError(
                f"unknown config key(s): {', '.join(unknown)}. Valid keys are: {', '.join(sorted(cls.valid_keys()))}"
            )
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        cfg = cls(**{k: _coerce(k, kinds[k], copy.deepcopy(v)) for k, v in data.items()})
        cfg.explicit_keys = frozenset(data)
        return cfg

    # The keys a config file, mapping or override set (the rest hold their defaults): a default
    # that matters for some runs only can be warned about (weight decay outside AGD).
    explicit_keys: ClassVar[frozenset] = frozenset()

    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    def replace(self, **changes: Any) -> "TrainConfig":
        d = self.to_dict()
        d.update(changes)
        out = TrainConfig.from_dict(d)
        out.explicit_keys = self.explicit_keys | frozenset(changes)
        return out

    def head_options(self) -> Dict[str, Any]:
        """The keywords of :func:`guiding_nc.core.heads.build_head` these settings give (beside the
        method, the feature dimension and the number of classes)."""
        from ..core.methods import family

        choices = self.protocol_choices()
        return dict(tau=self.tau, delta=self.delta, ddn_backward=self.ddn_backward, solver=self.solver,
                    ema_floor=self.ema_floor, head_bias=self.head_bias,
                    etf_seed=self.seed if self.etf_seed is None else self.etf_seed,
                    solve_dtype=torch.float64 if self.solve_dtype == "float64" else torch.float32,
                    max_iterations=self.solver_max_iterations,
                    centring=choices[f"{family(self.method)}_centring"],
                    class_means=choices["implicit_class_means"])

    def protocol_choices(self) -> Dict[str, Any]:
        """Every protocol option's value for these settings (:func:`guiding_nc.training.protocol.resolve`):
        the option's own setting where it is not null, else the protocol's choice."""
        from .protocol import resolve

        return resolve(self.protocol, self.to_dict())

    @property
    def stratified_batches(self) -> bool:
        """Whether the run's method trains on stratified batches (its family's sampler option)."""
        from ..core.methods import family

        return self.protocol_choices()[f"{family(self.method)}_sampler"] == "stratified"

    def protocol_label(self) -> str:
        """The protocol, and the options relevant to this run where it departs from it, e.g.
        ``"paper"`` or ``"paper with standard_sampler=stratified"`` (:func:`guiding_nc.training.protocol.describe`)."""
        from .models import model_defaults
        from .protocol import describe, relevant

        values = self.protocol_choices()
        keys = relevant(values, self.method, model_has_final_activation="final_activation" in model_defaults(self.model),
                        agd=str(self.optimizer).lower() == "agd")
        return describe(self.protocol, values, keys)

    # -- derived -----------------------------------------------------------------------
    @property
    def method_list(self) -> List[str]:
        return list(self.methods) if self.methods else [self.method]

    @property
    def seed_list(self) -> List[int]:
        return [int(s) for s in self.seeds] if self.seeds else [int(self.seed)]

    @property
    def is_ufm(self) -> bool:
        return str(self.dataset).lower() == "ufm"

    def apply_quick(self) -> "TrainConfig":
        """A shrunken copy for CI/smoke tests: few epochs, small data, at most two seeds."""
        if not self.quick:
            return self
        d = self.to_dict()
        d["epochs"] = min(int(self.epochs), 3)
        d["report_epochs"] = [e for e in self.report_epochs if e <= d["epochs"]]
        d["checkpoint_every"] = max(1, min(int(self.checkpoint_every), d["epochs"]))
        if self.seeds:
            d["seeds"] = list(self.seeds)[:2]
        if self.is_ufm:
            C = int(self.num_classes or 10)
            n = int(self.num_samples or 10 * C)
            n_quick = min(n, 4 * C)
            d["num_samples"] = n_quick
            d["batch_size"] = min(int(self.batch_size), n_quick)
        else:
            d["max_train_samples"] = min(int(self.max_train_samples or 512), 512)
            d["max_test_samples"] = min(int(self.max_test_samples or 256), 256)
            d["batch_size"] = min(int(self.batch_size), 128)
            d["download"] = self.download
        d["quick"] = False  # applied
        return TrainConfig.from_dict(d)

    def validate(self) -> None:
        """Check names and sizes that can be checked without building anything."""
        from .datasets import DATASET_NAMES
        from .models import MODEL_NAMES
        from .optim import OPTIMIZER_NAMES, SCHEDULER_NAMES
        from ..core.nearest import BACKWARDS, SOLVERS

        if self.num_threads is not None and (isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int)
                                             or self.num_threads < 1):
            raise ConfigError(f"num_threads must be a positive integer or null, got {self.num_threads!r}")
        for m in self.method_list:
            if m not in METHOD_NAMES:
                raise ConfigError(f"unknown method {m!r}; choose one of {', '.join(METHOD_NAMES)}")
        if str(self.model).lower() not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        datasets = ("ufm",) + tuple(DATASET_NAMES)
        if str(self.dataset).lower() not in datasets:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(datasets)}")
        if (str(self.model).lower() == "ufm") != self.is_ufm:
            raise ConfigError("model 'ufm' goes with dataset 'ufm' (and only with it); "
                              f"got model={self.model!r}, dataset={self.dataset!r}")
        if str(self.optimizer).lower() not in OPTIMIZER_NAMES:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZER_NAMES)}")
        if str(self.scheduler).lower() not in SCHEDULER_NAMES:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
        if self.ddn_backward not in BACKWARDS:
            raise ConfigError(f"unknown ddn_backward {self.ddn_backward!r}; choose one of {', '.join(BACKWARDS)}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        from .protocol import OPTIONS, PROTOCOL_NAMES

        if self.protocol not in PROTOCOL_NAMES:
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOL_NAMES)}, got {self.protocol!r}")
        for opt in OPTIONS:
            v = getattr(self, opt.key)
            if v is not None and v not in opt.choices:
                choices = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in opt.choices)
                raise ConfigError(f"{opt.key} must be one of {choices} or null (the protocol's choice), got {v!r}")
        if "final_activation" in (self.model_kwargs or {}):
            raise ConfigError("set final_activation (a protocol option), not model_kwargs.final_activation")
        if self.solve_dtype not in ("float32", "float64"):
            raise ConfigError(f"solve_dtype must be 'float32' or 'float64' (never lower), got {self.solve_dtype!r}")
        if self.amp_dtype not in ("bfloat16", "float16"):
            raise ConfigError(f"amp_dtype must be 'bfloat16' or 'float16', got {self.amp_dtype!r}")
        if self.timing not in ("events", "sync", "off"):
            raise ConfigError(f"timing must be 'events', 'sync' or 'off', got {self.timing!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ConfigError(f"invalid device {self.device!r}: {exc}") from None
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ConfigError(
                f"batch_size must be an integer >= 2, got {self.batch_size!r}: class means and the batch "
                "global mean need at least two samples per step"
            )
        if self.eval_batch_size is not None and (not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1):
            raise ConfigError(f"eval_batch_size must be a positive integer, got {self.eval_batch_size!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs!r}")
        for key in ("eval_every", "checkpoint_every", "nonfinite_check_every"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 0 or (key != "checkpoint_every" and v < 1):
                raise ConfigError(f"{key} must be a positive integer, got {v!r}")
        if not (isinstance(self.tau, (int, float)) and self.tau > 0):
            raise ConfigError(f"tau must be > 0, got {self.tau!r}")
        if not (isinstance(self.delta, (int, float)) and self.delta > 0):
            raise ConfigError(f"delta must be > 0 (the proximal term makes U* unique), got {self.delta!r}")
        if self.is_ufm:
            if not self.num_classes or not self.num_samples or not self.feature_dim:
                raise ConfigError("a UFM run needs num_classes, num_samples and feature_dim")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 2):
            raise ConfigError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        if str(self.optimizer).lower() == "agd" and self.head_bias:
            raise ConfigError("head_bias=true conflicts with optimizer 'agd' (AGD handles matrices only)")
        if self.stop_after_epoch is not None and (not isinstance(self.stop_after_epoch, int) or self.stop_after_epoch < 1):
            raise ConfigError(f"stop_after_epoch must be a positive integer, got {self.stop_after_epoch!r}")
        if self.run_dir is not None and len(self.method_list) * len(self.seed_list) > 1:
            raise ConfigError("run_dir names a single run; with several methods/seeds use output_dir + name")
        check_name("name", self.name)
        for key in ("max_train_samples", "max_test_samples", "num_samples", "feature_dim", "solver_max_iterations"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"{key} must be a positive integer, got {v!r}")
        for key in ("seed", "split_seed", *(f"seeds[{i}]" for i in range(len(self.seeds or [])))):
            v = getattr(self, key) if "[" not in key else self.seeds[int(key[6:-1])]
            if v < 0:
                raise ConfigError(f"{key} must be an integer >= 0, got {v!r}")
        if not (0.0 < self.ema_floor <= 1.0):
            raise ConfigError(f"ema_floor must lie in (0, 1], got {self.ema_floor!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number or null, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {self.betas!r}")
        for key in ("momentum", "weight_decay", "gain"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{key} must be a number >= 0, got {v!r}")
        bad = [e for e in self.report_epochs if e < 1]
        if bad:
            raise ConfigError(f"report_epochs must be epochs >= 1, got {self.report_epochs!r}")


def check_name(key: str, value: str) -> str:
    """A name that becomes one path component (a run's ``name``, an experiment's config or
    variant): no path separator, no ``..``, not empty, so no write can leave its directory."""
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value \
            or value != value.strip() or "\0" in value:
        raise ConfigError(f"{key} must be a plain name (no '/', '\\' or '..'), got {value!r}")
    return value


def _yaml_value(text: str, where: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: {text!r} is not a valid YAML value ({mark})") from None
    return value


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["epochs=3", "seeds=[0,1]", "method=fixed"]`` -> dict (values parsed as YAML; numbers
    such as ``1e-5`` that YAML 1.1 leaves as strings are read as numbers)."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        parsed = _yaml_value(value, f"override {key}") if value.strip() != "" else None
        if isinstance(parsed, str) and _number(parsed) is not None and parsed.strip().lower() not in ("inf", "nan",
                                                                                                     "-inf", "+inf"):
            parsed = _number(parsed)
        out[key] = parsed
    return out


def _resolve_config_path(ref: Union[str, os.PathLike], relative_to: Optional[Path] = None) -> Path:
    p = Path(ref)
    candidates = []
    if relative_to is not None and not p.is_absolute():
        candidates += [relative_to / p, relative_to / f"{p}.yaml"]
    candidates += [p, Path(f"{p}.yaml"), CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise ConfigError(f"config {str(ref)!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def _load_yaml_with_base(path: Path, seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    if path in seen:
        raise ConfigError(f"circular 'base:' chain: {' -> '.join(str(s) for s in seen + (path,))}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a mapping of key: value")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _load_yaml_with_base(_resolve_config_path(base, path.parent), seen + (path,))
    merged.update(data)
    return merged


def load_config(source: Union[None, str, os.PathLike, Dict[str, Any], TrainConfig] = None,
                overrides: Union[None, Sequence[str], Dict[str, Any]] = None) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file / config name / dict, plus overrides.

    ``source`` may be a path, a name in ``configs/`` (``"ufm10"``), a dict or a TrainConfig.
    A YAML file may say ``base: other`` to inherit ``other``'s keys (its own keys win).
    ``overrides`` is a list of ``key=value`` strings (values parsed as YAML) or a dict; they
    are applied last.  ``quick: true`` is *not* applied here (see :meth:`TrainConfig.apply_quick`).
    """
    explicit: frozenset = frozenset()
    if source is None:
        data: Dict[str, Any] = {}
    elif isinstance(source, TrainConfig):
        data = source.to_dict()
        explicit = source.explicit_keys
    elif isinstance(source, dict):
        data = dict(source)
        if "base" in data:
            base = data.pop("base")
            merged = _load_yaml_with_base(_resolve_config_path(base))
            merged.update(data)
            data = merged
    else:
        data = _load_yaml_with_base(_resolve_config_path(source))
    if overrides:
        extra = parse_overrides(overrides) if not isinstance(overrides, dict) else dict(overrides)
        # A single `method=`/`seed=` given on top of a file that lists several means "just this one".
        for single, plural in (("method", "methods"), ("seed", "seeds")):
            if single in extra and plural not in extra:
                data.pop(plural, None)
        for key, value in extra.items():
            if "." in key:
                # `model_kwargs.final_activation=false` sets one entry of a mapping-valued key.
                top, sub = key.split(".", 1)
                mappings = [f.name for f in dataclasses.fields(TrainConfig) if f.default_factory is dict]
                if top not in mappings or not isinstance(data.get(top) or {}, dict):
                    raise ConfigError(f"override {key!r}: only a mapping-valued key takes a dotted entry "
                                      "(e.g. model_kwargs.hidden=[64])")
                data[top] = {**(data.get(top) or {}), sub: value}
            else:
                data[key] = value
    cfg = TrainConfig.from_dict(data)
    if isinstance(source, TrainConfig):
        cfg.explicit_keys = explicit | frozenset(k.split(".", 1)[0] for k in (extra if overrides else {}))
    return cfg


