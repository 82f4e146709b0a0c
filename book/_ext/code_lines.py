"""Sphinx extension of the book: a code line that wraps keeps its indentation.

The book's code blocks wrap long lines instead of scrolling (``_static/custom.css``).  A wrapped
line would continue at the left edge, hiding the structure of indented code on a narrow screen.
This extension puts every line of every highlighted block (code cells, their outputs, shell
blocks) in its own ``span.code-line`` whose ``--indent`` is the line's leading spaces; the style
sheet turns that into a hanging indent, so the continuation starts two characters to the right
of the line's own indentation.  The text is unchanged (the copy button copies the same code).

Pygments closes and reopens its token spans at every line break, so splitting the HTML of a
``<pre>`` at its newlines never splits a tag.
"""
from __future__ import annotations

import html
import re

_PRE = re.compile(r'(<div class="highlight[^"]*"><pre>)(.*?)(</pre>)', re.S)
_TAG = re.compile(r"<[^>]+>")


def _indent(line: str) -> int:
    text = html.unescape(_TAG.sub("", line))
    return len(text) - len(text.lstrip(" "))


def wrap_lines(inner: str) -> str:
    """The inside of a ``<pre>``, one ``span.code-line`` per line."""
    lines = inner.split("\n")
    tail = lines.pop() if lines and lines[-1] in ("", "</span>") else None
    out = [f'<span class="code-line" style="--indent:{_indent(line)}">{line}\n</span>'
           for line in lines]
    return "".join(out) + (tail or "")


def wrap_code_blocks(body: str) -> str:
    return _PRE.sub(lambda m: m.group(1) + wrap_lines(m.group(2)) + m.group(3), body)


def _tidy_code(app, pagename, templatename, context, doctree):
    if "body" in context:
        context["body"] = wrap_code_blocks(context["body"])


def setup(app):
    app.connect("html-page-context", _tidy_code)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
