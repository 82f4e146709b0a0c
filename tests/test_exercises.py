"""The exercises of the method chapters: each has a solution, and each solution's numbers come from
its code, which gives the values the mathematics predicts.

A solution sits between ``{solution-start}`` and ``{solution-end}`` (sphinx-exercise's gated
syntax, so it can hold code cells); its code cells are self-contained and hand every number the
solution's prose quotes to ``myst_nb.glue``, and the prose quotes them with ``{glue:text}``.  Here
the cells run outside the book, with ``glue`` recording the values, and every value is compared
with its closed form.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
METHOD_CHAPTERS = ["02_simplex_etf_and_collapse", "03_nearest_etf", "04_lagrange_multipliers",
                   "05_ddn_gradient", "05b_training_method"]

EXERCISE = re.compile(r"```\{exercise\}[^\n]*\n:label: (?P<label>[\w-]+)\n")
SOLUTION = re.compile(r"```\{solution-start\} (?P<label>[\w-]+)\n(?P<body>.*?)```\{solution-end\}",
                      re.S)
CODE_CELL = re.compile(r"```\{code-cell\}[^\n]*\n(?P<source>.*?)\n```", re.S)
GLUE_TEXT = re.compile(r"\{glue:text\}`(?P<key>[\w-]+)(?::[^`]*)?`")


def _kkt_gib(d: int, C: int) -> float:
    from guiding_nc.core.reference.kkt_gradient import kkt_memory_bytes

    return kkt_memory_bytes(d, C) / 2**30


# Every glued number and what the mathematics says it is (tolerance: absolute, relative).
EXPECTED = {
    "ex-etf-angle-cos": (-1 / 3, 1e-12),
    "ex-etf-angle-deg": (math.degrees(math.acos(-1 / 3)), 1e-9),
    "ex-etf-sigmab-eig": (3.0**2 / (6 - 1), 1e-9),
    "ex-etf-sigmab-count": (6 - 1, 0),
    "ex-etf-margin-2": (2.0, 1e-12),
    "ex-etf-margin-100": (100 / 99, 1e-12),
    "ex-nearest-kappa-10": (1 + 2 / (9 * 1e-3), 1e-6),
    "ex-nearest-kappa-100": (1 + 2 / (99 * 1e-3), 1e-6),
    "ex-nearest-constant": (1 + 1 + 1e-3 * 10, 1e-12),
    "ex-nearest-constant-spread": (0.0, 1e-12),
    "ex-nearest-procrustes-best": (4.0, 1e-12),
    "ex-nearest-procrustes-identity": (2.0, 0),
    "ex-lagrange-rank": (5 * 6 // 2, 0),
    "ex-lagrange-tangent-dim": (12 * 5 - 5 * 6 // 2, 0),
    "ex-lagrange-det": (2.0 ** (5 * 4 // 2), 1e-9),
    "ex-lagrange-sigma": (0.0, 1e-12),
    "ex-ddn-memory-dense": (_kkt_gib, 1e-12),
    "ex-ddn-memory-matrix": (512 * 100 * 8 / 2**20, 1e-12),
    "ex-ddn-g-min": (1e-3, 1e-9),
    "ex-ddn-g-max": (2 / (5 - 1) + 1e-3, 1e-9),
    "ex-ddn-omega-12": (2 / 3, 1e-15),
    "ex-ddn-sylvester-residual": (0.0, 1e-15),
    "ex-training-weight-first": (2 / (100 * 101), 1e-15),
    "ex-training-weight-last": (2 / 101, 1e-15),
    "ex-training-floor-step": (19_999, 0),
    "ex-training-floor-epoch": (19_999 / 391, 1e-12),
    "ex-training-agd-2": (10 * math.log(2), 1e-12),
    "ex-training-agd-4": (10 * math.log((1 + math.sqrt(17)) / 2), 1e-12),
}


def exercises(chapter: str):
    text = (BOOK / f"{chapter}.md").read_text()
    labels = [m.group("label") for m in EXERCISE.finditer(text)]
    solutions = {m.group("label"): m.group("body") for m in SOLUTION.finditer(text)}
    return text, labels, solutions


@pytest.mark.parametrize("chapter", METHOD_CHAPTERS)
def test_each_method_chapter_has_exercises_with_solutions(chapter):
    text, labels, solutions = exercises(chapter)
    assert 2 <= len(labels) <= 4, f"{chapter}: {len(labels)} exercises (want 2-4)"
    assert len(set(labels)) == len(labels)
    assert sorted(solutions) == sorted(labels), f"{chapter}: exercises without a solution"
    for label, body in solutions.items():
        assert ":class: dropdown" in body.split("```", 1)[0], f"{label}: solution not folded"
        cells = CODE_CELL.findall(body)
        assert cells and any("glue(" in c for c in cells), f"{label}: no code computes its numbers"
        quoted = set(GLUE_TEXT.findall(body))
        assert quoted, f"{label}: the solution quotes no computed number"
        unknown = quoted - set(EXPECTED)
        assert not unknown, f"{label}: numbers without an expected value in this test: {unknown}"
    assert "```{solution-start}" in text and text.count("```{solution-end}") == len(labels)


@pytest.mark.parametrize("chapter", METHOD_CHAPTERS)
def test_solution_code_computes_the_expected_numbers(chapter, monkeypatch):
    import myst_nb

    glued: dict = {}
    monkeypatch.setattr(myst_nb, "glue", lambda key, value, display=True: glued.__setitem__(key, value))
    _, labels, solutions = exercises(chapter)
    for label in labels:
        body = solutions[label]
        for source in CODE_CELL.findall(body):
            exec(compile(source, f"{chapter}:{label}", "exec"), {"__name__": "__exercise__"})
        for key in GLUE_TEXT.findall(body):
            assert key in glued, f"{label}: {key} is quoted but no cell glues it"
            want, tol = EXPECTED[key]
            if callable(want):
                want = want(512, 100)
            got = glued[key]
            assert abs(float(got) - want) <= tol * max(1.0, abs(want)), (
                f"{label}: {key} = {got!r}, expected {want!r}")


def test_every_summary_box_and_exercise_label_is_unique():
    """Labels are global in the book: two chapters may not use the same one."""
    seen: dict = {}
    for source in sorted(BOOK.glob("*.md")):
        for label in re.findall(r"^\((?P<l>[\w-]+)\)=$", source.read_text(), re.M):
            assert label not in seen, f"label {label} in {source.name} and {seen[label]}"
            seen[label] = source.name
        for label in re.findall(r"^:label: ([\w-]+)$", source.read_text(), re.M):
            assert label not in seen, f"label {label} in {source.name} and {seen[label]}"
            seen[label] = source.name
