"""The classifier methods the package compares: one registry of names, labels, colours and
revisions that every module and chapter reads.

A method is the one switch of the paper's comparison (§4): the classifier ``W`` the head uses.
Everything else -- features on the unit sphere, temperature, the centring by ``h_G`` -- is
shared (:mod:`guiding_nc.core.heads`).  Each entry carries the function that builds its head,
and :func:`build_head` only looks the method up: the trainer, the experiments and the figures
read this registry and nothing else.

**Adding a method** (two files): the head class (a subclass of the heads in
:mod:`guiding_nc.core.heads`, or an ``nn.Module`` with their interface: ``forward(features,
labels)``, ``weight``, ``bias``, ``transform``, ``logits_from``, ``after_step``,
``epoch_metrics``), and one ``Method(...)`` entry below with its name, label, colour and a
``build(feature_dim, num_classes, options)`` function (``options`` a
:class:`~guiding_nc.core.heads.HeadOptions`).  An entry without a builder is an error.

``revision`` counts changes to a method's definition: a result made under an earlier revision
computed something else with the same settings, so result files never take it as a run of the
present one (see :func:`guiding_nc.experiments.store.effective_settings`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

from torch import nn

from .checks import CLASSES, Integer
from .heads import FixedETFHead, HeadOptions, ImplicitETFHead, LinearHead

__all__ = ["Method", "METHODS", "METHOD_NAMES", "PAPER_METHODS", "HEAD_REVISIONS", "build_head", "family", "label",
           "colour", "line_style"]


# The three the paper compares.
PAPER_METHODS: Tuple[str, ...] = ("standard", "fixed", "implicit")


@dataclass(frozen=True)
class Method:
    """One classifier method: its config name, how figures and tables name and draw it, the
    revision of its definition, and whether its features are normalised with a temperature
    (the cross-entropy lower bound then applies)."""

    name: str
    label: str
    colour: str
    line_style: str = "-"
    revision: int = 1
    normalised: bool = True
    description: str = ""
    # Which of the paper's three methods this one is a variant of: the protocol's per-method
    # settings (centring, sampler; guiding_nc.training.protocol) are read under this name.
    family: str = ""
    # build(feature_dim, num_classes, options: HeadOptions) -> the head
    build: Any = None

    def __post_init__(self):
        if not self.family and self.name in PAPER_METHODS:
            object.__setattr__(self, "family", self.name)
        if self.family not in PAPER_METHODS:
            raise ValueError(f"method {self.name!r}: give family= one of {', '.join(PAPER_METHODS)} (the paper's "
                             f"method it is a variant of: its protocol options apply), got {self.family!r}")
        if not callable(self.build):
            raise TypeError(f"method {self.name!r} has no builder: give its Method entry build=<a function "
                            "(feature_dim, num_classes, options) returning the head>")


def _standard(d: int, C: int, o: HeadOptions) -> nn.Module:
    return LinearHead(d, C, tau=o.tau, bias=o.head_bias, centring=o.centring, ema_floor=o.ema_floor)


def _standard_no_norm(d: int, C: int, o: HeadOptions) -> nn.Module:
    # Fig. 17: no weight or feature normalisation, and no temperature
    return LinearHead(d, C, tau=1.0, normalize_features=False, normalize_weight=False, bias=o.head_bias,
                      centring=o.centring, ema_floor=o.ema_floor)


def _fixed(d: int, C: int, o: HeadOptions) -> nn.Module:
    return FixedETFHead(d, C, tau=o.tau, rotation="canonical", centring=o.centring, ema_floor=o.ema_floor)


def _fixed_random(d: int, C: int, o: HeadOptions) -> nn.Module:
    return FixedETFHead(d, C, tau=o.tau, rotation="random", seed=o.etf_seed, centring=o.centring, ema_floor=o.ema_floor)


def _fixed_uncentred(d: int, C: int, o: HeadOptions) -> nn.Module:
    return FixedETFHead(d, C, tau=o.tau, rotation="canonical", centring="none", ema_floor=o.ema_floor)


def _implicit(d: int, C: int, o: HeadOptions) -> nn.Module:
    return ImplicitETFHead(d, C, tau=o.tau, delta=o.delta, backward=o.ddn_backward, solver=o.solver,
                           ema_floor=o.ema_floor, solve_dtype=o.solve_dtype, max_iterations=o.max_iterations,
                           centring=o.centring, class_means=o.class_means)


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("standard", "standard", "#1f77b4", "-", 2,
           description="learned W, rows re-projected to unit norm after every step", build=_standard),
    Method("standard-no-norm", "standard, no normalisation", "#17becf", ":", 2, normalised=False, family="standard",
           description="learned W without weight or feature normalisation and without temperature (Fig. 17)",
           build=_standard_no_norm),
    Method("fixed", "fixed ETF", "#ff7f0e", "--", 2,
           description="the canonical simplex ETF, W = etf_classifier([I_C; 0])", build=_fixed),
    Method("fixed-random", "fixed ETF, random rotation", "#8c564b", "--", 2, family="fixed",
           description="a simplex ETF with a Haar-random rotation (Fig. 18)", build=_fixed_random),
    Method("fixed-uncentred", "fixed ETF, not centred", "#e377c2", ":", 1, family="fixed",
           description="the canonical fixed ETF without the centring by h_G (revision 1 of 'fixed')",
           build=_fixed_uncentred),
    Method("implicit", "implicit ETF", "#2ca02c", "-.", 1,
           description="the nearest simplex ETF to the class means, every step (Eq. 7-9)", build=_implicit),
)}

METHOD_NAMES: Tuple[str, ...] = tuple(METHODS)
#: Each method's revision (result files made under another one are not taken as its runs).
HEAD_REVISIONS: Dict[str, int] = {name: m.revision for name, m in METHODS.items()}


def family(name: str) -> str:
    """The paper's method ``name`` is a variant of (``"standard"``, ``"fixed"`` or ``"implicit"``)."""
    m = METHODS.get(name)
    if m is None:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return m.family


def label(name: str) -> str:
    """How figures and tables name ``name`` (the name itself for an unknown one)."""
    m = METHODS.get(name)
    return m.label if m else name


def colour(name: str, index: int = 0) -> str:
    """The colour of ``name`` in every figure (a matplotlib cycle colour for an unknown one)."""
    m = METHODS.get(name)
    return m.colour if m else f"C{index % 10}"


def line_style(name: str) -> str:
    m = METHODS.get(name)
    return m.line_style if m else "-"


def build_head(method: str, feature_dim: int, num_classes: int, **options) -> nn.Module:
    """The head of ``method`` (one of :data:`METHOD_NAMES`), built by its registry entry.

    ``options`` are the fields of :class:`~guiding_nc.core.heads.HeadOptions` (temperature,
    delta, the DDN backward, the centring of ``h_G``, ...).  ``C > d`` is rejected for every
    method (a simplex ETF of C vertices needs d >= C, and the comparison should be like for like).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHOD_NAMES)}")
    CLASSES("num_classes", num_classes)
    Integer(1)("feature_dim", feature_dim)
    if num_classes > feature_dim:
        raise ValueError(
            f"number of classes C={num_classes} exceeds the feature dimension d={feature_dim}; "
            "a simplex ETF needs d >= C (use a larger feature_dim)"
        )
    return METHODS[method].build(int(feature_dim), int(num_classes), HeadOptions(**options))
