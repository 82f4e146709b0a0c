"""Sphinx extension of the book: every notebook page can be downloaded as an ``.ipynb``.

The theme's download button offers the page's source (``.md``) and, when the page has a
notebook, that notebook (``.ipynb``).  sphinx-book-theme only copies a notebook for MyST pages
when launch buttons (Binder, Colab, ...) are configured, which an offline book has none of; this
extension writes the notebook itself: the page's MyST Markdown converted by jupytext, without
outputs, into ``_build/html/_sources/<page>.ipynb``, and tells the theme it is there.  Pages
without a jupytext header (plain Markdown, e.g. the bibliography) get no notebook.
"""
from __future__ import annotations

from pathlib import Path


def is_notebook_page(path: Path) -> bool:
    """A MyST Markdown notebook: front matter naming a kernel (what jupytext writes)."""
    if path.suffix != ".md" or not path.is_file():
        return False
    head = path.read_text(encoding="utf-8")[:2000]
    return head.startswith("---") and "kernelspec:" in head.split("\n---", 1)[0]


def write_notebook(source: Path, target: Path) -> None:
    import jupytext

    notebook = jupytext.read(str(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(notebook, str(target), fmt="ipynb")


def _add_notebook(app, pagename, templatename, context, doctree):
    if doctree is None or app.builder.format != "html":
        return
    source = Path(app.env.doc2path(pagename))
    if not is_notebook_page(source):
        return
    write_notebook(source, Path(app.outdir) / "_sources" / f"{pagename}.ipynb")
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    # Before sphinx-book-theme builds its header buttons (priority 501).
    app.connect("html-page-context", _add_notebook, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
