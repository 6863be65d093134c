# SPDX-License-Identifier: GPL-3.0-or-later
"""Tier-2 fixtures: ComfyUI imported in-process (CPU), the pack imported the way ComfyUI imports it, twins."""
from __future__ import annotations

import importlib

import pytest

from lyco_testkit import host

_TWINS: dict = {}


@pytest.fixture(scope="session")
def pack():
    """The pack package (imported by path under a unique name, like ComfyUI does), with ComfyUI importable."""
    reason = host.comfyui_unavailable_reason()
    if reason:
        pytest.skip(reason)
    host.import_comfy()
    return host.load_pack()


@pytest.fixture(scope="session")
def binding(pack):
    """`binding("apply")` -> the pack's `lycoris_comfy.apply` module (any binding submodule by name)."""
    return lambda name: importlib.import_module(f"{pack.__name__}.lycoris_comfy.{name}")


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
