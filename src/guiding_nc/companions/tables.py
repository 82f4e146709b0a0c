"""Tables of the book, made one way: every table a chapter shows goes through this module.

* **Labels.** :data:`QUANTITIES` is the one label table: a result key (``steps_to_fit``,
  ``train_nc1``, ``test_top1@200`` ...) has one human label ("steps to 100% train", "NC1
  (train)", "test top-1 (%), epoch 200"), a direction (is a higher or a lower value better) and
  a rounding rule.  :func:`label` reads it.
* **Rounding.** A value is shown to what the seeds support: accuracies to 0.1 percentage point,
  step counts as integers, losses to three significant digits, collapse metrics (which span
  orders of magnitude) to two.  A band ``median [min, max]``
  (:func:`guiding_nc.training.tables.band_text`) whose min and max read the same as the median
  is shown once.
* **Cells never wrap onto three lines.** A number and its band are joined by non-breaking
  spaces, so a numeric cell stays on one line (text cells wrap as usual).
* **The best in each row is bold**, ties included, compared on the shown (rounded) medians and
  only where the quantity has a direction.

A :class:`Table` is the Markdown text of the table (a ``str``, so it can be concatenated with a
caption), displayed by Jupyter and the book as a table.

Book: every chapter's tables (07, 08, 09, 10, 11, 12, 14 read results; 02, 03, 05, 05b show checks).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

from ..core.methods import METHODS
from ..training.tables import band_text

__all__ = ["Quantity", "QUANTITIES", "METHOD_LABELS", "VARIANT_LABELS", "CONFIG_LABELS", "quantity", "label",
           "variant_label", "power_text", "Band", "band", "Table", "table", "seed_table", "pairs_table", "curve_table", "checks", "num",
           "NBSP"]

NBSP = "\u00a0"
METHOD_LABELS = {name: m.label for name, m in METHODS.items()}
# The variants of the ablation experiment (configs/experiments/ablations.yaml), named for readers.
VARIANT_LABELS = {
    "standard": "standard",
    "standard_no_norm": "standard, no normalisation",
    "fixed": "fixed ETF (canonical)",
    "fixed_random": "fixed ETF, random rotation",
    "implicit": "implicit ETF (δ = 10⁻³, DDN on)",
    "implicit_no_ddn": "implicit ETF, DDN off",
    "delta_1e-5": "implicit ETF, δ = 10⁻⁵",
    "delta_1e-4": "implicit ETF, δ = 10⁻⁴",
    "delta_1e-2": "implicit ETF, δ = 10⁻²",
    "delta_1e-1": "implicit ETF, δ = 10⁻¹",
    "delta_1e0": "implicit ETF, δ = 1",
}
CONFIG_LABELS = {"ufm10": "UFM-10", "ufm100": "UFM-100", "ufm200": "UFM-200", "ufm1000": "UFM-1000",
                 "digits_mlp": "digits × MLP"}


def power_text(x: float) -> str:
    """``1e-05`` as "10⁻⁵" (an exact power of ten), anything else as ``format(x, "g")``."""
    e = math.log10(x) if x > 0 else None
    if e is None or abs(e - round(e)) > 1e-12:
        return f"{x:g}"
    if round(e) == 0:
        return "1"
    sup = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    return "10" + str(int(round(e))).translate(sup)


def variant_label(variant: str) -> str:
    """A variant's name for readers (:data:`VARIANT_LABELS`, else a method's label, else itself)."""
    return VARIANT_LABELS.get(variant) or METHOD_LABELS.get(variant) or variant


@dataclass(frozen=True)
class Quantity:
    """How a result key is named and shown: ``label``; ``better`` (``"higher"``, ``"lower"`` or
    ``None``: no best is marked); ``kind``, the rounding rule (:data:`FORMATS`)."""

    label: str
    better: Optional[str]
    kind: str


# kind -> (format, scale): the rounding rule of each kind of number.
FORMATS = {
    "percent": (".1f", 100.0),    # a fraction shown in percent, to 0.1 pp
    "count": ("count", 1.0),      # steps, epochs, units: integers (a median of two may be x.5)
    "loss": (".3g", 1.0),         # losses: three significant digits
    "collapse": (".2g", 1.0),     # NC1-NC3, equinorm: orders of magnitude, two significant digits
    "margin": (".4f", 1.0),       # cosine margins, bounded by C/(C-1): four decimals
    "ms": ("sig3", 1.0),          # times in milliseconds: three significant digits, no exponent
    "s": ("sig3", 1.0),           # times in seconds
    "gib": ("sig3", 1.0),         # memory in GiB
    "ratio": (".2f", 1.0),        # ratios of two measurements
    "general": (".4g", 1.0),
}

QUANTITIES = {
    "steps_to_fit": Quantity("steps to 100% train", "lower", "count"),
    "epochs_to_fit": Quantity("epochs to 100% train", "lower", "count"),
    "steps_to_loss": Quantity("steps to the loss threshold", "lower", "count"),
    "train_loss": Quantity("train loss", "lower", "loss"),
    "test_loss": Quantity("test loss", "lower", "loss"),
    "train_top1": Quantity("train top-1 (%)", "higher", "percent"),
    "test_top1": Quantity("test top-1 (%)", "higher", "percent"),
    "train_top5": Quantity("train top-5 (%)", "higher", "percent"),
    "test_top5": Quantity("test top-5 (%)", "higher", "percent"),
    "train_top1_step0": Quantity("train top-1 before the first step (%)", None, "percent"),
    "train_nc1": Quantity("NC1 (train)", "lower", "collapse"),
    "test_nc1": Quantity("NC1 (test)", "lower", "collapse"),
    "train_nc2": Quantity("NC2 (train)", "lower", "collapse"),
    "train_nc3": Quantity("NC3 (train)", "lower", "collapse"),
    "train_equinorm": Quantity("equinorm (train)", "lower", "collapse"),
    "train_ncc_mismatch": Quantity("NC4: NCC mismatch (train, %)", "lower", "percent"),
    "test_ncc_mismatch": Quantity("NC4: NCC mismatch (test, %)", "lower", "percent"),
    "train_cosine_margin_mean": Quantity("mean cosine margin (train)", "higher", "margin"),
    "train_cosine_margin_min": Quantity("smallest cosine margin (train)", "higher", "margin"),
    "train_dead_units": Quantity("dead feature units", "lower", "count"),
    "train_dead_weight": Quantity("classifier weight on dead units (%)", "lower", "percent"),
    "wall_time_s": Quantity("wall time (s)", None, "s"),
    "peak_mem_gb": Quantity("peak memory (GiB)", None, "gib"),
    "time_step_ms": Quantity("step (ms)", "lower", "ms"),
    "time_backbone_ms": Quantity("backbone (ms)", None, "ms"),
    "time_etf_forward_ms": Quantity("ETF forward (ms)", None, "ms"),
    "time_ddn_backward_ms": Quantity("DDN backward (ms)", None, "ms"),
    "peak_extra_gb": Quantity("peak extra memory (GiB)", "lower", "gib"),
}


def quantity(key: str) -> Quantity:
    """The :class:`Quantity` of a result key; ``key@N`` is ``key`` at epoch (or step) ``N``; an
    unknown key gets its own name with spaces and no direction."""
    base = key.split("@")[0]
    return QUANTITIES.get(base) or Quantity(base.replace("_", " "), None, "general")


def label(key: str, *, at: str = "epoch") -> str:
    """The human label of a result key: ``label("test_top1@200")`` is "test top-1 (%), epoch 200"
    (``at="step"`` for full-batch runs, where a step is an epoch)."""
    q = quantity(key)
    if "@" in key:
        return f"{q.label}, {at} {key.split('@')[1]}"
    return q.label


def num(value: Any, fmt: str = ".3g", missing: str = "—") -> str:
    """One number as text (``missing`` for ``None`` or a value that is not finite)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return f"{value:{fmt}}"


def _spec(kind: str, *values: Optional[float]) -> Tuple[str, float]:
    """The format and scale of ``kind`` for these values (a count is an integer unless one of
    them is a half)."""
    if kind.startswith("fmt:"):  # a table's own format, e.g. "fmt:.2e"
        return kind[4:], 1.0
    spec, scale = FORMATS.get(kind, FORMATS["general"])
    if spec == "count":
        whole = all(v is None or math.isinf(v) or float(v).is_integer() for v in values)
        spec = ".0f" if whole else ".1f"
    elif spec == "sig3":  # decimals for three significant digits of the first value
        x = next((abs(scale * v) for v in values if v is not None and not math.isinf(v)), 0.0)
        digits = max(0, 2 - math.floor(math.log10(x))) if x > 0 else 0
        if digits and round(x, digits) >= 10 ** (3 - digits):  # 9.9996 rounds up to 10.00
            digits -= 1
        spec = f",.{digits}f"
    return spec, scale


def _fmt_one(x: float, kind: str) -> str:
    spec, scale = _spec(kind, x)
    return band_text(x, fmt=spec, scale=scale, infinite="never")


@dataclass
class Band:
    """A value over seeds: median, min and max of a quantity (``kind``, :data:`FORMATS`), with
    ``missing`` runs that have no value (e.g. never reached a threshold)."""

    median: Optional[float]
    lo: Optional[float] = None
    hi: Optional[float] = None
    kind: str = "general"
    missing: int = 0
    bold: bool = False

    @property
    def shown(self) -> Optional[str]:
        """The median as shown (rounded): what ranks the cells of a row."""
        return None if self.median is None else _fmt_one(self.median, self.kind)

    def rank_value(self) -> Optional[float]:
        s = self.shown
        if s is None:
            return None
        if s == "never":
            return math.inf
        try:
            return float(s)
        except ValueError:
            return None

    @property
    def text(self) -> str:
        if self.median is None:
            return "–" if not self.missing else f"none ({self.missing} missing)"
        spec, scale = _spec(self.kind, self.median, self.lo, self.hi)
        med = band_text(self.median, fmt=spec, scale=scale, infinite="never")
        if self.lo is None or self.hi is None:
            out = med
        else:
            out = band_text(self.median, self.lo, self.hi, fmt=spec, scale=scale, infinite="never")
            if out == f"{med} [{med}, {med}]":  # the seeds agree to the shown digits
                out = med
        if self.missing:
            out += f" ({self.missing} never)"
        return out

    def cell(self) -> str:
        t = self.text.replace(" ", NBSP)
        return f"**{t}**" if self.bold and self.median is not None else t


def band(key: str, value: Any, *, kind: Optional[str] = None) -> Band:
    """A :class:`Band` of ``key``'s quantity from a summary cell (``{"median", "min", "max",
    "missing"}``, as :func:`guiding_nc.training.tables.seed_summary` writes), a ``(median, min,
    max)`` tuple, a list of values over seeds, or one number."""
    kind = kind or quantity(key).kind
    if value is None:
        return Band(None, kind=kind)
    if isinstance(value, Mapping):
        return Band(value.get("median"), value.get("min"), value.get("max"), kind, int(value.get("missing") or 0))
    if isinstance(value, tuple) and len(value) == 3:
        return Band(*value, kind=kind)
    if isinstance(value, (list, tuple)):
        vals = [float(v) for v in value if v is not None]
        if not vals:
            return Band(None, kind=kind, missing=len(value))
        return Band(statistics.median(vals), min(vals), max(vals), kind, len(value) - len(vals))
    return Band(float(value), kind=kind)


def mark_best(cells: Sequence[Band], better: Optional[str]) -> None:
    """Bold the best of ``cells`` (ties too), on their shown medians; nothing without a
    direction or with fewer than two values."""
    if better not in ("higher", "lower"):
        return
    vals = [(c, c.rank_value()) for c in cells if isinstance(c, Band)]
    vals = [(c, v) for c, v in vals if v is not None]
    if len(vals) < 2:
        return
    best = (max if better == "higher" else min)(v for _, v in vals)
    if all(v == best for _, v in vals):
        return  # no method is better in this row: nothing to mark
    for c, v in vals:
        c.bold = v == best


class Table(str):
    """A table as Markdown text; Jupyter and the book display it as a table."""

    def _repr_markdown_(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return str(self)


Cell = Union[str, int, float, Band, None]


def _text(c: Cell) -> str:
    if isinstance(c, Band):
        return c.cell()
    if c is None:
        return "–"
    return str(c).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[Cell]], *, align: Optional[str] = None,
          best: Optional[Sequence[Optional[str]]] = None, note: str = "") -> Table:
    """A :class:`Table` of ``rows`` under ``header``.  ``align``: one letter per column, ``l`` or
    ``r`` (default: text left, the rest right).  ``best``: one direction per row (``"higher"``,
    ``"lower"``, ``None``) to bold each row's best :class:`Band` cells; a ``note`` follows the
    table as a paragraph."""
    rows = [list(r) for r in rows]
    for i, r in enumerate(rows):
        if best is not None and best[i]:
            mark_best([c for c in r if isinstance(c, Band)], best[i])
    if align is None:
        align = "l" + "r" * (len(header) - 1)
    sep = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(_text(h) for h in header) + " |", sep]
    lines += ["| " + " | ".join(_text(c) for c in r) + " |" for r in rows]
    text = "\n".join(lines)
    return Table(text + (f"\n\n{note}" if note else ""))


def seed_table(summary: Mapping[str, Any], columns: Mapping[str, str], keys: Sequence[str], *,
               at: str = "epoch", first: str = "metric", note: Optional[str] = None,
               configs: Optional[Mapping[str, str]] = None) -> Table:
    """Metrics over seeds, one row per key, one column per summary group (``columns``: {column
    header: group}, e.g. ``{"standard": "ufm10/default/standard", ...}``), each cell
    ``median [min, max]`` and the best of each row in bold.  With ``configs`` ({config: title})
    the groups hold ``{config}`` and the rows run over configs, then keys.  Rows no group has
    are left out."""
    rows, best, seeds = [], [], set()
    for cfg, title in (configs or {"": ""}).items():
        groups = [g.format(config=cfg) for g in columns.values()]
        seeds |= {len((summary.get(g) or {}).get("seeds") or []) for g in groups}
        for k in keys:
            cells = [band(k, (summary.get(g) or {}).get(k)) for g in groups]
            if all(c.median is None and not c.missing for c in cells):
                continue
            rows.append(([title] if configs else []) + [label(k, at=at)] + cells)
            best.append(quantity(k).better)
    seeds = sorted(seeds - {0})
    if note is None:
        n = "/".join(map(str, seeds)) if seeds else "the"
        note = (f"Median [min, max] over {n} seeds (one number where they agree when rounded); "
                "bold: the best in its row, ties included.")
    head = (["setting"] if configs else []) + [first] + list(columns)
    return table(head, rows, best=best, note=note, align=("ll" if configs else "l") + "r" * len(columns))


def pairs_table(summary: Mapping[str, Any], pairs: Sequence[Tuple[str, str, str]], keys: Sequence[str], *,
                configs: Mapping[str, str], method_of: Mapping[str, str], at: str = "epoch") -> Table:
    """Comparisons of two variants each (``pairs``: ``(title, first, second)``), one row per
    (comparison, config, key) with the two variants side by side and the better one in bold.
    Groups are ``config/variant/method_of[variant]``; rows a config lacks are left out."""
    rows, best, seeds = [], [], set()
    for title, a, b in pairs:
        first_row = len(rows)
        for cfg, cfg_title in configs.items():
            ga, gb = (f"{cfg}/{v}/{method_of[v]}" for v in (a, b))
            seeds |= {len((summary.get(g) or {}).get("seeds") or []) for g in (ga, gb)}
            for k in keys:
                cells = [band(k, (summary.get(g) or {}).get(k)) for g in (ga, gb)]
                if all(c.median is None and not c.missing for c in cells):
                    continue
                name = f"**{title}**: {variant_label(a)} / {variant_label(b)}" if len(rows) == first_row else ""
                rows.append([name, f"{cfg_title}: {label(k, at=at)}"] + cells)
                best.append(quantity(k).better)
    n = "/".join(map(str, sorted(seeds - {0}))) or "the"
    return table(["comparison: first / second", "measure", "first", "second"], rows, best=best, align="llrr",
                 note=f"Median [min, max] over {n} seeds; bold: the better of the two, where they differ when "
                      "rounded.")


def checks(rows: Iterable[Tuple[str, Any, str]], *, header: Sequence[str] = ("check", "value", "expected"),
           fmt: str = ".1e") -> Table:
    """Numerical checks as a table: one row per ``(what, value, expected)``; a float value is
    written with ``fmt``."""
    out = []
    for what, value, expected in rows:
        v = f"{value:{fmt}}" if isinstance(value, float) else str(value)
        out.append([what, v.replace(" ", NBSP), expected])
    return table(header, out, align="lrl")



def curve_table(curves, key: str, steps: Sequence[int], *, offset: float = 0.0, config: Optional[str] = None,
                variant: Optional[str] = None, at: str = "step", fmt: str = ".2e",
                relative_to: Optional[str] = None) -> Table:
    """The median over seeds of a logged curve (``curves`` as
    :func:`guiding_nc.experiments.results.load_results` returns them) at the logged point
    nearest each of ``steps``, minus ``offset`` (e.g. the loss's lower bound), one column per
    method, the best of each row in bold.  With ``relative_to`` a method, a last column gives each
    other method's value as a share of that method's."""
    from ..experiments.results import seed_bands

    where = {k: v for k, v in (("config", config), ("variant", variant)) if v}
    bands = {m: (xs, med) for (_, _, m), (xs, med, _, _) in seed_bands(curves, key, where=where or None).items()}
    q = quantity(key)
    rows, best = [], []
    for step in steps:
        cells, vals, shown_at = [], {}, None
        for m, (xs, med) in bands.items():
            i = int(abs(xs - step).argmin())
            shown_at = int(xs[i])
            vals[m] = float(med[i]) - offset
            cells.append(Band(vals[m], kind=f"fmt:{fmt}"))
        row = [shown_at] + cells
        if relative_to in vals:
            row.append(", ".join(f"{METHOD_LABELS.get(m, m)} {vals[m] / vals[relative_to]:.2f}"
                                 for m in vals if m != relative_to and vals[relative_to]))
        rows.append(row)
        best.append(q.better)
    header = [at] + [METHOD_LABELS.get(m, m) for m in bands]
    if relative_to in bands:
        header.append(f"as a share of {METHOD_LABELS.get(relative_to, relative_to)}")
    return table(header, rows, best=best)
