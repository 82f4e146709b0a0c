"""What an experiment is: a YAML file in ``configs/experiments/`` read into an :class:`ExperimentSpec`
(``configs x variants x methods x seeds`` training runs, the overrides of each, the quick-mode
changes), the grid of runs it names, the key of each run and the training config of each run.

:mod:`guiding_nc.experiments.runner` runs the grid; :mod:`guiding_nc.experiments.store` keeps its
results.  Book: the experiment chapters.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ..training.config import CONFIG_DIR, ConfigError, check_name, load_config
from .results import run_key

__all__ = ["ExperimentSpec", "EXPERIMENT_DIR", "PER_RUN_KEYS", "list_experiments", "load_experiment", "check_overrides",
           "run_config", "run_key_of"]

EXPERIMENT_DIR = CONFIG_DIR / "experiments"
_SPEC_KEYS = {"description", "paper", "configs", "methods", "seeds", "overrides", "config_overrides", "variants",
              "quick", "record_step_accuracy", "record_step_losses", "thresholds", "save_margins", "report_epochs",
              "notes"}

_QUICK_KEYS = {"configs", "seeds", "overrides", "variants", "config_overrides"}

_AFRESH = "a grid always resumes its runs; use a new --work-dir to start them afresh"
_SPEC_FILE = "it is a setting of the experiment, not of one command: set {key} in the experiment file"
#: The settings :func:`run_config` gives each run of a grid itself (its method, seed, directory,
#: device, ...), or that would stop a run short: given as an override they would be lost or would
#: label one run's numbers as another's, so an override naming one is refused, saying what to use
#: instead (a flag, mostly).
PER_RUN_KEYS = {
    "method": "--methods", "methods": "--methods", "seed": "--seeds", "seeds": "--seeds",
    "device": "--device", "num_threads": "--threads", "quick": "--quick",
    "run_dir": "--work-dir", "output_dir": "--work-dir", "name": "--work-dir",
    "resume": _AFRESH, "overwrite": _AFRESH, "progress": "--no-progress", "verbose": "--no-progress",
    "stop_after_epoch": "a grid trains every run to its end; interrupt the command instead (rerunning it continues "
                        "where it stopped)",
    "record_step_accuracy": _SPEC_FILE.format(key="record_step_accuracy"),
    "record_step_losses": _SPEC_FILE.format(key="record_step_losses"),
    "save_margins": _SPEC_FILE.format(key="save_margins"),
}
# Of those, the ones an experiment file must not set either: they would relabel or cut short its
# runs (a config's own `seeds` narrows the experiment's seeds, and stays allowed there).
_FILE_REFUSED = ("method", "methods", "seed", "seeds", "run_dir", "output_dir", "name", "resume", "overwrite",
                 "quick", "stop_after_epoch")


@dataclass
class ExperimentSpec:
    """What to run: ``configs x variants x methods x seeds`` training runs.

    ``overrides`` apply to every run, ``config_overrides`` to the runs of one config;
    ``variants`` maps a name to ``{"methods": [...], "overrides": {...}, "config_overrides":
    {config: {...}}}`` (each optional; the last for a setting that differs by config, such as a
    learning rate chosen per size); with none given there is one variant, ``"default"``.
    ``thresholds`` fixes, before the runs, the thresholds of the steps-to-threshold measures
    (:func:`steps_to_thresholds`).  ``quick`` holds the quick-mode changes:
    fewer ``configs``/``seeds``/``variants``, extra ``overrides`` for all runs and
    ``config_overrides`` per config (e.g. a shrunken UFM).  ``notes`` is free text (why the
    budget differs from the paper's, say) copied into the provenance.
    """

    name: str
    description: str = ""
    paper: str = ""
    configs: List[str] = field(default_factory=list)
    methods: List[str] = field(default_factory=lambda: ["standard", "fixed", "implicit"])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    overrides: Dict[str, Any] = field(default_factory=dict)
    config_overrides: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    variants: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {"default": {}})
    quick: Dict[str, Any] = field(default_factory=dict)
    # Overrides given on the command line (or to run_experiment): applied after everything the
    # experiment sets, per config and per variant included. Not an experiment-file key.
    cli_overrides: Dict[str, Any] = field(default_factory=dict)
    record_step_accuracy: bool = False
    record_step_losses: bool = False
    thresholds: Dict[str, float] = field(default_factory=dict)
    save_margins: bool = False
    report_epochs: Optional[List[int]] = None
    notes: str = ""

    def quick_spec(self) -> "ExperimentSpec":
        """The quick-mode version (CI): the ``quick`` section applied."""
        q = self.quick
        spec = copy.deepcopy(self)
        spec.configs = list(q.get("configs", self.configs))
        spec.seeds = [int(s) for s in q.get("seeds", self.seeds[:2])]
        if "variants" in q:
            spec.variants = {k: v for k, v in self.variants.items() if k in q["variants"]}
        spec.overrides = {**self.overrides, **q.get("overrides", {})}
        quick_cfg = q.get("config_overrides", {})
        spec.config_overrides = {c: {**self.config_overrides.get(c, {}), **quick_cfg.get(c, {})}
                                 for c in set(self.config_overrides) | set(quick_cfg)}
        spec.quick = {}
        return spec

    def jobs(self) -> List[Dict[str, Any]]:
        """Every run as ``{"config", "variant", "method", "seed", "overrides"}``."""
        out = []
        per_config = self.config_overrides
        for config in self.configs:
            cfg_ov = dict(per_config.get(config, {}))
            # `seeds` in a config's overrides narrows the experiment's seeds for that config.
            cfg_seeds = cfg_ov.pop("seeds", None)
            seeds = [s for s in self.seeds if cfg_seeds is None or s in cfg_seeds]
            for variant, v in self.variants.items():
                var_cfg_ov = (v.get("config_overrides") or {}).get(config, {})
                for method in v.get("methods", self.methods):
                    for seed in seeds:
                        # Precedence: command line > variant per config > variant > experiment per
                        # config > experiment > the config file.
                        ov = {**self.overrides, **cfg_ov, **v.get("overrides", {}), **var_cfg_ov,
                              **self.cli_overrides}
                        out.append({"config": config, "variant": variant, "method": method, "seed": int(seed),
                                    "overrides": ov})
        return out


def list_experiments() -> List[str]:
    return sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))


def load_experiment(name_or_path) -> ExperimentSpec:
    """An :class:`ExperimentSpec` from ``configs/experiments/<name>.yaml`` or a path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = EXPERIMENT_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"no experiment {str(name_or_path)!r}: {path} does not exist. "
                          f"Known experiments: {', '.join(list_experiments())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}; fix the "
                          "file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an experiment file must be a mapping")
    unknown = sorted(set(data) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown experiment key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_SPEC_KEYS))}")
    _check_file_shapes(path, data)
    bad_quick = sorted(set(data.get("quick", {}) or {}) - _QUICK_KEYS)
    if bad_quick:
        raise ConfigError(f"{path}: unknown quick key(s) {', '.join(bad_quick)}; valid: {', '.join(sorted(_QUICK_KEYS))}")
    if not data.get("configs"):
        raise ConfigError(f"{path}: an experiment needs a non-empty 'configs' list")
    for c in data["configs"]:
        check_name(f"{path.name}: config", c)
    data.setdefault("variants", {"default": {}})
    for vname, v in data["variants"].items():
        check_name(f"{path.name}: variant", vname)
        if not isinstance(v, dict) or set(v) - {"methods", "overrides", "config_overrides"}:
            raise ConfigError(f"{path}: variant {vname!r} must be a mapping with 'methods', 'overrides' and/or "
                              "'config_overrides' (per config)")
    data["quick"] = data.get("quick") or {}
    _check_file_overrides(path, data)
    spec = ExperimentSpec(name=check_name(f"{path}: the experiment's name (its file name)", path.stem), **data)
    return spec


def _check_file_shapes(path: Path, data: Dict[str, Any]) -> None:
    """Each key of an experiment file against its declared shape (:mod:`guiding_nc.core.checks`)."""
    from ..core.checks import ArgumentError, Integer, ListOf, Mapping, Maybe, Text

    shapes = {"configs": ListOf(Text(empty=False), example="[ufm10]"),
              "methods": ListOf(Text(empty=False), unique=True, example="[standard, implicit]"),
              "seeds": ListOf(Integer(0), unique=True, example="[0, 1, 2]"),
              "variants": Mapping("{name: {methods: [implicit], overrides: {delta: 1.0e-5}}}"),
              "overrides": Mapping("{epochs: 10}"), "config_overrides": Mapping("{ufm10: {epochs: 10}}"),
              "quick": Maybe(Mapping("{seeds: [0]}")), "thresholds": Mapping("{loss: 0.01}"),
              "report_epochs": Maybe(ListOf(Integer(1), example="[50, 200]"))}
    for key, check in shapes.items():
        if key in data:
            try:
                check(f"{path}: {key}", data[key])
            except ArgumentError as exc:
                raise ConfigError(f"{exc}; fix the file") from None


def _check_file_overrides(path: Path, data: Dict[str, Any]) -> None:
    """Refuse an experiment file whose overrides set what each run's key says (:data:`PER_RUN_KEYS`)."""
    q = data.get("quick") or {}
    places = [("overrides", data.get("overrides")), ("quick.overrides", q.get("overrides"))]
    for where, per in (("config_overrides", data.get("config_overrides")),
                       ("quick.config_overrides", q.get("config_overrides"))):
        places += [(f"{where}.{c}", {k: v for k, v in (ov or {}).items() if k != "seeds"})
                   for c, ov in (per or {}).items()]
    for vname, v in (data.get("variants") or {}).items():
        places.append((f"variants.{vname}.overrides", v.get("overrides")))
        places += [(f"variants.{vname}.config_overrides.{c}", ov)
                   for c, ov in (v.get("config_overrides") or {}).items()]
    for where, ov in places:
        if ov is not None and not isinstance(ov, dict):
            raise ConfigError(f"{path}: {where} must be a mapping of key: value")
        bad = [k for k in (ov or {}) if k in _FILE_REFUSED]
        if bad:
            raise ConfigError(f"{path}: {where} sets {bad[0]}, which the grid sets per run; say it with the "
                              "experiment's methods/seeds/variants instead")


def check_overrides(spec: ExperimentSpec, overrides: Dict[str, Any]) -> None:
    """Refuse, in one line naming the flag to use instead, an override of a command line (or of
    ``run_experiment(overrides=...)``) that the grid sets per run (:data:`PER_RUN_KEYS`)."""
    import json

    for key, value in (overrides or {}).items():
        top = str(key).split(".", 1)[0]
        instead = PER_RUN_KEYS.get(top)
        if instead is None and top == "report_epochs" and spec.report_epochs is not None:
            instead = _SPEC_FILE.format(key="report_epochs")
        if instead is not None:
            shown = value if isinstance(value, str) else json.dumps(value, default=str)
            advice = f"the grid sets {top} for each run; use {instead} instead" if instead.startswith("--") else instead
            raise ConfigError(f"{key}={shown} cannot be an override: {advice}")


def run_config(spec: ExperimentSpec, job: Dict[str, Any], run_dir: Path, device: str, num_threads, progress: bool):
    """The validated training config of one run (``job``, from :meth:`ExperimentSpec.jobs`) in ``run_dir``."""
    ov = dict(job["overrides"])
    ov.update(method=job["method"], seed=job["seed"], run_dir=str(run_dir), resume=True, device=device,
              progress=progress, verbose=False, record_step_accuracy=spec.record_step_accuracy,
              record_step_losses=spec.record_step_losses, save_margins=spec.save_margins)
    if num_threads is not None:
        ov["num_threads"] = num_threads
    cfg = load_config(job["config"], ov)
    if spec.report_epochs is not None:
        cfg = cfg.replace(report_epochs=[e for e in spec.report_epochs if e <= cfg.epochs])
    cfg.validate()
    return cfg


def run_key_of(job_or_row: Dict[str, Any]) -> str:
    """The key of a job or of a result row (:func:`~guiding_nc.experiments.results.run_key`)."""
    return run_key(job_or_row["config"], job_or_row["variant"], job_or_row["method"], job_or_row["seed"])
