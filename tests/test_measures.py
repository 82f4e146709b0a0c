"""Measures of a run: steps to fit, steps to a loss / NC threshold (integers, never floats)."""
import math

import pytest

from guiding_nc.experiments import measures
from guiding_nc.training.config import ConfigError


def test_first_fit_step():
    assert measures.first_fit_step([0.1, 0.5, 1.0, 0.9, 1.0]) == 2
    assert measures.first_fit_step([1.0]) == 0
    assert measures.first_fit_step([0.2, 0.99]) is None


def test_steps_to_thresholds_are_integers_from_the_exact_per_step_loss():
    from guiding_nc.core.metric_formulas import cross_entropy_lower_bound

    C, tau = 10, 5.0
    bound = cross_entropy_lower_bound(C, tau)
    gap = math.log(C) - bound
    losses = [bound + gap * f for f in (1.0, 0.5, 0.02, 0.011, 0.0099, 0.001)]
    history = [{"epoch": e, "step": e, "train_nc1": v1, "train_nc3": v3}
               for e, v1, v3 in ((2, 1.0, 0.5), (4, 5e-4, 0.02), (6, 1e-4, 0.005))]
    out = measures.steps_to_thresholds({"loss_gap": 0.01, "nc1": 1e-3, "nc3": 1e-2}, losses, history, C, tau)
    assert out == {"steps_to_loss": 4, "reached_loss": True, "steps_to_nc1": 4, "reached_nc1": True,
                   "steps_to_nc3": 6, "reached_nc3": True}
    out = measures.steps_to_thresholds({"loss_gap": 1e-4, "nc3": 1e-3}, losses, history, C, tau)
    assert out == {"steps_to_loss": None, "reached_loss": False, "steps_to_nc3": None, "reached_nc3": False}
    with pytest.raises(ConfigError, match="unknown threshold"):
        measures.steps_to_thresholds({"accuracy": 1.0}, losses, history, C, tau)



def test_step_counts_are_integers_with_never_as_infinite():
    runs = [{"config": "c", "variant": "v", "method": "m", "seed": s, "steps_to_loss": x, "reached_loss": x is not None}
            for s, x in enumerate([12, None, 10])]
    counts = measures.step_counts(runs, "c", "v", "m", "steps_to_loss")
    assert counts == [12, math.inf, 10] and all(isinstance(x, int) for x in counts if x != math.inf)
    assert measures.median_of(counts) == 12 and measures.median_of([1, 2, 3, 4]) == 2.5
    assert measures.format_steps(counts) == "12 [10, never]" and measures.format_steps(None) == "–"
    assert measures.step_counts(runs, "c", "v", "m", "steps_to_fit") is None  # not recorded
