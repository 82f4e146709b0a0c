"""The settings schema: every setting declares its type (annotation) and its range or choices
(``metadata["check"]``) in one place, the library's own checks where a setting is a library
argument, and :meth:`TrainConfig.validate` runs them all (guiding_nc.training.config,
guiding_nc.core.checks)."""
import dataclasses
import os

import pytest

from guiding_nc.core import checks
from guiding_nc.core.nearest import BACKWARDS, SOLVERS
from guiding_nc.training.config import CONFIG_DIR, ConfigError, TrainConfig, load_config
from guiding_nc.training.protocol import OPTIONS

UFM = ["num_samples=40", "feature_dim=16", "batch_size=40"]


def test_every_setting_declares_a_check():
    for f in dataclasses.fields(TrainConfig):
        assert isinstance(f.metadata.get("check"), checks.Check), f.name
    assert set(TrainConfig.schema()) == set(TrainConfig.valid_keys())


def test_the_schema_adds_nothing_to_a_config_dict():
    cfg = TrainConfig()
    d = cfg.to_dict()
    assert list(d) == TrainConfig.valid_keys()
    assert d == {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                 for f in dataclasses.fields(TrainConfig)}


def test_every_default_passes_its_own_check():
    cfg = TrainConfig()
    for key, check in TrainConfig.schema().items():
        check(key, getattr(cfg, key))


@pytest.mark.parametrize("path", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if "base" not in p.stem
                                        and p.stem != "paper_defaults"))
def test_every_shipped_config_validates(path):
    load_config(path).validate()


def test_the_library_and_the_settings_share_their_checks():
    schema = TrainConfig.schema()
    assert schema["delta"] is checks.DELTA and schema["tau"] is checks.TAU and schema["ema_floor"] is checks.EMA_FLOOR
    assert schema["num_threads"].inner is checks.THREADS and schema["num_classes"].inner is checks.CLASSES
    assert set(schema["ddn_backward"].choices) == set(BACKWARDS) and set(schema["solver"].choices) == set(SOLVERS)


def test_the_protocol_options_feed_their_choices():
    schema = TrainConfig.schema()
    for opt in OPTIONS:
        check = schema[opt.key]
        for choice in opt.choices:
            assert check(opt.key, choice) == choice
        assert check(opt.key, None) is None
        with pytest.raises(checks.ArgumentError, match=f"{opt.key} must be one of"):
            check(opt.key, "nosuch")


NUMERIC = [f.name for f in dataclasses.fields(TrainConfig) if any(t in str(f.type) for t in ("int", "float"))]


@pytest.mark.parametrize("key", NUMERIC)
def test_a_bool_is_never_a_number(key):
    with pytest.raises(ConfigError, match=f"{key}"):
        load_config("ufm10", UFM + [f"{key}=true"]).validate()


def test_report_epochs_beyond_epochs_are_refused_only_where_given():
    load_config("ufm10", UFM + ["epochs=5"]).validate()  # the file's report epochs, left to the run
    with pytest.raises(ConfigError, match=r"report_epochs \[10\] lie beyond epochs=5"):
        load_config("ufm10", UFM + ["epochs=5", "report_epochs=[2, 10]"]).validate()
    with pytest.raises(ConfigError, match="lie beyond"):
        load_config({"base": "ufm10", "epochs": 5, "report_epochs": [10], "num_samples": 40, "feature_dim": 16,
                     "batch_size": 40}).validate()


def test_thread_counts_are_bounded_by_the_machine():
    assert checks.max_threads() == 4 * (os.cpu_count() or 1)
    checks.THREADS("num_threads", checks.max_threads())
    with pytest.raises(checks.ArgumentError, match="4 per CPU of this machine"):
        checks.THREADS("num_threads", checks.max_threads() + 1)


CHECK_ROWS = [
    (checks.Integer(1), 0, "x must be a positive integer, got 0"),
    (checks.Integer(1), True, "x must be a positive integer, got True"),
    (checks.Integer(0, 3), 4, "x must be an integer from 0 to 3, got 4"),
    (checks.Real(0.0, low_open=True), float("inf"), "x must be a finite number > 0, got inf"),
    (checks.Real(0.0, 1.0, high_open=True), 1.0, "x must be a number in [0, 1), got 1.0"),
    (checks.Real(), False, "x must be a finite number, got False"),
    (checks.Flag(), 1, "x must be true or false, got 1"),
    (checks.Choice(("a", "b")), "c", "x must be one of a, b, got 'c'"),
    (checks.Choice(("a", True)), 1, "x must be one of a, true, got 1"),
    (checks.Choice(("a", "b"), style="unknown", label="thing"), "c", "unknown thing 'c'; choose one of a, b"),
    (checks.Maybe(checks.Integer(1)), 0, "x must be a positive integer or null, got 0"),
    (checks.ListOf(checks.Integer(0)), [], "x must be a non-empty list of items"),
    (checks.ListOf(checks.Integer(0)), [1, -1], "x[1] must be an integer >= 0, got -1"),
    (checks.ListOf(checks.Integer(0), unique=True), [1, 1], "(1 is repeated)"),
    (checks.Mapping(), [1], "x must be a mapping"),
    (checks.Name(), "a/b", "x must be a plain name"),
    (checks.Name(), "n" * 201, "x is 201 bytes long"),
    (checks.PathText(), "/tmp/" + "p" * 256, "x has a path component of 256 bytes"),
    (checks.Device(), "gpu9", "invalid x 'gpu9'"),
]


@pytest.mark.parametrize("check,value,expected", CHECK_ROWS, ids=[r[2][:40] for r in CHECK_ROWS])
def test_checks_say_what_they_accept_in_one_line(check, value, expected):
    with pytest.raises(checks.ArgumentError) as exc:
        check("x", value)
    assert expected in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_checks_accept_what_they_declare():
    assert checks.Integer(1)("x", 3) == 3
    assert checks.Real(0.0, 1.0)("x", 1) == 1
    assert checks.Choice(("A", "b"), fold_case=True)("x", "a") == "a"
    assert checks.Maybe(checks.Flag())("x", None) is None
    assert checks.ListOf(checks.Text(), min_len=0)("x", []) == []
    assert checks.Device()("x", "cpu") == "cpu" and checks.Device()("x", "auto") == "auto"
