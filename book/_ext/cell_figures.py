"""Sphinx extension of the book: a caption, a number and a label for the figure a code cell draws.

Written right after the code cell, in the Markdown of the page::

    ```{code-cell} ipython3
    plots.plot_convergence(histories, f_star)
    ```

    ```{cell-figure} fig-nearest-convergence
    The objective per iteration and its gap to the closed-form optimum.
    ```

The directive takes the image outputs of the code cell just before it (every ``image/*`` output;
a cell that draws several images makes one figure of them all, where the first image was) and
puts them in a figure with that caption, numbered per chapter ("Fig. 2.3") and labelled with the
argument, so the prose links to it with ``{numref}`fig-nearest-convergence```.  The cell's other
outputs (printed text, tables) stay where they are, and the cell's code and metadata are not
touched, so a caption can change without the page running again.

A caption that follows no code cell, or a cell without an image output, is a warning (an error
under ``-W``): a figure that stopped being drawn does not go unnoticed.
"""
from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.transforms import SphinxTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


class cell_figure_caption(nodes.General, nodes.Element):
    """Placeholder: the caption and label, until the transform finds the cell's images."""


class CellFigure(SphinxDirective):
    required_arguments = 1  # the label, fig-<chapter>-<topic>
    has_content = True
    option_spec = {"align": lambda a: directives.choice(a, ("left", "center", "right"))}

    def run(self):
        holder = nodes.Element()
        self.state.nested_parse(self.content, self.content_offset, holder)
        node = cell_figure_caption(name=self.arguments[0], align=self.options.get("align"))
        node.extend(holder.children)
        self.set_source_info(node)
        return [node]


def _is_cell(node) -> bool:
    return isinstance(node, nodes.container) and "cell" in node.get("classes", [])


def _image_bundles(cell) -> list:
    """The output bundles of ``cell`` that hold an image, in order."""
    bundles = []
    for bundle in cell.findall(nodes.container):
        if bundle.get("nb_element") != "mime_bundle":
            continue
        if any(str(child.get("mime_type", "")).startswith("image/") for child in bundle.children):
            bundles.append(bundle)
    return bundles


class WrapCellFigures(SphinxTransform):
    """Replace each placeholder by a figure made of the previous cell's images."""

    default_priority = 200

    def apply(self, **kwargs):
        for node in list(self.document.findall(cell_figure_caption)):
            parent = node.parent
            index = parent.index(node)
            cell = next((sibling for sibling in reversed(parent.children[:index])
                         if not isinstance(sibling, (nodes.comment, nodes.target))), None)
            bundles = _image_bundles(cell) if cell is not None and _is_cell(cell) else []
            if not bundles:
                why = "follows no code cell" if not (cell is not None and _is_cell(cell)) else \
                    "follows a code cell that shows no image"
                logger.warning("cell-figure %s %s", node["name"], why, location=node)
                parent.remove(node)
                continue
            figure = nodes.figure()
            figure.source, figure.line = node.source, node.line
            if node.get("align"):
                figure["align"] = node["align"]
            first = bundles[0]
            first.parent.replace(first, figure)
            for bundle in bundles[1:]:
                bundle.parent.remove(bundle)
            figure.extend(bundles)
            paragraphs = [c for c in node.children if isinstance(c, nodes.paragraph)]
            if paragraphs:
                caption = nodes.caption(paragraphs[0].rawsource, "", *paragraphs[0].children)
                caption.source, caption.line = node.source, node.line
                figure += caption
                rest = [c for c in node.children if c is not paragraphs[0]]
                if rest:
                    figure += nodes.legend("", *rest)
            name = nodes.fully_normalize_name(node["name"])
            figure["names"].append(name)
            self.document.note_explicit_target(figure, figure)
            parent.remove(node)


def setup(app):
    app.add_node(cell_figure_caption)
    app.add_directive("cell-figure", CellFigure)
    app.add_transform(WrapCellFigures)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
