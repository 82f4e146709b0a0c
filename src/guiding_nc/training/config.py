"""Training configurations: every setting with the paper's defaults, YAML files with ``base:``
inheritance, ``key=value`` overrides, and the checks that run before anything is built.

* :class:`TrainConfig` -- every setting, declared once: its type (the annotation, enforced on
  construction by :func:`_coerce`) and its range or choices (the field's ``metadata["check"]``, a
  :mod:`guiding_nc.core.checks` object -- the library's own where the setting is a library argument,
  the protocol options' choices from :mod:`guiding_nc.training.protocol`); :meth:`TrainConfig.schema`
  lists them and :meth:`TrainConfig.validate` runs them, then the rules between settings.
* :func:`load_config` -- a config by name (``configs/<name>.yaml``, shipped inside the package),
  path, mapping or :class:`TrainConfig`, plus overrides (``model_kwargs.hidden=[64]`` sets one
  entry of a mapping).
* :data:`CONFIG_DIR` -- the shipped configs and, under ``experiments/``, the experiment specs.

A bad value is a :class:`ConfigError` whose one-line message names the key and what it accepts.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml

from ..core.checks import (CLASSES, DELTA, EMA_FLOOR, TAU, THREADS, ArgumentError, Check, Choice, Device,
                           Flag, Integer, ListOf, Mapping, Maybe, Name, PathText, Real, Text, max_threads)
from ..core.methods import METHOD_NAMES
from ..core.nearest import BACKWARDS, SOLVERS
from .protocol import PROTOCOL_NAMES
from .protocol import option as protocol_option

__all__ = ["CONFIG_DIR", "ConfigError", "TrainConfig", "check_name", "config_title", "load_config", "parse_overrides",
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


# ----------------------------------------------------------------------------- the schema
# Every setting's type is its annotation (read by _coerce); its range or choices are its field's
# metadata["check"] (a guiding_nc.core.checks object, the library's own where the setting is the
# library's argument). TrainConfig.schema() lists them; validate() runs them, then the rules that
# tie settings together.
_STRATIFIED_MOVED = ("stratified is now per method: standard_sampler, fixed_sampler, implicit_sampler "
                     "(stratified or shuffled; null = the protocol's choice)")


def _s(default: Any, check: Check):
    """A setting: its default (a callable for a mutable one) and the check of its values."""
    if callable(default):
        return field(default_factory=default, metadata={"check": check})
    return field(default=default, metadata={"check": check})


def _names(kind: str) -> Sequence[str]:
    """The registered names of ``kind`` (read when a value is checked: the registries import torchvision)."""
    if kind == "datasets":
        from .datasets import DATASET_NAMES as names
    elif kind == "models":
        from .models import MODEL_NAMES as names
    elif kind == "optimizers":
        from .optim import OPTIMIZER_NAMES as names
    else:
        from .optim import SCHEDULER_NAMES as names
    return tuple(names)


def _option(key: str) -> Check:
    """A protocol option (guiding_nc.training.protocol): one of its choices, or null for the protocol's."""
    return Maybe(Choice(protocol_option(key).choices), meaning="the protocol's choice")


_METHOD = Choice(METHOD_NAMES, style="unknown", label="method")
_SEED = Integer(0, 2 ** 32 - 1)  # NumPy's seeds stop there
_POSITIVE = Integer(1)


@dataclass
class TrainConfig:
    """Every training setting.  Defaults are the paper's (§4) where it gives one.

    Groups: run naming (``name``, ``output_dir``, ``run_dir``); what to compare (``method`` or
    ``methods``, ``seed`` or ``seeds``); data (``dataset``, sizes); model; optimiser and
    schedule; the classifier head (``tau``, ``delta``, ``ddn_backward``, ...); evaluation and
    checkpointing; runtime (``device``, ``amp``, ``progress``, ``timing``).
    """

    # naming / output
    name: str = _s("run", Name())
    description: str = _s("", Text())
    output_dir: str = _s("runs", PathText())
    run_dir: Optional[str] = _s(None, Maybe(PathText(), meaning="output_dir/name/method/seed<k>"))
    overwrite: bool = _s(False, Flag())
    # what to compare
    method: str = _s("implicit", _METHOD)
    methods: Optional[List[str]] = _s(None, Maybe(ListOf(_METHOD, unique=True, example="[standard, implicit]"),
                                                  meaning="the one method"))
    seed: int = _s(0, _SEED)
    seeds: Optional[List[int]] = _s(None, Maybe(ListOf(_SEED, unique=True, example="[0, 1]"), meaning="the one seed"))
    # data
    dataset: str = _s("ufm", Choice(lambda: ("ufm",) + tuple(_names("datasets")), style="unknown", fold_case=True))
    data_root: str = _s("data/raw", PathText())
    download: bool = _s(False, Flag())
    augment: bool = _s(True, Flag())
    num_classes: Optional[int] = _s(None, Maybe(CLASSES))
    num_samples: Optional[int] = _s(None, Maybe(_POSITIVE))
    max_train_samples: Optional[int] = _s(None, Maybe(_POSITIVE, meaning="all"))
    max_test_samples: Optional[int] = _s(None, Maybe(_POSITIVE, meaning="all"))
    split_seed: int = _s(0, _SEED)
    batch_size: int = _s(256, Integer(2, why="class means and the batch global mean need at least two samples per step"))
    eval_batch_size: Optional[int] = _s(None, Maybe(_POSITIVE, meaning="batch_size"))
    drop_last: bool = _s(False, Flag())
    num_workers: int = _s(0, Integer(0, max_threads, high_text="4 per CPU of this machine"))
    pin_memory: Optional[bool] = _s(None, Maybe(Flag(), meaning="on CUDA only"))
    # model
    model: str = _s("ufm", Choice(lambda: _names("models"), style="unknown", fold_case=True))
    feature_dim: Optional[int] = _s(None, Maybe(_POSITIVE, meaning="the model's"))
    model_kwargs: Dict[str, Any] = _s(dict, Mapping())
    # optimisation
    optimizer: str = _s("agd", Choice(lambda: _names("optimizers"), style="unknown", fold_case=True))
    lr: Optional[float] = _s(None, Maybe(Real(0.0, 1e6, low_open=True), meaning="the optimiser's default"))
    momentum: float = _s(0.9, Real(0.0, 1.0, high_open=True))
    weight_decay: float = _s(5e-4, Real(0.0, 1e3))
    gain: float = _s(10.0, Real(0.0, 1e6))
    betas: List[float] = _s(lambda: [0.9, 0.999], ListOf(Real(0.0, 1.0, high_open=True), length=2,
                                                         example="[0.9, 0.999]"))
    scheduler: str = _s("none", Choice(lambda: _names("schedulers"), style="unknown", fold_case=True))
    warmup_steps: int = _s(0, Integer(0))
    epochs: int = _s(200, _POSITIVE)
    # head
    tau: float = _s(5.0, TAU)
    delta: float = _s(1e-3, DELTA)
    ddn_backward: str = _s("closed_form", Choice(BACKWARDS, style="unknown"))
    solver: str = _s("closed_form", Choice(SOLVERS, style="unknown"))
    solver_max_iterations: int = _s(30, Integer(1, 10_000))
    ema_floor: float = _s(1e-4, EMA_FLOOR)
    solve_dtype: str = _s("float32", Choice(("float32", "float64")))
    head_bias: bool = _s(False, Flag())
    etf_seed: Optional[int] = _s(None, Maybe(_SEED, meaning="the run's seed"))
    # protocol (guiding_nc.training.protocol): a named set of choices; each option below, when not null,
    # overrides the protocol's choice for it
    protocol: str = _s("one_switch", Choice(PROTOCOL_NAMES))
    standard_centring: Optional[str] = _s(None, _option("standard_centring"))
    fixed_centring: Optional[str] = _s(None, _option("fixed_centring"))
    implicit_centring: Optional[str] = _s(None, _option("implicit_centring"))
    standard_sampler: Optional[str] = _s(None, _option("standard_sampler"))
    fixed_sampler: Optional[str] = _s(None, _option("fixed_sampler"))
    implicit_sampler: Optional[str] = _s(None, _option("implicit_sampler"))
    implicit_class_means: Optional[str] = _s(None, _option("implicit_class_means"))
    final_activation: Optional[bool] = _s(None, _option("final_activation"))
    agd_depth: Optional[str] = _s(None, _option("agd_depth"))
    # evaluation / logging
    eval_every: int = _s(1, _POSITIVE)
    eval_train: bool = _s(True, Flag())
    eval_test: bool = _s(True, Flag())
    eval_cache: Any = _s("auto", Choice(("auto", True, False)))
    report_epochs: List[int] = _s(lambda: [50, 200], ListOf(_POSITIVE, min_len=0, unique=True, example="[50, 200]"))
    record_step_losses: bool = _s(False, Flag())
    record_step_accuracy: bool = _s(False, Flag())
    save_margins: bool = _s(True, Flag())
    # checkpointing
    checkpoint_every: int = _s(10, Integer(0, why="0: at the end only"))
    keep_checkpoints: bool = _s(False, Flag())
    resume: bool = _s(False, Flag())
    stop_after_epoch: Optional[int] = _s(None, Maybe(_POSITIVE))
    # runtime
    device: str = _s("auto", Device())
    amp: bool = _s(False, Flag())
    amp_dtype: str = _s("bfloat16", Choice(("bfloat16", "float16")))
    deterministic: bool = _s(False, Flag())
    progress: bool = _s(True, Flag())
    verbose: bool = _s(True, Flag())
    timing: str = _s("events", Choice(("events", "sync", "off")))
    nonfinite_check_every: int = _s(20, _POSITIVE)
    quick: bool = _s(False, Flag())
    num_threads: Optional[int] = _s(None, Maybe(THREADS, meaning="torch's default"))

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
            raise ConfigError(_STRATIFIED_MOVED)
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
        out.override_keys = self.override_keys
        return out

    def head_options(self) -> Dict[str, Any]:
        """The keywords of :func:`guiding_nc.core.methods.build_head` these settings give (beside the
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

    @classmethod
    def schema(cls) -> Dict[str, Check]:
        """Every setting's declared check (its type, range or choices): ``{key: check}``."""
        return {f.name: f.metadata["check"] for f in dataclasses.fields(cls)}

    # The keys the last layer of overrides set (the command line's key=value, a caller's dict):
    # report_epochs beyond epochs is an error there, and inherited ones are left to apply_quick.
    override_keys: ClassVar[frozenset] = frozenset()

    def validate(self) -> None:
        """Every setting against its declared check (:meth:`schema`), then the rules that tie
        settings together; the first problem is a one-line :class:`ConfigError`."""
        for key, check in self.schema().items():
            try:
                check(key, getattr(self, key))
            except ArgumentError as exc:
                raise ConfigError(str(exc)) from None
        self._check_rules()

    def _check_rules(self) -> None:
        if (str(self.model).lower() == "ufm") != self.is_ufm:
            raise ConfigError("model 'ufm' goes with dataset 'ufm' (and only with it); "
                              f"got model={self.model!r}, dataset={self.dataset!r}")
        if self.is_ufm and not (self.num_classes and self.num_samples and self.feature_dim):
            raise ConfigError("a UFM run needs num_classes, num_samples and feature_dim")
        if self.feature_dim is not None and self.num_classes is not None and self.feature_dim < self.num_classes:
            raise ConfigError(f"num_classes={self.num_classes} exceeds the feature dimension feature_dim="
                              f"{self.feature_dim}: a simplex ETF of C classes needs feature_dim >= C")
        if str(self.optimizer).lower() == "agd" and self.head_bias:
            raise ConfigError("head_bias=true conflicts with optimizer 'agd' (AGD handles matrices only)")
        if "final_activation" in self.model_kwargs:
            raise ConfigError("set final_activation (a protocol option), not model_kwargs.final_activation")
        if self.run_dir is not None and len(self.method_list) * len(self.seed_list) > 1:
            raise ConfigError("run_dir names a single run; with several methods/seeds use output_dir + name")
        if self.resume and self.overwrite:
            raise ConfigError("resume=true and overwrite=true contradict each other (resume continues the checkpoint, "
                              "overwrite starts the run again): pass one of them")
        late = [e for e in self.report_epochs if e > self.epochs]
        if late and "report_epochs" in self.override_keys:
            raise ConfigError(f"report_epochs {late} lie beyond epochs={self.epochs}: report epochs from 1 to "
                              f"{self.epochs}, or raise epochs")
        if self.stop_after_epoch is not None and self.stop_after_epoch > self.epochs:
            raise ConfigError(f"stop_after_epoch={self.stop_after_epoch} lies beyond epochs={self.epochs}: the run "
                              "would end first; give an epoch from 1 to epochs, or null")


def config_title(source: Union[str, "TrainConfig"]) -> str:
    """How figures and tables name a training config: ``"MNIST 5k × small CNN"`` (the dataset's
    and the model's labels, from their registries), ``"UFM-10"`` for an unconstrained feature model."""
    from .datasets import DATASETS
    from .models import MODEL_LABELS

    cfg = source if isinstance(source, TrainConfig) else load_config(source)
    if cfg.is_ufm:
        return f"UFM-{cfg.num_classes}"
    spec = DATASETS.get(str(cfg.dataset).lower())
    return f"{spec.title if spec else cfg.dataset} × {MODEL_LABELS.get(str(cfg.model).lower(), cfg.model)}"


def check_name(key: str, value: str) -> str:
    """A name that becomes one path component (a run's ``name``, an experiment's config or
    variant): no path separator, no ``..``, not empty, not too long for a file name
    (:class:`guiding_nc.core.checks.Name`), so no write can leave its directory or fail on it."""
    try:
        return Name()(key, value)
    except ArgumentError as exc:
        raise ConfigError(str(exc)) from None


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
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}; fix the "
                          "file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text (UTF-8) file: a config is YAML text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a mapping of key: value, got a {type(data).__name__}; fix the file")
    # Each key against its type here, where the message can name the file that holds it.
    kinds = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(str(k) for k in data if k not in kinds and k != "base")
    if "stratified" in unknown:
        raise ConfigError(f"{path}: {_STRATIFIED_MOVED}; fix the file")
    if unknown:
        raise ConfigError(f"{path}: unknown config key(s) {', '.join(unknown)}; fix the file (valid keys: "
                          f"{', '.join(sorted(kinds))})")
    for key, value in data.items():
        if key in kinds:
            try:
                _coerce(key, kinds[key], copy.deepcopy(value))
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}; fix the file") from None
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
    given = frozenset(k.split(".", 1)[0] for k in (extra if overrides else {}))
    if isinstance(source, TrainConfig):
        cfg.explicit_keys = explicit | given
    cfg.override_keys = given | (frozenset(source) if isinstance(source, dict) else frozenset())
    return cfg


