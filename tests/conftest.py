"""Shared pytest configuration."""


def pytest_configure(config):
    # pyproject.toml runs with --strict-markers; the browser test carries this marker.
    config.addinivalue_line("markers", "browser: opens the built book in headless Chromium")


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

