# SPDX-License-Identifier: GPL-3.0-or-later
"""Tier-2 fixtures: twins (the `pack` and `binding` fixtures are in tests/conftest.py)."""
from __future__ import annotations

import pytest

_TWINS: dict = {}


@pytest.fixture(scope="session")
def get_twin(pack):
    """`get_twin(family, seed=0) -> Twin`, cached for the session (twins are read-only; use fresh patchers)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("lycoris")
    from lyco_testkit import twins

    def get(family: str, seed: int = 0):
        if (family, seed) not in _TWINS:
            _TWINS[(family, seed)] = twins.build_twin(family, seed)
        return _TWINS[(family, seed)]

    return get


def pytest_sessionfinish(session, exitstatus):
    """Free ModelPatchers while ComfyUI's modules are alive (their __del__ fails noisily at interpreter exit)."""
    import gc

    _TWINS.clear()
    gc.collect()
