"""How every figure of the book is laid out so it reads at the book's column width.

The rendered book shows a figure at most :data:`COLUMN_PX` pixels wide; a wider figure is scaled
down, and its text with it.  A figure whose width is at most :data:`MAX_WIDTH_IN` inches keeps
every text of 7 points or more at :data:`MIN_TEXT_PX` pixels or more.  :func:`panel_grid` lays
several panels out in at most two columns within that width, and :func:`legibility_problems`
measures a finished figure (the test suite applies it to every figure the plotting functions
make).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

from matplotlib.figure import Figure

__all__ = ["COLUMN_PX", "MIN_TEXT_PX", "MIN_FONT_PT", "MAX_WIDTH_IN", "SCREEN_DPI", "panel_grid", "tidy_log_x",
           "displayed_text_px", "saved_width_px", "tidy_log_y", "subplots",
           "legibility_problems"]

#: Width of the book's text column in CSS pixels (jupyter-book's default theme in a 1280-px wide
#: window, where a figure output is shown at most this wide).
COLUMN_PX = 688
#: The smallest text the book shows, in displayed pixels.
MIN_TEXT_PX = 9.0
#: The smallest font size the plotting functions use, in points.
MIN_FONT_PT = 7.0
#: The widest a figure should be, in inches: 7-point text then displays at 9.5 pixels, with room
#: for a title or legend that reaches a little past the edge (a notebook crops to the content).
MAX_WIDTH_IN = 6.8
#: The resolution notebooks render figures at (matplotlib's inline default).
SCREEN_DPI = 100.0


def panel_grid(n: int, *, ncols: int = 2, width: float = MAX_WIDTH_IN, panel_height: float = 3.0,
               extra_height: float = 0.0, **subplots_kw) -> Tuple[Figure, List]:
    """A figure of ``n`` panels in ``min(n, ncols)`` columns, ``width`` inches wide, each row
    ``panel_height`` high; returns ``(fig, axes)`` with ``axes`` a flat list of the ``n`` panels
    (unused cells of the last row are removed)."""
    if n < 1:
        raise ValueError(f"a figure needs at least one panel, got {n}")
    cols = min(n, ncols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(min(width, MAX_WIDTH_IN), panel_height * rows + extra_height), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False, **subplots_kw)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def subplots(*args, figsize, layout: Optional[str] = None, constrained_layout: bool = False,
             **kwargs) -> Tuple[Figure, object]:
    """``plt.subplots`` without pyplot: a :class:`Figure` that no figure manager holds, so a
    notebook shows it once, as the value a plotting function returns (pyplot's figures are
    shown again when the cell ends)."""
    fig = Figure(figsize=figsize, layout=layout or ("constrained" if constrained_layout else None))
    return fig, fig.subplots(*args, **kwargs)


def saved_width_px(fig: Figure, dpi: float = SCREEN_DPI) -> float:
    """The width in pixels of ``fig`` as a notebook shows it: saved at ``dpi`` with
    ``bbox_inches="tight"`` (IPython's inline default), so a title or legend that reaches past the
    figure's edge widens the picture, and the book then scales all of it down."""
    import io
    import struct

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return float(struct.unpack(">I", buf.getvalue()[16:20])[0])  # the PNG header's width field


def displayed_text_px(fontsize_pt: float, fig: Figure, column_px: float = COLUMN_PX,
                      dpi: float = SCREEN_DPI, width_px: Optional[float] = None) -> float:
    """The height in displayed pixels of text of ``fontsize_pt`` points in ``fig`` as the book
    shows it: rendered at ``dpi``, scaled down to ``column_px`` when wider (``width_px``: the
    rendered width, by default the figure's own; see :func:`saved_width_px`)."""
    if width_px is None:
        width_px = fig.get_figwidth() * dpi
    scale = min(1.0, column_px / width_px)
    return fontsize_pt * dpi / 72.0 * scale


def legibility_problems(fig: Figure, *, min_px: float = MIN_TEXT_PX, column_px: float = COLUMN_PX,
                        dpi: float = SCREEN_DPI) -> List[str]:
    """Every visible, non-empty text of ``fig`` (titles, labels, tick labels, legends, annotations)
    that displays smaller than ``min_px`` pixels at the book's column width, the figure rendered
    as a notebook renders it (:func:`saved_width_px`)."""
    width_px = saved_width_px(fig, dpi)
    out = []
    for text in fig.findobj(match=lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text")):
        if not text.get_visible() or not str(text.get_text()).strip():
            continue
        axes = getattr(text, "axes", None)
        if axes is not None and not axes.get_visible():
            continue
        px = displayed_text_px(text.get_fontsize(), fig, column_px, dpi, width_px)
        if px < min_px - 1e-9:
            out.append(f"{str(text.get_text())[:40]!r}: {text.get_fontsize():.1f} pt -> {px:.1f} px "
                       f"(rendered {width_px:.0f} px wide)")
    return out


def tidy_log_x(fig: Figure) -> Figure:
    """Readable tick labels on every logarithmic x axis of ``fig`` (call once its data is drawn).

    Matplotlib labels the minor ticks of a log axis that spans less than about a decade, and the
    labels (``2×10¹ 3×10¹ 4×10¹ ...``) then overlap; here the labels are plain numbers at 1, 2 and 5
    times each power of ten when the axis spans under 2.5 decades, at the powers of ten otherwise,
    and the minor ticks carry no label.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax in fig.axes:
        if ax.get_xscale() != "log":
            continue
        lo, hi = ax.get_xlim()
        if not (lo > 0 and hi > lo):
            continue
        subs = (1.0, 2.0, 5.0) if math.log10(hi / lo) < 2.5 else (1.0,)
        ax.xaxis.set_major_locator(LogLocator(base=10.0, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    return fig


def tidy_log_y(ax) -> None:
    """Readable tick labels on a logarithmic y axis that spans less than two decades: plain
    numbers (three significant digits) at 1, 2 and 5 times each power of ten, or at more
    points when that leaves fewer than three; minor ticks unlabelled.  Call once the data is
    drawn."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    lo, hi = ax.get_ylim()
    if not (ax.get_yscale() == "log" and lo > 0 and hi > lo) or math.log10(hi / lo) >= 2:
        return
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1.0, 2.0, 5.0) if lo <= m * 10.0 ** e <= hi]
    if len(ticks) >= 3:
        ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    else:
        ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
