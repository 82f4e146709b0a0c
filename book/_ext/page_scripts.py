"""Sphinx extension of the book: every page lists each of its scripts once.

sphinx-thebe registers its inline configuration (``const THEBE_JS_URL = ...``) and
sphinx-togglebutton its selector each time the environment re-reads documents, so an incremental
build can list the same inline script twice; the second ``const`` then throws a SyntaxError in
the browser.  This extension drops exact repeats (same file, same attributes, same body) from
each page's scripts, keeping the first, after every other extension has added its own.

It also gives the theme a colour mode to start from: pydata-sphinx-theme reads the mode from the
browser's storage and otherwise from the page's ``default_mode`` template variable, which
jupyter-book leaves empty, so a first visit logged "Got invalid theme mode" as a script error.
"""
from __future__ import annotations


def _key(script) -> tuple:
    # An inline script's filename is None or "" depending on who added it: the same script.
    filename = getattr(script, "filename", None) or None
    attributes = getattr(script, "attributes", None) or {}
    if filename is None and not attributes:
        return ("text", str(script))
    return (filename, tuple(sorted((str(k), str(v)) for k, v in attributes.items())))


def unique_scripts(scripts) -> list:
    """``scripts`` without repeats, first occurrence kept, order preserved."""
    seen, out = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            out.append(script)
    return out


def _tidy_page(app, pagename, templatename, context, doctree):
    if not context.get("default_mode"):
        context["default_mode"] = "light"
    if "script_files" in context:
        context["script_files"] = unique_scripts(context["script_files"])


def setup(app):
    # A late priority: run after the theme and the other extensions have added their scripts.
    app.connect("html-page-context", _tidy_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
