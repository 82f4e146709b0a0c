"""Shared pytest configuration."""


def pytest_configure(config):
    # pyproject.toml runs with --strict-markers; the browser test carries this marker.
    config.addinivalue_line("markers", "browser: opens the built book in headless Chromium")
