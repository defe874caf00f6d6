"""Headless Chromium for the browser tests and `make screenshots`: Debian's package, driven by
Playwright (its own browser download is not used: `executable_path` points at the system's)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Flags that work in a container without a display, a GPU or a network beyond loopback.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """``ATP_CHROMIUM``, else Debian's ``chromium`` (``make browser`` installs it)."""
    configured = os.environ.get("ATP_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def why_no_browser() -> str | None:
    """None when a browser can be driven here, else why not (the tests skip saying so)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (`pip install -e .[dev]`)"
    if chromium_path() is None:
        return (
            "no Chromium on this machine: `make browser` installs Debian's `chromium` "
            "(as root), or set ATP_CHROMIUM to a Chromium binary"
        )
    return None


@contextmanager
def chromium(**context_options: Any) -> Iterator[Any]:
    """A browser context (Playwright, sync API) with a fresh profile, closed afterwards."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    assert path is not None, why_no_browser()
    with (
        tempfile.TemporaryDirectory(prefix="atp-chromium-") as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=path, headless=True, args=CHROMIUM_FLAGS, **context_options
        )
        try:
            yield context
        finally:
            context.close()
