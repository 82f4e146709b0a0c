"""The chapters call the package (a helper exists once): every chapter but the three experiment
summaries its lead keeps (08, 09, 12) stays within 250 code lines, defines no function or class in
its code cells (a helper belongs in ``guiding_nc.companions``, where the tests reach it), gives no
name of the package's functions to a lambda, and keeps its code lines within 88 characters."""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
PKG = ROOT / "src" / "guiding_nc"
MAX_CODE_LINES = 250
MAX_LINE = 88
# Chapters whose code their lead keeps, outside this rule.
EXEMPT: set = set()
# Function definitions a chapter may keep, with the reason (none at present).
ALLOWED_DEFS: dict = {}

_FENCE = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```\s*$", re.M | re.S)


def _cells(text: str):
    """``(all lines inside the fences, the code without the cell's header)`` of each code cell."""
    for m in _FENCE.finditer(text):
        lines = m.group(1).split("\n")[:-1]
        j = 0
        if lines and lines[0] == "---":
            j = lines.index("---", 1) + 1
        else:
            while j < len(lines) and lines[j].startswith(":"):
                j += 1
        yield lines, "\n".join(lines[j:])


def _chapters():
    return sorted(p for p in BOOK.glob("*.md") if p.name not in EXEMPT and "code-cell" in p.read_text())


@functools.lru_cache(maxsize=1)
def _package_functions() -> frozenset:
    names = set()
    for path in PKG.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # the module's own functions, not nested ones
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                names.add(node.name)
    return frozenset(names)


def _python(code: str) -> str:
    """A cell's code as Python: IPython magics (``%matplotlib inline``) left out."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in code.split("\n"))


@pytest.mark.parametrize("chapter", _chapters(), ids=lambda p: p.name)
def test_a_chapter_has_at_most_250_code_lines(chapter):
    n = sum(len(lines) for lines, _ in _cells(chapter.read_text()))
    assert n <= MAX_CODE_LINES, f"{chapter.name}: {n} lines in code cells (headers included), more than {MAX_CODE_LINES}"


@pytest.mark.parametrize("chapter", _chapters(), ids=lambda p: p.name)
def test_a_chapter_defines_no_function_and_names_no_lambda_after_one_of_the_package(chapter):
    package = _package_functions()
    defs, twins = [], []
    for _, code in _cells(chapter.read_text()):
        for node in ast.walk(ast.parse(_python(code))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name not in ALLOWED_DEFS.get(chapter.name, ()):
                    defs.append(node.name)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
                twins += [t.id for t in node.targets if isinstance(t, ast.Name) and t.id in package]
    assert not defs, f"{chapter.name} defines {defs}: move them into guiding_nc.companions and call them"
    assert not twins, f"{chapter.name} writes lambdas named like package functions {twins}: call the package's"


@pytest.mark.parametrize("chapter", _chapters(), ids=lambda p: p.name)
def test_code_lines_fit_88_characters(chapter):
    long = [line for _, code in _cells(chapter.read_text()) for line in code.split("\n") if len(line) > MAX_LINE]
    assert not long, f"{chapter.name}: code lines over {MAX_LINE} characters: {long}"


def test_the_rule_sees_every_chapter_it_should():
    names = {p.name for p in _chapters()}
    assert {"02_simplex_etf_and_collapse.md", "05b_training_method.md", "07_ufm10.md", "14_forward_gradients.md"} <= names
    assert not names & EXEMPT
