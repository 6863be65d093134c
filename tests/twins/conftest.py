# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for the twin-model tests: one twin per family per session (they are deterministic and read-only:
LyCORIS files are made on deep copies), skipped with the reason when ComfyUI, diffusers or lycoris is missing."""
from __future__ import annotations

import pytest

from lyco_testkit import host

_TWINS: dict = {}


def require_host():
    reason = host.comfyui_unavailable_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("lycoris")


@pytest.fixture(scope="session")
def get_twin():
    """``get_twin(family, seed=0) -> Twin`` (cached for the session)."""
    require_host()
    from lyco_testkit import twins

    def get(family: str, seed: int = 0):
        key = (family, seed)
        if key not in _TWINS:
            _TWINS[key] = twins.build_twin(family, seed)
        return _TWINS[key]

    yield get
    _release_models()


def _release_models():
    """Drop the twins and ComfyUI's loaded-model list while the interpreter is still whole: ModelPatcher.__del__
    at interpreter shutdown otherwise prints 'NoneType has no attribute ON_DETACH' tracebacks."""
    import gc
    import sys

    _TWINS.clear()
    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
        mm.current_loaded_models.clear()
    twins = sys.modules.get("lyco_testkit.twins")
    if twins is not None:
        twins._cached_comfy_sd.cache_clear()
    gc.collect()
