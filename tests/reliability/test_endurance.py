# SPDX-License-Identifier: GPL-3.0-or-later
"""Endurance, short: alternating API prompts on the shared server (merged, bypass, T-LoRA + wrapper, stacks,
strength node, bare model), every output equal to the same prompt run fresh, RSS growth after the warm-up cycle
under 5%. ``LYCO_ENDURANCE_N`` sets the prompt count (default 14 = 2 cycles, RSS compared across the second);
``bench/endurance.py`` runs 200."""
from __future__ import annotations

import json
import os

import pytest

import rel_catalogue
from rel_endurance import configs, run_endurance

pytestmark = pytest.mark.server

N = int(os.environ.get("LYCO_ENDURANCE_N", "0") or 0)
MAX_GROWTH = 0.05


def test_endurance_alternating_prompts(comfy_server, rel_sources):
    good = rel_catalogue.good_files(comfy_server.models_dir / "loras", rel_sources)
    n = N or 2 * len(configs(good))
    res = run_endurance(comfy_server, good, n, size=16)
    print("\nendurance:", json.dumps(res.summary()))
    assert not res.mismatches, f"stale state: outputs differ from fresh runs: {res.mismatches[:5]}"
    assert res.growth < MAX_GROWTH, (f"RSS grew {100 * res.growth:.1f}% after warm-up "
                                     f"({res.rss_warm / 2**20:.0f} -> {res.rss_end / 2**20:.0f} MiB)")
    assert comfy_server.alive()
