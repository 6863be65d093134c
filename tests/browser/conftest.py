# SPDX-License-Identifier: GPL-3.0-or-later
"""Browser tier: headless Debian Chromium against the real ComfyUI page (tests/browser/test_browser.py).

Tests here are marked ``browser`` (here) and ``server`` (in the module, so the root conftest's "no ComfyUI" skip
applies); they skip, with the reason, when ComfyUI or Chromium is
missing (``LYCORIS_BROWSER_TESTS=1 scripts/install-host.sh`` installs Chromium on Debian), except that with
``LYCORIS_BROWSER_TESTS=1`` (CI) a missing Chromium fails them. Screenshots go to
``output/browser/`` (git-ignored; env ``LYCORIS_ARTIFACTS_DIR`` overrides).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

BROWSER_DIR = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives headless Chromium against a real ComfyUI page")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).resolve().parent == BROWSER_DIR:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session", autouse=True)
def _chromium_present():
    """Skip (with the reason) without Chromium; with LYCORIS_BROWSER_TESTS=1 (CI, .ci/run) fail instead."""
    from browser_kit import find_chromium

    if find_chromium():
        return
    reason = ("chromium not installed: run `scripts/install-host.sh --browser` (Debian: apt-get install chromium "
              "chromium-driver), or set LYCORIS_CHROMIUM to a Chromium binary")
    if os.environ.get("LYCORIS_BROWSER_TESTS") == "1":
        pytest.fail(f"LYCORIS_BROWSER_TESTS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    repo = BROWSER_DIR.parents[1]
    path = Path(os.environ.get("LYCORIS_ARTIFACTS_DIR") or repo / "output" / "browser")
    path.mkdir(parents=True, exist_ok=True)
    return path
