"""Sphinx extension of the book: the ``chapter`` role, a link to a chapter that says its number.

Chapter numbers come from the numbered table of contents (``_toc.yml``), not from file names, so
prose never writes "chapter 5" by hand::

    {chapter}`05b_training_method`                  -> "Chapter 5", a link to that page
    {chapter}`the training chapter (%s) <05b_training_method>`   -> "the training chapter (5)"
    {chapter}`Chapters %s <03_nearest_etf>`–{chapter}`%s <05_ddn_gradient>`   -> "Chapters 2–4"

The target is a document name, relative to the page that refers to it (as for ``{doc}``).  A
target that does not exist, or has no number, is a warning (an error under ``-W``).
"""
from __future__ import annotations

import re

from docutils import nodes
from sphinx.util import docname_join, logging
from sphinx.util.docutils import SphinxRole

logger = logging.getLogger(__name__)

_EXPLICIT = re.compile(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>$", re.S)


class chapter_reference(nodes.Inline, nodes.TextElement):
    """Placeholder, replaced by a link once every chapter has its number."""


class ChapterRole(SphinxRole):
    def run(self):
        match = _EXPLICIT.match(self.text.strip())
        if match:
            text, target = match.group("text"), match.group("target").strip()
        else:
            text, target = "Chapter %s", self.text.strip()
        if "%s" not in text:
            text = text + " %s"
        target = re.sub(r"\.(md|ipynb)$", "", target)
        node = chapter_reference(self.rawtext, "", target=docname_join(self.env.docname, target),
                                 format=text)
        self.set_source_info(node)
        return [node], []


def chapter_number(env, docname: str) -> str | None:
    """``"5"`` for the fifth numbered chapter; None when the page has no number."""
    numbers = env.toc_secnumbers.get(docname, {})
    number = numbers.get("") or (min(numbers.values(), key=len) if numbers else None)
    return ".".join(map(str, number)) if number else None


def _resolve(app, doctree, fromdocname):
    env = app.builder.env
    for node in list(doctree.findall(chapter_reference)):
        target = node["target"]
        number = chapter_number(env, target) if target in env.all_docs else None
        if number is None:
            why = "no such page" if target not in env.all_docs else "the page has no chapter number"
            logger.warning("chapter reference to %r: %s", target, why, location=node)
            node.replace_self(nodes.inline(node.rawsource, node["format"].replace("%s", "?")))
            continue
        ref = nodes.reference("", "", internal=True, classes=["chapter-ref"],
                              refuri=app.builder.get_relative_uri(fromdocname, target))
        ref += nodes.inline(text=node["format"].replace("%s", number))
        node.replace_self(ref)


def setup(app):
    app.add_node(chapter_reference)
    app.add_role("chapter", ChapterRole())
    app.connect("doctree-resolved", _resolve)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
