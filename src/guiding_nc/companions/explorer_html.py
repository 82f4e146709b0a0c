"""The UFM explorer in the static book: a self-contained HTML viewer of a precomputed grid.

The live explorer (:mod:`guiding_nc.companions.explorer`) needs a Python kernel; a reader of the rendered
book has none.  So :mod:`guiding_nc.companions.explorer_grid` trains a grid of small UFMs ahead
of time with the same :func:`~guiding_nc.companions.explorer.runs.run_ufm`, and :func:`viewer_html` turns that
file into one HTML fragment -- plain JavaScript and SVG (``static/explorer_viewer.js`` and
``.css``, package data), the grid itself gzipped and base64-encoded inside -- that needs no
network and no server: selectors for C, d, n, optimiser, tau, delta and seed, a step slider,
the three methods side by side in the fixed projection basis (2-D, or 3-D for C >= 4), small
curves with the current step marked, and the numbers at that step.

* :func:`grid_path` -- where the page looks for the grid: an explicit path, else
  ``$GUIDING_NC_EXPLORER_GRID``, else :data:`DEFAULT_GRID` in the project.
* :func:`viewer_html` -- the fragment for a loaded grid (``dict``).
* :func:`grid_description` -- a short list saying what the grid holds and what made it.
* :func:`explorer_viewer` -- what the book page calls: the viewer as an
  ``IPython.display.HTML``, or, when the grid file is not there, one sentence naming the
  command that makes it (the page still builds).
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..training.config import project_root
from .explorer.settings import MAX_3D_CLASSES
from .explorer_grid import DEFAULT_OUT, FORMAT, MODULE, load_grid
from ..core.methods import METHODS

__all__ = ["DEFAULT_GRID", "GRID_ENV", "grid_path", "delta_effect", "viewer_html",
           "grid_description", "explorer_viewer"]

DEFAULT_GRID = DEFAULT_OUT  # relative to the project root
GRID_ENV = "GUIDING_NC_EXPLORER_GRID"
_AXES = ("C", "d", "n", "optimizer", "tau", "delta", "seed")  # the viewer's selectors
_counter = 0


def grid_path(path: Optional[os.PathLike] = None) -> Path:
    """The grid file to show: ``path``, else ``$GUIDING_NC_EXPLORER_GRID``, else
    ``<project root>/data/explorer/grid.json.gz``.  A relative path is taken from the project
    root (the book executes its pages from ``book/``)."""
    chosen = path if path not in (None, "") else os.environ.get(GRID_ENV) or DEFAULT_GRID
    p = Path(chosen).expanduser()
    return p if p.is_absolute() else project_root() / p


def _asset(name: str) -> str:
    return (resources.files("guiding_nc") / "static" / name).read_text(encoding="utf-8")


def _script_json(obj: Any) -> str:
    """JSON that is safe inside ``<script>``: no ``</`` can close the element early."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


def _method_meta(methods: List[str]) -> Dict[str, Dict[str, str]]:
    out = {}
    for m in methods:
        spec = METHODS.get(m)
        out[m] = {"label": spec.label if spec else m, "colour": spec.colour if spec else "#333333",
                  "dash": spec.line_style if spec else "-"}
    return out


def _pow10(x: float) -> str:
    from .tables import power_text

    return power_text(x)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.1 else f"{100 * x:.2g}%"


def delta_effect(grid: Mapping[str, Any], keys=(("loss", "loss"), ("nc3", "NC3"))) -> Optional[str]:
    """What the proximal coefficient changes in the grid, in one sentence for the viewer's delta
    control.  For each optimiser, over every setting the implicit method was run at with several
    deltas: the largest relative spread of its final loss and NC3 across delta, and whether that
    spread follows delta (monotone, largest at one end) or not.  ``None`` when the grid has a
    single delta."""
    groups: Dict[tuple, List[Mapping[str, Any]]] = {}
    for r in grid.get("runs", []):
        if r.get("delta") is None or r.get("status") != "completed":
            continue
        groups.setdefault(tuple(r.get(a) for a in _AXES if a != "delta"), []).append(r)
    by_opt: Dict[str, Dict[str, Any]] = {}
    deltas = set()
    for key, runs in groups.items():
        if len(runs) < 2:
            continue
        runs = sorted(runs, key=lambda r: r["delta"])
        deltas |= {r["delta"] for r in runs}
        o = by_opt.setdefault(key[_AXES.index("optimizer")], {k: (0.0, True, None) for k, _ in keys})
        for k, _ in keys:
            vals = [r["metrics"][k][-1] for r in runs]
            if any(v is None or v <= 0 for v in vals):
                continue
            spread = (max(vals) - min(vals)) / min(vals)
            if spread > o[k][0]:
                steps = [b - a for a, b in zip(vals, vals[1:])]
                monotone = all(x >= 0 for x in steps) or all(x <= 0 for x in steps)
                end = runs[-1]["delta"] if abs(vals[-1] - vals[-2]) >= abs(vals[1] - vals[0]) else runs[0]["delta"]
                o[k] = (spread, monotone, end)
    if not deltas:
        return None
    parts = []
    for opt, o in sorted(by_opt.items()):
        amounts = " and ".join(f"{name} by {_pct(o[k][0])}" for k, name in keys)
        ordered = all(o[k][1] for k, _ in keys if o[k][0] > 0.01)
        ends = {o[k][2] for k, _ in keys if o[k][0] > 0.01}
        how = ("" if not ends else f", most at δ = {_pow10(ends.pop())}" if ordered and len(ends) == 1
               else ", in no order of δ" if not ordered else "")
        o_set = (grid.get("optimizers") or {}).get(opt) or {}
        shown = o_set.get("optimizer", opt) + (f" (gain {o_set['gain']:g})" if "gain" in o_set else "")
        parts.append(f"{shown}: {amounts}{how}")
    return (f"From δ = {_pow10(min(deltas))} to {_pow10(max(deltas))} the implicit runs' final numbers change "
            f"at most — " + "; ".join(parts) + ". The other methods do not use δ.")


def viewer_html(grid: Mapping[str, Any], *, initial: Optional[Mapping[str, Any]] = None,
                element_id: Optional[str] = None) -> str:
    """One self-contained HTML fragment that shows ``grid`` (as :func:`load_grid` returns it).

    ``initial``: the first settings shown, ``{axis: value}`` for some of C, d, n, optimizer,
    tau, delta, seed; an axis it leaves out starts at the grid spec's default, and a combination
    the grid lacks is replaced by the nearest one it has.
    ``element_id``: the id of the outer ``<div>`` (default: derived from the data, plus a
    counter, so two viewers on one page do not clash).  The grid is embedded gzipped and
    base64-encoded (about 4/3 of the file's size); the fragment references no URL.
    """
    global _counter
    if not isinstance(grid, Mapping) or grid.get("format") != FORMAT:
        found = grid.get("format") if isinstance(grid, Mapping) else type(grid).__name__
        raise ValueError(f"viewer_html needs an explorer grid of format {FORMAT} (from load_grid), got {found!r}")
    if not isinstance(grid.get("runs"), list):
        raise ValueError("the explorer grid has no list of runs")
    if initial is not None and not isinstance(initial, Mapping):
        raise TypeError(f"initial must be a mapping axis -> value, got {type(initial).__name__}")
    unknown = sorted(set(initial or {}) - set(_AXES))
    if unknown:
        raise ValueError(f"initial names unknown axis(es) {', '.join(unknown)}; axes are C, d, n, optimizer, "
                         "tau, delta, seed")
    text = json.dumps(grid, separators=(",", ":"), allow_nan=False).encode("utf-8")
    payload = base64.b64encode(gzip.compress(text, compresslevel=9, mtime=0)).decode("ascii")
    # Axes the caller leaves open start at the spec's default (its first default value).
    defaults = ((grid.get("provenance") or {}).get("config") or {}).get("defaults") or {}
    start = {a: v[0] for a, v in defaults.items() if a in _AXES and isinstance(v, list) and v}
    start.update(initial or {})
    hints = {"delta": delta_effect(grid)}
    meta = {"methods": _method_meta(list(grid.get("methods", []))), "initial": start,
            "hints": {k: v for k, v in hints.items() if v}, "max_3d": MAX_3D_CLASSES}
    if element_id is None:
        _counter += 1
        digest = hashlib.sha256(text + _script_json(meta).encode()).hexdigest()[:10]
        element_id = f"gnc-explorer-{digest}-{_counter}"
    if not element_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"element_id must be letters, digits, '-' or '_', got {element_id!r}")
    eid = html.escape(element_id)
    return "\n".join([
        f"<style>{_asset('explorer_viewer.css')}</style>",
        f'<div class="gnc-explorer" id="{eid}">',
        '<div class="gnc-note">The explorer needs JavaScript; it is loading or switched off.</div>',
        "</div>",
        f'<script type="application/json" id="{eid}-meta">{_script_json(meta)}</script>',
        f'<script type="application/octet-stream" id="{eid}-data">{payload}</script>',
        f"<script>{_asset('explorer_viewer.js')}\nwindow.GNCExplorer.mount({json.dumps(element_id)});</script>",
    ])


def _fmt_axis(values: List[Any]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _opt_text(name: str, settings: Mapping[str, Any]) -> str:
    base = [settings["optimizer"]] if settings.get("optimizer", name) != name else []
    return ", ".join(base + [f"{a} {b}" for a, b in settings.items() if a != "optimizer"])


def grid_description(grid: Mapping[str, Any]) -> str:
    """A short Markdown list (readable as plain text too): how many runs over which axis values,
    how many steps and snapshots, and the provenance recorded in the file (command, commit, date,
    device, versions, wall time)."""
    runs = grid.get("runs", [])
    axes = grid.get("axes", {})
    steps = grid.get("steps", [])
    prov = grid.get("provenance", {}) or {}
    git = prov.get("git", {}) or {}
    spec = prov.get("config", {}) or {}
    diverged = sum(1 for r in runs if str(r.get("status")).startswith("diverged"))
    failed = sum(1 for r in runs if str(r.get("status")).startswith("failed"))
    names = {"C": "C", "d": "d", "n": "n (samples per class)", "optimizer": "optimiser", "tau": "tau",
             "delta": "delta (implicit only)", "seed": "seed", "method": "method"}
    shown = _fmt_axis(steps) if len(steps) <= 8 else f"{_fmt_axis(steps[:5])}, ..., {_fmt_axis(steps[-2:])}"
    lines = [f"- **{len(runs)} runs** of {steps[-1] if steps else '?'} full-batch steps each, {len(steps)} "
             f"snapshots per run (steps {shown}); {diverged} diverged, {failed} failed."]
    lines.append("- **Axis values**: " + "; ".join(f"{names.get(a, a)} {_fmt_axis(v)}" for a, v in axes.items())
                 + ".")
    blocks = spec.get("blocks") or []
    if blocks:
        lines.append("- **Blocks** (an axis a block does not name takes its default): " + "; ".join(
            f"{b.get('name')}: " + (", ".join(f"{k} {_fmt_axis(v)}" for k, v in b.items() if k != "name")
                                    or "the defaults")
            for b in blocks) + ".")
    opts = grid.get("optimizers", {})
    if opts:
        lines.append("- **Optimisers**: " + "; ".join(
            f"{k} ({_opt_text(k, v)})" for k, v in opts.items())
            + ".")
    commit = (git.get("commit") or "unknown")[:12] + ("-dirty" if git.get("dirty") else "")
    lines.append(f"- **Made by** `{prov.get('command', '?')}` (every run by `{prov.get('trainer', '?')}`) at "
                 f"commit `{commit}` on {str(prov.get('date', '?'))[:10]}, "
                 f"{prov.get('device_name', prov.get('device', '?'))}, {prov.get('num_threads', '?')} thread(s), "
                 f"Python {prov.get('python', '?')}, torch {prov.get('torch', '?')}, NumPy "
                 f"{prov.get('numpy', '?')}; {prov.get('wall_time_s', '?')} s in all.")
    return "\n".join(lines)


def explorer_viewer(path: Optional[os.PathLike] = None, *, initial: Optional[Mapping[str, Any]] = None,
                    describe: bool = True):
    """The book page's viewer cell.

    When the grid at :func:`grid_path` (``path``) exists: shows :func:`grid_description` (when
    ``describe``) and returns the viewer as an ``IPython.display.HTML``.  When it does not: returns
    one Markdown sentence naming the command that makes it, so the page still builds.
    """
    from IPython.display import HTML, Markdown, display

    p = grid_path(path)
    if not p.is_file():
        try:
            shown = p.relative_to(project_root())
        except ValueError:
            shown = p
        return Markdown(f"The explorer grid `{shown}` is not there yet; make it with "
                        f"`.venv/bin/python -m {MODULE} --out {shown}`.")
    grid = load_grid(p)
    if describe:
        display(Markdown(grid_description(grid)))
    return HTML(viewer_html(grid, initial=initial))
