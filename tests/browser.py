"""Headless Chromium for the page tests: where it is, how it is started, and why the
tests skip when it cannot be. The ``browser`` fixture in conftest.py launches it;
make_screenshots.py (a script, async) launches it with the same path and flags."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def missing() -> str | None:
    """Why no browser test can run on this machine (what to install), or None."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed: pip install playwright"
    if not CHROMIUM.exists():
        return "no /usr/bin/chromium: apt-get install -y chromium"
    return None


# For a module whose every test needs the browser: skip before building anything else.
needs_browser = pytest.mark.skipif(missing() is not None, reason=missing() or "")
