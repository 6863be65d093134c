# SPDX-License-Identifier: GPL-3.0-or-later
"""T-LoRA schedule: the reference §4.1 tables (which match lycoris-lora's code; SimpleTuner's T_LORA.md alpha=2
and alpha=0.5 tables do not), fill_mask_ == active_rank, and config parsing."""
from __future__ import annotations

import pytest
import torch

from lycoris_core.tlora_schedule import active_rank, fill_mask_, tlora_params_from_config

TABLE = {  # R = 64, R_min = 1
    1.0: {0: 64, 250: 48, 500: 32, 750: 16, 999: 1, 1000: 1},
    2.0: {0: 64, 250: 36, 500: 16, 750: 4, 999: 1, 1000: 1},
    0.5: {0: 64, 250: 55, 500: 45, 750: 32, 999: 2, 1000: 1},
}


@pytest.mark.parametrize("alpha", sorted(TABLE))
def test_reference_table(alpha):
    for t, r in TABLE[alpha].items():
        assert active_rank(t, 64, 1, alpha) == r, (alpha, t)


def test_simpletuner_doc_table_is_wrong():
    # T_LORA.md claims alpha=2.0 -> 60/48/20 and alpha=0.5 -> 55/46/33/1 at t=250/500/750(/999): the code says no.
    assert [active_rank(t, 64, 1, 2.0) for t in (250, 500, 750)] != [60, 48, 20]
    assert [active_rank(t, 64, 1, 0.5) for t in (250, 500, 750, 999)] != [55, 46, 33, 1]


def test_flux_sigma_vector():
    # R = 8, R_min = 1, alpha 1, t = int(1000·sigma) as SimpleTuner's pipelines pass it.
    assert [active_rank(int(1000 * s), 8) for s in (1.0, 0.9045, 0.7595, 0.5128)] == [1, 1, 2, 4]


def test_matches_lycoris_compute_timestep_mask():
    from lycoris.modules.tlora import compute_timestep_mask
    for alpha in (0.5, 1.0, 1.7, 2.0):
        for t in range(0, 1001, 37):
            assert active_rank(t, 16, 3, alpha) == int(compute_timestep_mask(t, 1000, 16, 3, alpha).sum())


def test_clamps():
    assert active_rank(-5, 8) == 8
    assert active_rank(1200, 8, 2) == 2
    assert active_rank(0, 8, 10) == 8  # min_rank > max_rank: clamped to R


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.5, 1.3])
def test_fill_mask_equals_active_rank(alpha):
    mask = torch.empty(64)
    ptr = mask.data_ptr()
    for t in [0, 1, 250, 333.3, 500, 700, 750, 998.9, 999, 1000] + list(range(3, 1000, 41)):
        out = fill_mask_(mask, torch.tensor(float(t)), 64, 1, alpha)
        r = active_rank(t, 64, 1, alpha)
        assert out is mask and mask.data_ptr() == ptr
        assert torch.equal(mask, (torch.arange(64) < r).float()), (alpha, t)


def test_fill_mask_never_reads_t_on_host():
    from core_parity import no_host
    mask = torch.zeros(16)
    fill_mask_(mask, no_host(437.0), 16, 2, 1.5)
    assert mask.as_subclass(torch.Tensor).sum() == active_rank(437.0, 16, 2, 1.5)


def test_fill_mask_dtypes_and_batch():
    m16 = torch.zeros(8, dtype=torch.bfloat16)
    fill_mask_(m16, torch.tensor(500, dtype=torch.int64), 8)
    assert m16.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # floor(0.5·7)+1 = 4
    one = torch.zeros(8)
    fill_mask_(one, torch.tensor([250.0]), 8)
    assert one.sum().item() == active_rank(250, 8)
    batch = torch.zeros(3, 8)
    fill_mask_(batch, torch.tensor([0.0, 500.0, 1000.0]), 8)
    assert batch.sum(1).tolist() == [8, 4, 1]


def test_params_from_config():
    p = tlora_params_from_config({"linear_dim": 64, "tlora_min_rank": 32, "tlora_alpha": 2})
    assert (p["max_rank"], p["min_rank"], p["alpha"]) == (64, 32, 2.0)
    assert p["source"]["min_rank"] == "lycoris_config.tlora_min_rank"
    d = tlora_params_from_config(None)
    assert (d["max_rank"], d["min_rank"], d["alpha"]) == (None, 1, 1.0)
    assert "default" in d["source"]["min_rank"] and "unknown" in d["source"]["max_rank"]
    f = tlora_params_from_config({"algo": "tlora"}, module_ranks=[8, 16, None])
    assert f["max_rank"] == 16 and "largest module rank" in f["source"]["max_rank"]
