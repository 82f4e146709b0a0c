"""The explorer's ipywidgets UI: :func:`build_explorer` and its :class:`Explorer` (book page 06).

Its Run handler only calls the plain functions of :mod:`guiding_nc.companions.explorer.runs` and
:mod:`guiding_nc.companions.explorer.projection` and the figures of
:mod:`guiding_nc.companions.plotting.explorer`, so everything it shows can be computed without a browser.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Dict, Optional

from ...core.methods import METHOD_NAMES
from ...training.optim import OPTIMIZER_NAMES
from .projection import ProjectionFrames, projection_frames
from .runs import ExplorerResult, run_ufm
from .settings import (DEFAULT_LR, MAIN_METHODS, MAX_3D_CLASSES, METHOD_LABELS, ExplorerSettings,
                       ExplorerSettingsError)

__all__ = [
    "build_explorer",
    "Explorer",
]


class Explorer:
    """The ipywidgets UI of :func:`build_explorer`.

    ``ui`` is the top-level widget (displaying an ``Explorer`` displays it); ``controls`` maps
    each setting to its widget; ``min_redraw_s`` throttles the live redraws during a run; :meth:`settings` reads them; :meth:`run` is the Run button's
    handler (call it directly to run without a browser); ``results`` and ``figures`` hold what
    the last run produced.
    """

    def __init__(self, defaults: Optional[ExplorerSettings] = None, *, live: bool = True, compare: bool = False,
                 dims3: bool = False):
        import ipywidgets as w

        s = defaults or ExplorerSettings()
        self.defaults = s
        self.live = live
        self.min_redraw_s = 2.0  # live redraws at most this often (drawing costs more than training)
        self._last_draw = 0.0
        style = {"description_width": "150px"}
        lay = w.Layout(width="330px")
        self.controls: Dict[str, Any] = {
            "C": w.BoundedIntText(value=s.C, min=2, max=100, description="classes C", style=style, layout=lay),
            "d": w.BoundedIntText(value=s.d, min=2, max=2048, description="feature dim d", style=style, layout=lay),
            "N": w.BoundedIntText(value=s.N, min=2, max=20000, description="samples N (× of C)", style=style,
                                  layout=lay),
            "method": w.Dropdown(options=[(METHOD_LABELS[m], m) for m in METHOD_NAMES], value=s.method,
                                 description="method", style=style, layout=lay),
            "compare": w.Checkbox(value=bool(compare), description="compare standard / fixed / implicit",
                                  indent=False, layout=w.Layout(width="330px")),
            "tau": w.BoundedFloatText(value=s.tau, min=1e-3, max=1e3, step=0.5, description="temperature τ",
                                      style=style, layout=lay),
            "delta": w.FloatLogSlider(value=s.delta, base=10, min=-6, max=0, step=0.5,
                                      description="proximal δ", readout_format=".0e", style=style, layout=lay),
            "optimizer": w.Dropdown(options=list(OPTIMIZER_NAMES), value=s.optimizer, description="optimiser",
                                    style=style, layout=lay),
            "gain": w.BoundedFloatText(value=s.gain, min=1e-3, max=1e3, step=1.0, description="AGD gain",
                                       style=style, layout=lay),
            "lr": w.FloatLogSlider(value=s.effective_lr or DEFAULT_LR["sgd"], base=10, min=-4, max=1, step=0.1,
                                   description="learning rate", readout_format=".2g", style=style, layout=lay),
            "steps": w.IntSlider(value=s.steps, min=10, max=2000, step=10, description="steps", style=style,
                                 layout=lay),
            "seed": w.BoundedIntText(value=s.seed, min=0, max=10 ** 6, description="seed", style=style, layout=lay),
            "dims3": w.Checkbox(value=bool(dims3), description="also show a 3-D projection (C ≥ 4)", indent=False,
                                layout=w.Layout(width="330px")),
        }
        self.run_button = w.Button(description="Run", button_style="primary", icon="play",
                                   tooltip="train the UFM with these settings")
        self.status = w.HTML(value="Pick settings and press <b>Run</b>.")
        self.frame_slider = w.IntSlider(value=0, min=0, max=0, description="snapshot", disabled=True,
                                        continuous_update=False, style=style, layout=w.Layout(width="500px"))
        self.curves_out = w.Output()
        self.projection_out = w.Output()
        self.results: Dict[str, ExplorerResult] = {}
        self.frames: Dict[str, ProjectionFrames] = {}
        self.figures: Dict[str, Any] = {}
        self.error: Optional[str] = None
        self.run_button.on_click(self._on_click)
        self.controls["optimizer"].observe(self._sync_optimizer, names="value")
        self.controls["lr"].observe(self._lr_touched, names="value")
        self.frame_slider.observe(self._on_frame, names="value")
        self._lr_set_by_user = False
        self._sync_optimizer()
        c = self.controls
        left = w.VBox([w.HTML("<b>Model</b>"), c["C"], c["d"], c["N"], c["method"], c["compare"], c["tau"],
                       c["delta"]])
        right = w.VBox([w.HTML("<b>Optimisation</b>"), c["optimizer"], c["gain"], c["lr"], c["steps"], c["seed"],
                        c["dims3"]])
        self.ui = w.VBox([w.HBox([left, right]), w.HBox([self.run_button, self.status]), self.curves_out,
                          self.frame_slider, self.projection_out])

    # -- display ---------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

    # -- controls --------------------------------------------------------------------
    def _sync_optimizer(self, change=None) -> None:
        opt = self.controls["optimizer"].value
        self.controls["gain"].disabled = opt != "agd"
        self.controls["lr"].disabled = opt == "agd"
        if opt in DEFAULT_LR and not self._lr_set_by_user:
            self._setting_lr = True
            self.controls["lr"].value = DEFAULT_LR[opt]
            self._setting_lr = False

    def _lr_touched(self, change) -> None:
        if not getattr(self, "_setting_lr", False):
            self._lr_set_by_user = True

    def settings(self, method: Optional[str] = None) -> ExplorerSettings:
        """The settings the controls describe (raises :class:`ExplorerSettingsError`)."""
        c = self.controls
        opt = c["optimizer"].value
        return replace(
            self.defaults, C=int(c["C"].value), d=int(c["d"].value), N=int(c["N"].value),
            method=method or c["method"].value, tau=float(c["tau"].value), delta=float(c["delta"].value),
            optimizer=opt, gain=float(c["gain"].value), lr=None if opt == "agd" else float(c["lr"].value),
            steps=int(c["steps"].value), seed=int(c["seed"].value),
        )

    def set(self, **values: Any) -> "Explorer":
        """Set controls by name (``C``, ``d``, ``N``, ``method``, ``compare``, ``tau``, ``delta``,
        ``optimizer``, ``gain``, ``lr``, ``steps``, ``seed``, ``dims3``); returns ``self``."""
        for k, v in values.items():
            if k not in self.controls:
                raise KeyError(f"no control {k!r}; controls are {', '.join(self.controls)}")
            if k == "lr":
                self._lr_set_by_user = True
            self.controls[k].value = v
        return self

    # -- running ---------------------------------------------------------------------
    def _on_click(self, button=None) -> None:
        self.run()

    def _show(self, out, fig) -> None:
        """Put ``fig`` into the Output widget ``out`` (only inside a kernel; tests just keep it)."""
        import matplotlib.pyplot as plt

        if _in_kernel():
            from IPython.display import display

            with out:
                out.clear_output(wait=True)
                display(fig)
        plt.close(fig)

    def _show_text(self, text: str) -> None:
        """A line of text under the projection (only inside a kernel; tests keep it as ``note``)."""
        self.note = text
        if _in_kernel():
            from IPython.display import display

            with self.projection_out:
                display(text)

    def _draw(self, final: bool) -> None:
        from ..plotting import explorer as px

        if not self.results:
            return
        self.figures["curves"] = fig = px.plot_curves(list(self.results.values()))
        self._show(self.curves_out, fig)
        self._draw_projection(final)

    def _draw_projection(self, final: bool, index: Optional[int] = None) -> None:
        from ..plotting import explorer as px

        if not self.results:
            return
        self.frames = {m: projection_frames(r, 2) for m, r in self.results.items() if len(r.snapshot_steps)}
        if not self.frames:
            return
        first = next(iter(self.frames.values()))
        idx = len(first.steps) - 1 if index is None else int(index)
        step = int(first.steps[min(idx, len(first.steps) - 1)])
        fig = px.plot_projection_panels(list(self.frames.values()), step=step)
        self.figures["projection"] = fig
        self._show(self.projection_out, fig)
        C = next(iter(self.results.values())).settings.C
        if final and self.controls["dims3"].value and C > MAX_3D_CLASSES:
            self._show_text(f"3-D is drawn up to C = {MAX_3D_CLASSES}: {C} vertices span {C - 1} dimensions, "
                            "three of them show too little and the vertices crowd; the plane above shows them.")
        if final and self.controls["dims3"].value and 4 <= C <= MAX_3D_CLASSES:
            frames3 = [projection_frames(r, 3) for r in self.results.values()]
            fig3 = px.plot_projection_3d_panels(frames3, step=step)
            self.figures["projection_3d"] = fig3
            if _in_kernel():
                from IPython.display import display

                with self.projection_out:
                    display(fig3)
            import matplotlib.pyplot as plt

            plt.close(fig3)
        else:
            self.figures.pop("projection_3d", None)

    def _on_frame(self, change) -> None:
        if self._busy or not self.results:
            return
        self._draw_projection(final=True, index=change["new"])

    _busy = False

    def run(self) -> Dict[str, ExplorerResult]:
        """The Run button: read the settings, train (live redraws), draw the final figures."""
        self.error = None
        try:
            base = self.settings()
        except ExplorerSettingsError as exc:
            self.error = str(exc)
            self.status.value = f"<span style='color:#b00'>Cannot run: {_html_escape(exc)}</span>"
            return {}
        methods = list(MAIN_METHODS) if self.controls["compare"].value else [base.method]
        self._busy = True
        self._last_draw = time.perf_counter()
        self.run_button.disabled = True
        self.frame_slider.disabled = True
        self.results = {}
        t0 = time.perf_counter()
        try:
            for m in methods:
                s = base.with_(method=m)
                self.status.value = f"running <b>{_html_escape(s.label)}</b> ..."

                def update(r: ExplorerResult, m=m) -> None:
                    self.results[m] = r
                    self.status.value = (f"<b>{_html_escape(r.label)}</b>: step {r.steps_done}/{r.settings.steps}, "
                                         f"loss {r.final('loss'):.4g}, train acc {100 * r.final('top1'):.1f}%")
                    now = time.perf_counter()
                    if (self.live and r.status == "running" and _in_kernel()
                            and now - self._last_draw >= self.min_redraw_s):
                        self._draw(final=False)
                        self._last_draw = time.perf_counter()

                self.results[m] = run_ufm(s, on_update=update, update_every=max(1, s.steps // 6))
        except Exception as exc:  # noqa: BLE001 - shown to the reader, not swallowed silently
            self.error = f"{type(exc).__name__}: {exc}"
            self.status.value = f"<span style='color:#b00'>Run failed: {_html_escape(self.error)}</span>"
            self._busy = False
            self.run_button.disabled = False
            if self.results:
                self._draw(final=True)
            return self.results
        n = max(len(r.snapshot_steps) for r in self.results.values())
        self.frame_slider.max = n - 1
        self.frame_slider.value = n - 1
        self.frame_slider.disabled = False
        self._draw(final=True)
        self._busy = False
        self.run_button.disabled = False
        self.status.value = (f"done in {time.perf_counter() - t0:.1f} s — drag <i>snapshot</i> to replay the "
                             "class means")
        return self.results


def _html_escape(x: Any) -> str:
    import html

    return html.escape(str(x))


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def build_explorer(defaults: Optional[ExplorerSettings] = None, *, live: bool = True, compare: bool = False,
                   dims3: bool = False) -> Explorer:
    """The interactive UFM explorer (an :class:`Explorer`; display it in a notebook).

    Controls for every :class:`ExplorerSettings` field, a *compare* switch (runs standard, fixed
    and implicit with the same settings), a Run button, live figures (curves and the 2-D
    projection; optionally 3-D) and a slider to replay the snapshots.  ``live=False`` draws
    only at the end of a run; ``compare`` and ``dims3`` set the two checkboxes.  Works without a
    kernel: call ``explorer.run()``.
    """
    return Explorer(defaults, live=live, compare=compare, dims3=dims3)
