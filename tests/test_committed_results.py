"""The committed results are what the code and configs of this commit would compute.

Every run in ``data/results/<experiment>/`` records the hash of the settings it was made with
(``run_sources`` in its ``provenance.json``).  A changed hyper-parameter in ``configs/`` or a
revised method (``guiding_nc.core.methods``) changes the hash of the runs it touches; this test then
names them, so a stale row can never sit in the book beside fresh ones.  Rerun the experiment with
``--replace`` (see ``data/README.md``) to bring the files up to date.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from guiding_nc.training.config import ConfigError
from guiding_nc.experiments.store import stale_runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "data" / "results"


def experiment_result_dirs() -> list[Path]:
    dirs = []
    for d in sorted(RESULTS.iterdir()) if RESULTS.is_dir() else []:
        p = d / "provenance.json"
        if p.is_file() and json.loads(p.read_text()).get("experiment"):
            dirs.append(d)
    return dirs


DIRS = experiment_result_dirs()


def test_there_are_committed_experiment_results():
    assert DIRS, f"no experiment results under {RESULTS}"


@pytest.mark.parametrize("folder", DIRS, ids=[d.name for d in DIRS])
def test_every_committed_run_matches_todays_settings(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the list below says it all
        stale = stale_runs(folder)
    assert not stale, (
        f"{folder.relative_to(ROOT)}: {len(stale)} run(s) made with other settings than the configs "
        f"ask for now (rerun with --replace): {stale[:6]}"
    )


def test_stale_runs_refuses_a_folder_without_results(tmp_path):
    with pytest.raises(ConfigError, match="no provenance.json"):
        stale_runs(tmp_path)
    (tmp_path / "provenance.json").write_text("{}")
    with pytest.raises(ConfigError, match="names no experiment"):
        stale_runs(tmp_path)


# An absolute path of the machine that wrote a file (its checkout, home, temporary directory).
LOCAL_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|root|tmp|Users|mnt|opt|srv|scratch|var/folders)/")
TEXT_SUFFIXES = {".json", ".csv", ".md", ".ipynb", ".yaml", ".txt", ".jsonl"}


def committed_text_files() -> list[Path]:
    data = ROOT / "data"
    return sorted(p for p in data.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)


def test_no_committed_file_names_a_local_path():
    """Commands, working directories and notebook outputs are recorded relative to the project."""
    found = []
    for path in committed_text_files():
        m = LOCAL_PATH.search(path.read_text(errors="replace"))
        if m:
            text = path.read_text(errors="replace")
            found.append(f"{path.relative_to(ROOT)}: ...{text[max(0, m.start() - 40): m.end() + 30]!r}...")
    assert not found, "absolute local paths in committed files:\n" + "\n".join(found[:10])


# A relative path that climbs out of the repository (a sibling checkout, the temporary directory):
# two or more '..' in a row, or one leading into a directory outside the project's own.
ESCAPING_PATH = re.compile(r"(?<![\w.])(?:\.\./){2,}|(?<![\w./])\.\./(?!(?:data|src|configs|book|runs|tests|scripts)\b)\w")


def test_no_committed_file_names_a_path_that_leaves_the_repository():
    found = []
    for path in committed_text_files():
        text = path.read_text(errors="replace")
        m = ESCAPING_PATH.search(text)
        if m:
            found.append(f"{path.relative_to(ROOT)}: ...{text[max(0, m.start() - 40): m.end() + 30]!r}...")
    assert not found, "relative paths leaving the repository in committed files:\n" + "\n".join(found[:10])
