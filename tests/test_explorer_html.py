"""The explorer grid (guiding_nc.companions.explorer_grid) and its offline viewer
(guiding_nc.companions.explorer_html): a tiny grid made by the real trainer, its file and provenance, bad
specs refused in one line, an interrupted grid resumed, the viewer's HTML self-contained, and the
viewer driven in headless Chromium (skipped, with the reason, where Chromium is missing)."""
from __future__ import annotations

import base64
import gzip
import html.parser
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from guiding_nc.training.config import ConfigError
from guiding_nc.companions import explorer_grid as eg
from guiding_nc.companions.explorer.projection import projection_frames
from guiding_nc.companions.explorer.runs import run_ufm
from guiding_nc.companions.explorer_grid import load_grid
from guiding_nc.companions.explorer_html import (GRID_ENV, explorer_viewer, grid_description, grid_path,
                                                 viewer_html)
from guiding_nc.core.metric_formulas import cross_entropy_lower_bound

TINY = {
    "steps": 12, "record_every": 4, "snapshots": 6,
    "optimizers": {"agd": {"gain": 1.0}, "sgd": {"lr": 1.0}},
    "defaults": {"C": [3, 4], "d": [6], "n": [3], "method": ["standard", "fixed", "implicit"],
                 "optimizer": ["agd"], "tau": [5.0], "delta": [1e-3], "seed": [0]},
    "blocks": [{"name": "base"},
               {"name": "optimiser", "C": [4], "optimizer": ["sgd"]},
               {"name": "delta", "C": [4], "method": ["implicit"], "delta": [0.1]}],
}


def tiny_spec(**changes) -> eg.GridSpec:
    raw = json.loads(json.dumps(TINY))
    raw.update(changes)
    return eg.GridSpec.from_mapping(raw, source="tiny", quick=False)


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("explorer_grid") / "grid.json.gz"
    eg.generate(tiny_spec(), out, progress=False, allow_dirty=True)
    return out


# --------------------------------------------------------------------------------- the spec
def test_tiny_spec_runs_each_setting_once_and_delta_only_for_the_implicit_method():
    runs = tiny_spec().runs()
    # base: 2 C x 3 methods; optimiser: 3 methods; delta: 1 implicit run
    assert len(runs) == 10
    assert {r["delta"] for r in runs if r["method"] != "implicit"} == {None}
    assert sorted(r["delta"] for r in runs if r["method"] == "implicit" and r["C"] == 4
                  and r["optimizer"] == "agd") == [1e-3, 0.1]
    assert len({eg.run_id(r) for r in runs}) == len(runs)


def test_snapshot_schedule_is_log_spaced_over_recorded_steps():
    steps = eg.snapshot_schedule(300, 30, 10)
    assert steps[0] == 0 and steps[-1] == 300 and steps == sorted(set(steps))
    assert len(steps) == 30
    assert all(s <= 20 or s % 10 == 0 for s in steps)  # only steps the explorer records
    assert eg.snapshot_schedule(5, 30, 10) == [0, 1, 2, 3, 4, 5]


def test_the_shipped_spec_is_a_few_hundred_runs_with_20_to_40_snapshots():
    spec = eg.load_spec()
    assert 200 <= len(spec.runs()) <= 600
    assert 20 <= len(spec.snapshot_steps()) <= 40
    assert set(spec.axes()["method"]) == {"standard", "fixed", "implicit"}
    assert set(spec.axes()["optimizer"]) >= {"agd", "agd10", "adam", "sgd"}
    # AGD at the paper's gain 10 is in the grid, with the sizes and the delta sweep
    assert spec.optimizers["agd10"] == {"optimizer": "agd", "gain": 10.0}
    agd10 = [k for k in spec.runs() if k["optimizer"] == "agd10"]
    assert {k["C"] for k in agd10} == {3, 4, 10} and len({k["delta"] for k in agd10}) >= 4
    quick = eg.load_spec(quick=True)
    assert quick.quick and len(quick.runs()) < 30


@pytest.mark.parametrize("change, words", [
    ({"defaults": {**TINY["defaults"], "d": [3], "C": [4]}}, "d (feature dimension) must be at least C"),
    ({"blocks": [{"name": "x", "colour": ["red"]}]}, "unknown axis 'colour'"),
    ({"blocks": [{"name": "x", "optimizer": ["lbfgs"]}]}, "optimizer 'lbfgs'"),
    ({"optimizers": {"agd": {"gain": 1.0, "momentum": 0.9}}}, "unknown key(s) momentum"),
    ({"snapshots": 1}, "snapshots must be an integer >= 2"),
    ({"blocks": [{"name": "x", "tau": [-1.0]}]}, "tau values must be numbers > 0"),
])
def test_a_bad_spec_is_refused_with_a_one_line_error(change, words):
    with pytest.raises(ConfigError) as info:
        tiny_spec(**change)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_command_line_refuses_a_bad_spec_in_one_line(tmp_path, capsys):
    bad = dict(TINY, defaults={**TINY["defaults"], "N": [10]})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    code = eg.main(["--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "g.json.gz"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "unknown axis 'N'" in err
    assert not (tmp_path / "g.json.gz").exists()


def test_a_full_grid_refuses_a_dirty_tree(tmp_path, monkeypatch):
    monkeypatch.delenv("GUIDING_NC_ALLOW_DIRTY", raising=False)
    monkeypatch.setattr(eg, "git_info", lambda: {"commit": "0" * 40, "dirty": True, "branch": "x"})
    with pytest.raises(ConfigError, match="commit first, or pass --allow-dirty"):
        eg.generate(tiny_spec(), tmp_path / "g.json.gz", progress=False)
    assert not (tmp_path / "g.json.gz").exists()


# --------------------------------------------------------------------------------- the grid file
def test_the_grid_file_holds_every_run_with_its_shapes_and_provenance(tiny_grid):
    grid = load_grid(tiny_grid)
    spec = tiny_spec()
    S = len(spec.snapshot_steps())
    assert grid["format"] == eg.FORMAT and grid["steps"] == spec.snapshot_steps() and 4 <= S <= 6
    assert len(grid["runs"]) == 10 and grid["methods"] == ["standard", "fixed", "implicit"]
    assert grid["delta_methods"] == ["implicit"]
    for r in grid["runs"]:
        C, k = r["C"], r["dims"]
        assert r["status"] == "completed" and r["steps"] == grid["steps"]
        assert k == (3 if C >= 4 else 2) and r["N"] == r["n"] * C
        for key in eg.METRICS:
            assert len(r["metrics"][key]) == S
        assert all(0.0 <= a <= 1.0 for a in r["metrics"]["top1"])
        for name in ("means", "etf", "classifier"):
            assert len(r[name]) == S * C * k and all(isinstance(v, int) for v in r[name])
            assert max(abs(v) for v in r[name]) <= grid["coord_scale"]
        assert len(r["reference"]) == C * k and len(r["captured2"]) == S
        assert len(r["captured3"]) == (S if k == 3 else 0)
        assert r["loss_bound"] == pytest.approx(cross_entropy_lower_bound(C, r["tau"]), rel=1e-3)
    prov = grid["provenance"]
    for key in ("command", "config", "seed", "git", "date", "device", "device_name", "python", "torch", "numpy",
                "wall_time_s", "num_threads"):
        assert key in prov, key
    assert prov["status"] == "completed" and prov["runs_total"] == 10 and prov["num_threads"] == 1
    assert prov["trainer"] == "guiding_nc.companions.explorer.runs.run_ufm" and prov["seed"] == [0]
    assert prov["config"]["steps"] == 12
    assert not Path(str(tiny_grid) + ".partial.jsonl").exists()
    text = grid_description(grid)
    assert "**10 runs** of 12 full-batch steps" in text and "**Made by**" in text


def test_the_stored_frames_are_the_explorers_own_projection(tiny_grid):
    """One run made again with run_ufm and projection_frames gives the stored coordinates."""
    grid = load_grid(tiny_grid)
    spec = tiny_spec()
    r = next(x for x in grid["runs"] if x["C"] == 4 and x["method"] == "implicit" and x["delta"] == 0.1)
    key = {a: r[a] for a in eg.AXES}
    result = run_ufm(spec.settings(key))
    frames = projection_frames(result, 3)
    idx = [list(result.snapshot_steps).index(s) for s in grid["steps"]]
    stored = np.asarray(r["means"]).reshape(len(idx), 4, 3) / grid["coord_scale"]
    np.testing.assert_allclose(stored, frames.means[idx], atol=2e-4)
    np.testing.assert_allclose(stored[:, :, :2], projection_frames(result, 2).means[idx], atol=2e-4)


def test_an_existing_output_is_never_overwritten_and_a_killed_grid_resumes(tmp_path, monkeypatch):
    spec = tiny_spec(defaults={**TINY["defaults"], "C": [3]}, blocks=[{"name": "base"}])  # 3 runs
    out = tmp_path / "grid.json.gz"
    out.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        eg.generate(spec, out, progress=False, allow_dirty=True)
    out.unlink()
    real = eg.record_run
    calls = []

    def dies_on_the_third(spec_, key):
        calls.append(key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(spec_, key)

    monkeypatch.setattr(eg, "record_run", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        eg.generate(spec, out, progress=False, allow_dirty=True)
    assert not out.exists()
    partial = Path(str(out) + ".partial.jsonl")
    assert len(partial.read_text().splitlines()) == 3  # the header and two finished runs
    with open(partial, "a") as fh:  # a line the kill cut short
        fh.write('{"id": "3|6|3|agd|5.0|0.001|0|implic')
    monkeypatch.setattr(eg, "record_run", real)
    grid = eg.generate(spec, out, progress=False, allow_dirty=True)
    assert grid["provenance"]["resumed_runs"] == 2 and len(grid["runs"]) == 3
    assert out.exists() and not partial.exists()
    other = tiny_spec()
    partial.write_text(json.dumps({"format": eg.FORMAT + "-partial", "spec": "something else"}) + "\n")
    with pytest.raises(ConfigError, match="another grid spec"):
        eg.generate(other, out, progress=False, allow_dirty=True, overwrite=True)


def test_load_grid_names_a_file_that_is_not_a_grid(tmp_path):
    (tmp_path / "x.json.gz").write_bytes(gzip.compress(b'{"format": "something"}'))
    with pytest.raises(ValueError, match="not an explorer grid"):
        load_grid(tmp_path / "x.json.gz")
    (tmp_path / "y.json.gz").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(ValueError, match="not a readable explorer grid"):
        load_grid(tmp_path / "y.json.gz")
    with pytest.raises(FileNotFoundError, match="make it with"):
        load_grid(tmp_path / "missing.json.gz")


# --------------------------------------------------------------------------------- the viewer's HTML
class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.scripts = [], {}
        self._in = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href", "data", "action"):
            if attrs.get(name):
                self.refs.append(f"<{tag} {name}={attrs[name]}>")
        if tag == "script":
            self._in = attrs.get("id") or "inline"
            self.scripts[self._in] = ""

    def handle_data(self, data):
        if self._in:
            self.scripts[self._in] += data

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None


def test_viewer_html_is_self_contained_and_embeds_the_grid(tiny_grid):
    grid = load_grid(tiny_grid)
    page = viewer_html(grid, initial={"C": 4})
    parser = _Refs()
    parser.feed(page)
    assert parser.refs == []  # no src, href, ... at all: nothing is fetched
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    assert "<link" not in page and "@import" not in page
    assert not re.search(r"url\(\s*['\"]?(?!#)", page)  # url() only for the SVG clip paths (#id)
    data_id = next(k for k in parser.scripts if k.endswith("-data"))
    embedded = json.loads(gzip.decompress(base64.b64decode(parser.scripts[data_id])))
    assert embedded == grid
    meta = json.loads(parser.scripts[data_id[:-len("-data")] + "-meta"])
    assert meta["initial"] == {"C": 4, "d": 6, "n": 3, "optimizer": "agd", "tau": 5.0, "delta": 1e-3, "seed": 0}
    assert meta["methods"]["implicit"]["label"] == "implicit ETF"
    assert "GNCExplorer.mount" in parser.scripts["inline"] and "DecompressionStream" in page
    assert ".gnc-explorer" in page  # the style is inline too
    ids = re.findall(r'<div class="gnc-explorer" id="([^"]+)"', page + viewer_html(grid))
    assert len(ids) == 2 and ids[0] != ids[1]


def test_viewer_html_refuses_what_is_not_a_grid(tiny_grid):
    with pytest.raises(ValueError, match="needs an explorer grid"):
        viewer_html({"runs": []})
    with pytest.raises(ValueError, match="unknown axis"):
        viewer_html(load_grid(tiny_grid), initial={"colour": 1})


def test_the_page_cell_shows_the_viewer_or_one_line_naming_the_command(tiny_grid, tmp_path, monkeypatch):
    missing = explorer_viewer(tmp_path / "none.json.gz").data
    assert "\n" not in missing and "not there yet" in missing
    assert "python -m guiding_nc.experiments.explorer_grid --out" in missing
    monkeypatch.setenv(GRID_ENV, str(tiny_grid))
    assert grid_path() == tiny_grid
    shown = explorer_viewer(None, initial={"C": 3})
    assert "gnc-explorer" in shown.data
    monkeypatch.delenv(GRID_ENV)
    assert grid_path().as_posix().endswith("data/explorer/grid.json.gz")


# --------------------------------------------------------------------------------- in the browser
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        _unavailable(f"{' and '.join(missing)} not found: install the Debian packages chromium and chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # pragma: no cover - selenium is in the test extra
        _unavailable("selenium is not installed (pip install -e .[test])")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--window-size=900,1500", "--host-resolver-rules=MAP * ~NOTFOUND"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition_js: str, timeout: float = 10.0):
    end = time.time() + timeout
    while time.time() < end:
        if driver.execute_script(condition_js):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {condition_js}")


READ_STATE = """
const root = document.querySelector('.gnc-explorer');
const note = root.querySelector('.gnc-note');
return {state: JSON.parse(root.getAttribute('data-state')),
        panels: [...root.querySelectorAll('.gnc-panel')].map((s) => s.innerHTML),
        charts: root.querySelector('.gnc-charts').innerHTML,
        readout: root.querySelector('.gnc-readout').innerText,
        note: note && note.style.display !== 'none' ? note.innerText : ''};
"""

# Text smaller than 9 CSS px anywhere in the viewer, SVGs drawn scaled, content wider than the column.
LEGIBILITY = """
const root = document.querySelector('.gnc-explorer');
const small = [];
root.querySelectorAll('*').forEach((el) => {
  const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (own && parseFloat(getComputedStyle(el).fontSize) < 9) { small.push(el.textContent.slice(0, 40)); }
});
const scaled = [...root.querySelectorAll('svg')].filter((s) =>
  Math.abs(s.getBoundingClientRect().width - s.width.baseVal.value) > 0.5).length;
return {small: small, scaled: scaled, overflow: root.scrollWidth - root.clientWidth,
        svgs: root.querySelectorAll('svg').length,
        remote: performance.getEntriesByType('resource').map((e) => e.name).filter((u) => !u.startsWith('file:'))};
"""


@pytest.mark.browser
def test_the_viewer_moves_with_its_controls_in_headless_chromium(tiny_grid, browser, tmp_path_factory):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    shots = tmp_path_factory.mktemp("explorer_screenshots")
    page = tmp_path_factory.mktemp("explorer_page") / "viewer.html"
    # The book's text column is 784 px wide.
    page.write_text("<!doctype html><html><head><meta charset='utf-8'><title>explorer</title></head>"
                    "<body style='margin:0;padding:16px'><div style='width:784px'>"
                    + viewer_html(load_grid(tiny_grid), initial={"C": 3}) + "</div></body></html>")
    browser.get(page.as_uri())
    _wait(browser, "return document.querySelectorAll('.gnc-explorer .gnc-panel').length === 3")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    browser.save_screenshot(str(shots / "1_initial.png"))
    first = browser.execute_script(READ_STATE)
    assert first["state"]["sel"]["C"] == 3 and first["state"]["step"] == 12
    assert "at step 12" in first["readout"] and first["note"] == ""
    look = browser.execute_script(LEGIBILITY)
    assert look["small"] == [] and look["scaled"] == 0 and look["overflow"] <= 0 and look["svgs"] == 9
    assert look["remote"] == []

    root = browser.find_element(By.CSS_SELECTOR, ".gnc-explorer")
    select = lambda axis: Select(root.find_element(By.CSS_SELECTOR, f'select[data-axis="{axis}"]'))

    # C: 3 -> 4 changes the picture (more classes) and the numbers
    select("C").select_by_value("4")
    second = browser.execute_script(READ_STATE)
    assert second["state"]["sel"]["C"] == 4
    assert second["panels"] != first["panels"] and second["readout"] != first["readout"]
    assert second["panels"][0].count("<circle") > first["panels"][0].count("<circle")

    # the step slider: back to step 0
    slider = root.find_element(By.CSS_SELECTOR, "input.gnc-step")
    slider.send_keys(Keys.HOME)
    third = browser.execute_script(READ_STATE)
    assert third["state"]["step"] == 0 and "at step 0" in third["readout"]
    assert third["panels"] != second["panels"] and third["charts"] != second["charts"]
    browser.save_screenshot(str(shots / "2_C4_step0.png"))
    slider.send_keys(Keys.END)

    # delta: only the implicit panel changes (the other methods do not read delta)
    select("delta").select_by_value("0.1")
    fourth = browser.execute_script(READ_STATE)
    assert fourth["state"]["sel"]["delta"] == 0.1
    rows = lambda state: {line.split("\t")[0]: line for line in state["readout"].splitlines()[1:]}
    assert fourth["panels"][2] != second["panels"][2]
    assert rows(fourth)["standard"] == rows(second)["standard"]
    assert rows(fourth)["fixed ETF"] == rows(second)["fixed ETF"]
    assert rows(fourth)["implicit ETF"] != rows(second)["implicit ETF"]

    # sgd is in the grid only with delta 1e-3: the viewer says so in one line and shows that
    select("optimizer").select_by_value("sgd")
    fifth = browser.execute_script(READ_STATE)
    assert fifth["state"]["sel"]["optimizer"] == "sgd" and fifth["state"]["sel"]["delta"] == 0.001
    assert fifth["note"].startswith("Not in the grid") and "\n" not in fifth["note"]
    assert fifth["readout"] != fourth["readout"]

    # 3-D, and a drag turns it
    Select(root.find_element(By.CSS_SELECTOR, "select[data-view]")).select_by_value("3d")
    sixth = browser.execute_script(READ_STATE)
    assert sixth["state"]["view"] == "3d" and sixth["panels"] != fifth["panels"]
    panel = root.find_elements(By.CSS_SELECTOR, ".gnc-panel")[1]
    ActionChains(browser).move_to_element(panel).click_and_hold().move_by_offset(60, 20).release().perform()
    turned = browser.execute_script(READ_STATE)
    assert turned["panels"] != sixth["panels"]
    browser.save_screenshot(str(shots / "3_sgd_3d.png"))

    # play runs through the snapshots from the start; pause stops it
    play = root.find_element(By.CSS_SELECTOR, "button.gnc-play")
    play.click()
    _wait(browser, "return JSON.parse(document.querySelector('.gnc-explorer').getAttribute('data-state')).step > 0"
                   " && document.querySelector('.gnc-play').textContent.includes('pause')")
    play.click()
    assert "play" in play.text

    # back to C = 3: no 3-D view for a triangle, said in the note
    select("C").select_by_value("3")
    last = browser.execute_script(READ_STATE)
    assert last["state"]["view"] == "2d" and "3-D needs C" in last["note"]
    look = browser.execute_script(LEGIBILITY)
    assert look["small"] == [] and look["overflow"] <= 0
    assert sorted(p.name for p in shots.iterdir()) == ["1_initial.png", "2_C4_step0.png", "3_sgd_3d.png"]


@pytest.fixture(scope="module")
def diverging_grid(tmp_path_factory):
    """Three runs whose SGD learning rate makes the features blow up within a few steps."""
    out = tmp_path_factory.mktemp("explorer_grid_diverging") / "grid.json.gz"
    spec = tiny_spec(optimizers={"sgd": {"lr": 1e6}},  # the largest learning rate a config takes
                     defaults={**TINY["defaults"], "C": [3], "optimizer": ["sgd"]}, blocks=[{"name": "base"}])
    eg.generate(spec, out, progress=False, allow_dirty=True)
    return out


def test_a_diverging_run_keeps_the_snapshots_it_reached(diverging_grid):
    grid = load_grid(diverging_grid)
    assert grid["provenance"]["runs_diverged"] + grid["provenance"]["runs_failed"] >= 1
    bad = [r for r in grid["runs"] if r["status"] != "completed"]
    assert bad and all(r["status"].startswith("diverged: ") for r in bad)
    for r in bad:
        S, k = len(r["steps"]), r["dims"]
        assert r["steps"] == grid["steps"][:S] and S < len(grid["steps"])
        assert len(r["means"]) == S * r["C"] * k and len(r["metrics"]["loss"]) == S
    assert "diverged" in grid_description(grid)


@pytest.mark.browser
def test_the_viewer_marks_a_diverged_run(diverging_grid, browser, tmp_path_factory):
    page = tmp_path_factory.mktemp("explorer_page_diverging") / "viewer.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'><title>explorer</title></head>"
                    "<body><div style='width:784px'>" + viewer_html(load_grid(diverging_grid)) + "</div></body></html>")
    browser.get(page.as_uri())
    _wait(browser, "return document.querySelectorAll('.gnc-explorer .gnc-panel').length === 3")
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    state = browser.execute_script(READ_STATE)
    assert any("diverged after step" in p for p in state["panels"])
    assert "diverged after step" in state["readout"]
    browser.save_screenshot(str(tmp_path_factory.mktemp("explorer_screenshots_diverging") / "diverged.png"))


def test_the_delta_note_says_how_much_delta_moves_the_implicit_runs(tiny_grid):
    from guiding_nc.companions.explorer_html import delta_effect

    note = delta_effect(load_grid(tiny_grid))
    assert note.startswith("From δ = 10⁻³ to 10⁻¹ the implicit runs' final numbers change at most")
    assert "agd (gain 1): loss by" in note and "NC3 by" in note and note.endswith("The other methods do not use δ.")
    meta = re.search(r'-meta">(.*?)</script>', viewer_html(load_grid(tiny_grid))).group(1)
    assert json.loads(meta)["hints"]["delta"] == note and json.loads(meta)["max_3d"] == 6


# A phone: the controls, the step slider, the panels and the numbers at that step, in that order,
# within the first screen; no number wraps and nothing is cut off.
PHONE = """
const root = document.querySelector('.gnc-explorer');
const top = (s) => root.querySelector(s).getBoundingClientRect().top - root.getBoundingClientRect().top;
const readout = root.querySelector('.gnc-readout');
const wrapped = [...readout.querySelectorAll('td, th')].filter((c) => {
  const lh = parseFloat(getComputedStyle(c).lineHeight) || 1.35 * parseFloat(getComputedStyle(c).fontSize);
  return c.getBoundingClientRect().height > 1.9 * lh + 8;
}).map((c) => c.innerText);
return {controls: top('.gnc-controls'), step: top('.gnc-steprow'), panels: top('.gnc-panels'),
        readout: top('.gnc-readout'), charts: top('.gnc-charts'), width: root.clientWidth,
        readoutCut: readout.scrollWidth - readout.clientWidth, overflow: root.scrollWidth - root.clientWidth,
        wrapped: wrapped, narrow: !!readout.querySelector('table.gnc-narrow'),
        hint: (root.querySelector('.gnc-hint') || {}).innerText || ''};
"""


@pytest.mark.browser
def test_the_viewer_fits_a_phone(tiny_grid, browser, tmp_path_factory):
    page = tmp_path_factory.mktemp("explorer_page_phone") / "viewer.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'>"
                    "<meta name='viewport' content='width=device-width, initial-scale=1'><title>explorer</title>"
                    "</head><body style='margin:0;padding:8px'>" + viewer_html(load_grid(tiny_grid), initial={"C": 4})
                    + "</body></html>")
    size = browser.get_window_size()
    try:
        browser.set_window_size(390, 844)
        browser.get(page.as_uri())
        _wait(browser, "return document.querySelectorAll('.gnc-explorer .gnc-panel').length === 3")
        look = browser.execute_script(PHONE)
        browser.save_screenshot(str(tmp_path_factory.mktemp("explorer_screenshots_phone") / "phone.png"))
    finally:
        browser.set_window_size(size["width"], size["height"])
    assert look["width"] <= 390
    assert look["controls"] < look["step"] < look["panels"] < look["readout"] < look["charts"]
    assert look["panels"] < 260, look  # the panels start within the first screen, not 500 px down
    assert look["narrow"] and look["readoutCut"] <= 0 and look["overflow"] <= 0 and look["wrapped"] == []
    assert look["hint"].startswith("δ: From δ")


@pytest.mark.browser
def test_3d_is_offered_only_up_to_the_largest_legible_C(tiny_grid, browser, tmp_path_factory, monkeypatch):
    from selenium.webdriver.common.by import By

    import guiding_nc.companions.explorer_html as eh

    monkeypatch.setattr(eh, "MAX_3D_CLASSES", 3)  # the tiny grid has C = 3 and 4: pretend 4 is too many
    page = tmp_path_factory.mktemp("explorer_page_3d") / "viewer.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'><title>explorer</title></head><body>"
                    "<div style='width:784px'>" + eh.viewer_html(load_grid(tiny_grid), initial={"C": 4})
                    + "</div></body></html>")
    browser.get(page.as_uri())
    _wait(browser, "return document.querySelectorAll('.gnc-explorer .gnc-panel').length === 3")
    root = browser.find_element(By.CSS_SELECTOR, ".gnc-explorer")
    option = root.find_element(By.CSS_SELECTOR, 'select[data-view] option[value="3d"]')
    assert option.get_attribute("disabled") and "C ≤ 3 only" in option.text
    assert browser.execute_script(READ_STATE)["state"]["view"] == "2d"
