"""The training protocol: the paper's released code (``paper``) beside this project's one-switch
protocol (``one_switch``), with every way they differ a setting of its own.

The paper compares three classifiers (standard, fixed ETF, implicit ETF) and says the rest of
the training is shared.  Its code release (v1) does not quite share it: the three heads centre
their logits differently, only the implicit method gets stratified batches, and AGD's depth
counts the learned classifier of the standard method.  This project's ``one_switch`` protocol
makes the classifier ``W`` the only difference.  A protocol is a named set of choices, one per
:data:`OPTIONS` entry; each choice is a setting of :class:`~guiding_nc.training.config.TrainConfig` whose
``null`` means "as the protocol says", so ``protocol=paper standard_sampler=stratified`` is the
released protocol with one difference switched::

    key                   paper (code release v1)          one_switch (this project)
    standard_centring     none: logits tau W h, no bias     running: tau W (h - h_G), h_G by Eq. 9's EMA
    fixed_centring        batch_detached: -W mean(batch),   running
                          no gradient, eval batches too
    implicit_centring     batch: -W mu_G of the training    running
                          batch, with gradient
    standard_sampler      shuffled                          stratified
    fixed_sampler         shuffled                          stratified
    implicit_sampler      stratified                        stratified
    implicit_class_means  normalised_average                normalised_batches
    final_activation      true (features after a ReLU)      false (where the backbone has the option)
    agd_depth             trainable                         trainable

The centrings are documented one class each in :mod:`guiding_nc.core.running_means` (:func:`~guiding_nc.core.running_means.build_centring`),
the class-mean rules in :class:`~guiding_nc.core.running_means.ClassMeanEMA`.  ``agd_depth="layers"`` is an
option of neither protocol: it gives every method AGD's depth of the whole network (the
classifier counted as a layer whether or not it is trained), so the methods take equal feature
steps.

Book: chapter 9 (the two protocols and the table that switches one difference at a time).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from ..core.running_means import CENTRINGS, CLASS_MEAN_RULES
from ..core.methods import family as method_family

__all__ = ["ProtocolOption", "OPTIONS", "OPTION_KEYS", "PROTOCOL_NAMES", "SAMPLERS", "AGD_DEPTHS", "protocol_values",
           "resolve", "relevant", "describe"]

SAMPLERS = ("stratified", "shuffled")
AGD_DEPTHS = ("trainable", "layers")
PROTOCOL_NAMES = ("one_switch", "paper")


@dataclass(frozen=True)
class ProtocolOption:
    """One way the two protocols can differ: a setting, its choices, each protocol's choice, and
    which method family it touches (``None``: every method)."""

    key: str
    choices: Tuple[Any, ...]
    paper: Any
    one_switch: Any
    family: Optional[str]
    doc: str

    def value(self, protocol: str) -> Any:
        return getattr(self, protocol)


OPTIONS: Tuple[ProtocolOption, ...] = (
    ProtocolOption("standard_centring", CENTRINGS, "none", "running", "standard",
                   "h_G of the standard classifier's logits. The code release: no centring and no bias "
                   "(every script passes its no-bias flag)."),
    ProtocolOption("fixed_centring", CENTRINGS, "batch_detached", "running", "fixed",
                   "h_G of the fixed ETF's logits. The code release: the bias -W mean(h) of whatever batch "
                   "it is given (evaluation batches too), without gradient."),
    ProtocolOption("implicit_centring", CENTRINGS, "batch", "running", "implicit",
                   "h_G of the implicit ETF's logits. The code release: b = -W mu_G with mu_G the training "
                   "batch's mean feature, with gradient, kept for evaluation."),
    ProtocolOption("standard_sampler", SAMPLERS, "shuffled", "stratified", "standard",
                   "Training batches of the standard classifier. The code release: shuffled."),
    ProtocolOption("fixed_sampler", SAMPLERS, "shuffled", "stratified", "fixed",
                   "Training batches of the fixed ETF. The code release: shuffled."),
    ProtocolOption("implicit_sampler", SAMPLERS, "stratified", "stratified", "implicit",
                   "Training batches of the implicit ETF. The code release: stratified (every class in "
                   "every batch)."),
    ProtocolOption("implicit_class_means", CLASS_MEAN_RULES, "normalised_average", "normalised_batches",
                   "implicit",
                   "Where the implicit ETF's class-mean matrix is scaled to unit norm. The code release: "
                   "the running average of the centred batch means, scaled when used."),
    ProtocolOption("final_activation", (True, False), True, False, None,
                   "Whether the backbone's feature layer ends in a ReLU (models with that option: mlp, "
                   "small_cnn). The code release: features after a ReLU (a ResNet's average pool)."),
    ProtocolOption("agd_depth", AGD_DEPTHS, "trainable", "trainable", None,
                   "AGD's depth L: 'trainable' counts the trained tensors (the code release: the standard "
                   "method's learned classifier adds one), 'layers' counts the classifier as a layer "
                   "for every method."),
)
OPTION_KEYS: Tuple[str, ...] = tuple(o.key for o in OPTIONS)
_BY_KEY = {o.key: o for o in OPTIONS}


def protocol_values(protocol: str) -> Dict[str, Any]:
    """Every option's choice under ``protocol`` (one of :data:`PROTOCOL_NAMES`)."""
    if protocol not in PROTOCOL_NAMES:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_NAMES)}, got {protocol!r}")
    return {o.key: o.value(protocol) for o in OPTIONS}


def resolve(protocol: str, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """Every option's value: ``settings[key]`` where it is not ``None``, else the protocol's."""
    out = protocol_values(protocol)
    for key in OPTION_KEYS:
        if settings.get(key) is not None:
            out[key] = settings[key]
    return out


def relevant(values: Mapping[str, Any], method: str, *, model_has_final_activation: bool,
             agd: bool) -> Dict[str, Any]:
    """The options among ``values`` that change a run of ``method``: its family's, the final
    activation where the backbone has one, AGD's depth under AGD for a classifier that is not
    trained (the only case where the two rules differ)."""
    fam = method_family(method)
    out = {}
    for o in OPTIONS:
        if o.family is not None and o.family != fam:
            continue
        if o.key == "final_activation" and not model_has_final_activation:
            continue
        if o.key == "agd_depth" and not (agd and fam != "standard"):
            continue
        out[o.key] = values[o.key]
    return out


def describe(protocol: str, values: Mapping[str, Any], keys: Optional[Iterable[str]] = None) -> str:
    """``"paper"``, or ``"paper with standard_sampler=stratified"``: the protocol and the options
    (among ``keys``, default all) where ``values`` departs from it."""
    base = protocol_values(protocol)
    keys = OPTION_KEYS if keys is None else tuple(keys)
    changed = [f"{k}={_text(values[k])}" for k in keys if values[k] != base[k]]
    return protocol if not changed else f"{protocol} with {', '.join(changed)}"


def _text(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def option(key: str) -> ProtocolOption:
    """The :class:`ProtocolOption` named ``key``."""
    if key not in _BY_KEY:
        raise ValueError(f"unknown protocol option {key!r}; choose one of {', '.join(OPTION_KEYS)}")
    return _BY_KEY[key]
