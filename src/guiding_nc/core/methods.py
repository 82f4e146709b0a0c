"""The classifier methods the package compares: one registry of names, labels, colours and
revisions that every module and chapter reads.

A method is the one switch of the paper's comparison (§4): the classifier ``W`` the head uses.
Everything else -- features on the unit sphere, temperature, the centring by ``h_G`` -- is
shared (:mod:`guiding_nc.core.heads`).  The head that implements each method is built by
:func:`guiding_nc.core.heads.build_head`; adding a method means a head there and an entry here.

``revision`` counts changes to a method's definition: a result made under an earlier revision
computed something else with the same settings, so result files never take it as a run of the
present one (see :func:`guiding_nc.experiments.store.effective_settings`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = ["Method", "METHODS", "METHOD_NAMES", "PAPER_METHODS", "family", "label", "colour", "line_style"]


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

    def __post_init__(self):
        if not self.family:
            object.__setattr__(self, "family", self.name)


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("standard", "standard", "#1f77b4", "-", 2,
           description="learned W, rows re-projected to unit norm after every step"),
    Method("standard-no-norm", "standard, no normalisation", "#17becf", ":", 2, normalised=False, family="standard",
           description="learned W without weight or feature normalisation and without temperature (Fig. 17)"),
    Method("fixed", "fixed ETF", "#ff7f0e", "--", 2,
           description="the canonical simplex ETF, W = etf_classifier([I_C; 0])"),
    Method("fixed-random", "fixed ETF, random rotation", "#8c564b", "--", 2, family="fixed",
           description="a simplex ETF with a Haar-random rotation (Fig. 18)"),
    Method("fixed-uncentred", "fixed ETF, not centred", "#e377c2", ":", 1, family="fixed",
           description="the canonical fixed ETF without the centring by h_G (revision 1 of 'fixed')"),
    Method("implicit", "implicit ETF", "#2ca02c", "-.", 1,
           description="the nearest simplex ETF to the class means, every step (Eq. 7-9)"),
)}

METHOD_NAMES: Tuple[str, ...] = tuple(METHODS)
# The three the paper compares.
PAPER_METHODS: Tuple[str, ...] = ("standard", "fixed", "implicit")


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
