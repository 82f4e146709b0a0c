"""Tables of results, written one way: the CSV writer and reader every result file goes through,
the summary of a metric over seeds (median, min and max), and its one text form,
``median [min, max]``.

Book: every experiment chapter's tables.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ["csv_text", "parse_value", "read_csv", "seed_summary", "band_text"]


def csv_text(rows: Sequence[Mapping[str, Any]], keys: Optional[Sequence[str]] = None, *, lead: Sequence[str] = (),
             nan_empty: bool = False, list_format: Optional[str] = None) -> str:
    """Rows as CSV text.  Columns: ``keys``, or ``lead`` then every other key in order of first
    appearance.  ``None`` is an empty cell; ``nan_empty`` makes NaN one too; ``list_format``
    (e.g. ``".6g"``) writes a list as its ``;``-joined formatted items."""
    if keys is None:
        keys = list(lead)
        for r in rows:
            keys += [k for k in r if k not in keys]
    keys = list(keys)

    def cell(v: Any) -> Any:
        if v is None or (nan_empty and isinstance(v, float) and math.isnan(v)):
            return ""
        if list_format is not None and isinstance(v, list):
            return ";".join(format(x, list_format) for x in v)
        return v

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: cell(r.get(k)) for k in keys})
    return buf.getvalue()


def parse_value(v: str) -> Any:
    """One CSV cell back to Python: ``""`` -> ``None``, ``True``/``False``, ints, floats, text."""
    if v == "":
        return None
    if v in ("True", "False"):
        return v == "True"
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def read_csv(path: Path) -> List[Dict[str, Any]]:
    """A CSV file written by :func:`csv_text`, as a list of dicts of parsed values."""
    with Path(path).open(newline="") as fh:
        return [{k: parse_value(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def seed_summary(values: Sequence[float], *, missing: int = 0) -> Dict[str, Any]:
    """Median, min and max of a metric's values over seeds: ``{"median", "min", "max", "n",
    "missing", "values"}`` (``None`` statistics for no values; ``missing`` counts the runs that
    have none, e.g. never reached a threshold)."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals) if vals else None, "min": min(vals) if vals else None,
            "max": max(vals) if vals else None, "n": len(vals), "missing": int(missing), "values": vals}


def band_text(median: Optional[float], lo: Optional[float] = None, hi: Optional[float] = None, *, fmt: str = ".4g",
              unit: str = "", scale: float = 1.0, none: str = "–", infinite: str = "never") -> str:
    """``median [min, max]`` in one format (``fmt``), each value times ``scale``, ``unit`` after the
    median; ``none`` when there is no median, ``infinite`` for an infinite value (a step count
    that never reached its threshold)."""
    if median is None:
        return none

    def show(x: float) -> str:
        return infinite if math.isinf(x) else f"{scale * x:{fmt}}"

    if lo is None or hi is None:
        return f"{show(median)}{unit}"
    return f"{show(median)}{unit} [{show(lo)}, {show(hi)}]"
