# SPDX-License-Identifier: GPL-3.0-or-later
"""Browser tier: headless Debian Chromium against the real ComfyUI page (tests/browser/test_browser.py).

Tests here are marked ``browser`` (here) and ``server`` (in the module, so the root conftest's "no ComfyUI" skip
applies); they skip, with the reason, when ComfyUI or Chromium is
missing (``LYCORIS_BROWSER_TESTS=1 scripts/install-host.sh`` installs Chromium on Debian). Screenshots go to
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
    from browser_kit import find_chromium

    reason = None if find_chromium() else (
        "chromium not installed: run `LYCORIS_BROWSER_TESTS=1 scripts/install-host.sh` (Debian: apt-get install "
        "chromium chromium-driver), or set LYCORIS_CHROMIUM to a Chromium binary")
    for item in items:
        if Path(str(item.fspath)).resolve().parent != BROWSER_DIR:
            continue
        item.add_marker(pytest.mark.browser)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    repo = BROWSER_DIR.parents[1]
    path = Path(os.environ.get("LYCORIS_ARTIFACTS_DIR") or repo / "output" / "browser")
    path.mkdir(parents=True, exist_ok=True)
    return path
