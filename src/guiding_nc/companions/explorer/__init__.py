"""Interactive unconstrained-feature-model (UFM) explorer: the logic behind book page 06.

Everything the widget does is a plain function, so tests (and readers without a browser) can
call it directly:

* :mod:`~guiding_nc.companions.explorer.settings` -- ``ExplorerSettings``, the reader's choices
  (C, d, N, method, tau, delta, optimiser, gain or learning rate, steps, seed), validated with
  clear errors;
* :mod:`~guiding_nc.companions.explorer.runs` -- ``run_ufm`` builds a
  :class:`~guiding_nc.training.config.TrainConfig` from the settings and trains it with the
  project's :class:`~guiding_nc.training.trainer.Trainer` (full batch, so one epoch is one
  optimiser step).  A trainer callback records the evaluation metrics and snapshots of the
  centred class means, the classifier and the nearest simplex ETF; returns an ``ExplorerResult``;
* :mod:`~guiding_nc.companions.explorer.projection` -- ``projection_frames``: 2-D or 3-D
  coordinates of the class means, the classifier rows and the nearest ETF vertices over time, in
  **one fixed basis** (so frames are comparable);
* :mod:`~guiding_nc.companions.explorer.widget` -- ``build_explorer``, the ipywidgets UI; its Run
  handler only calls the functions above and the figures of
  :mod:`guiding_nc.companions.plotting.explorer`.
"""
