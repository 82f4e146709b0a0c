"""Shared pytest configuration."""


def pytest_configure(config):
    # pyproject.toml runs with --strict-markers; the browser test carries this marker.
    config.addinivalue_line("markers", "browser: opens the built book in headless Chromium")
    config.addinivalue_line("markers", "cuda: needs a CUDA device, skipped without one (`pytest -m cuda` runs only these)")


def in_git_checkout() -> bool:
    """Whether the tests run from a git checkout (a source tarball has no commit to record)."""
    import subprocess
    from pathlib import Path

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=10)
    except OSError:
        return False
    return out.returncode == 0


def pytest_sessionstart(session):
    # Full-mode runs refuse a working tree whose code differs from its commit; the suite's runs
    # write to temporary directories, and a developer runs it before committing.
    import os

    os.environ.setdefault("GUIDING_NC_ALLOW_DIRTY", "1")


import pytest  # noqa: E402


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


#: Marks a test that runs only on CUDA: selected by ``-m cuda``, skipped with the reason elsewhere.
requires_cuda = [pytest.mark.cuda, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")]


def device_params():
    """``pytest.mark.parametrize("device", device_params())``: the CPU always, CUDA marked ``cuda``
    (skipped with the reason where there is none)."""
    return [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=requires_cuda)]


@pytest.fixture(autouse=True)
def _every_figure_reads_at_the_book_column_width(request, monkeypatch):
    """In the plotting tests, every figure made must keep its text at 9 px or more at the book's
    column width (guiding_nc.companions.plotting.style)."""
    if not request.module.__name__.split(".")[-1].startswith(("test_plotting", "test_explorer")):
        yield
        return
    from matplotlib.figure import Figure

    from guiding_nc.companions.plotting.style import legibility_problems

    made = []
    original = Figure.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Figure, "__init__", recording_init)
    yield
    problems = {}
    for fig in made:
        if fig.axes:
            bad = legibility_problems(fig)
            if bad:
                problems[f"figure {fig.get_figwidth():.1f}x{fig.get_figheight():.1f} in"] = bad[:5]
    assert not problems, problems
