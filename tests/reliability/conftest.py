# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the reliability tier: the pack in-process (like tests/binding), the bad-input catalogue written
once per session, tiny flux2 patchers, and the state hash that proves a model was not modified.

In-process modules mark themselves ``binding``, HTTP modules ``server`` (both are skipped without ComfyUI).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from lyco_testkit import host


@pytest.fixture(scope="session")
def rel_sources(tmp_path_factory):
    """Good LoCon/LoKr files on the flux2 twin (and an sd15 LoCon) as tensors, made by lycoris-lora."""
    if host.comfyui_unavailable_reason():
        pytest.skip(host.comfyui_unavailable_reason())
    pytest.importorskip("diffusers")
    pytest.importorskip("lycoris")
    import rel_catalogue

    return rel_catalogue.build_sources(tmp_path_factory.mktemp("rel_sources"))


@dataclass
class Catalogue:
    folder: Path
    cases: dict
    good: dict  # "locon"/"lokr" -> file name in folder


@pytest.fixture(scope="session")
def rel_catalogue_dir(rel_sources, tmp_path_factory) -> Catalogue:
    """Every catalogue case written into one temp folder (a stand-in for models/loras)."""
    import rel_catalogue

    folder = tmp_path_factory.mktemp("rel_loras")
    cases = rel_catalogue.build_catalogue(folder, rel_sources)
    good = rel_catalogue.good_files(folder, rel_sources)
    return Catalogue(folder, {c.id: c for c in cases}, good)


@pytest.fixture
def flux2_patcher(pack):
    """A fresh ModelPatcher of the tiny flux2 twin (its own model object; weights cached per process)."""
    pytest.importorskip("diffusers")
    from lyco_testkit import twins

    return twins.build_comfy_twin("flux2", 0)
