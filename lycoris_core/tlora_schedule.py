# SPDX-License-Identifier: GPL-3.0-or-later
"""SimpleTuner's T-LoRA rank schedule (reference §4.1, `lycoris/modules/tlora.py:compute_timestep_mask`).

r_active = min(floor(((T − t)/T)^α · (R − R_min)) + R_min, R); the mask turns on the first r_active ranks.
SimpleTuner passes t = int(scheduler timestep) (1000·σ for flow models, the discrete index otherwise) and T = 1000.
Here t is clamped to [0, T] (t > T would give a negative or complex base; t < 0 gives R either way).
"""
from __future__ import annotations

import torch

#: SimpleTuner defaults (`trainer.py:3390-3412`): tlora_min_rank 1, tlora_alpha 1.0, linear_dim 4.
DEFAULT_MIN_RANK = 1
DEFAULT_ALPHA = 1.0


def active_rank(t: float, max_rank: int, min_rank: int = 1, alpha: float = 1.0, max_timestep: int = 1000) -> int:
    """Number of active ranks (int in [min(R_min, R), R]) at timestep t (same units as max_timestep)."""
    t = min(max(float(t), 0.0), float(max_timestep))
    r = int(((max_timestep - t) / max_timestep) ** alpha * (max_rank - min_rank)) + min_rank
    return min(r, max_rank)


def fill_mask_(mask: torch.Tensor, t: torch.Tensor, max_rank: int, min_rank: int = 1, alpha: float = 1.0,
               max_timestep: int = 1000) -> torch.Tensor:
    """Write the rank mask for timestep(s) `t` into `mask` in place and return it.

    mask: (R,) float, normally R = max_rank (t 0-d or one element), or (B, R) with t of B elements (one row per
    sample); positions past max_rank stay off. Tensor ops only: no `.item()`, no host sync, only small
    temporaries; the arithmetic is float64 (float32 on MPS) so it matches `active_rank`'s python floats.
    """
    dt = torch.float64 if mask.device.type not in ("mps",) else torch.float32
    tt = t.to(device=mask.device, dtype=dt).clamp(0, max_timestep)
    r = torch.floor(((max_timestep - tt) / max_timestep) ** alpha * (max_rank - min_rank)) + min_rank
    r = r.clamp(max=max_rank)
    idx = torch.arange(mask.shape[-1], device=mask.device, dtype=dt)
    if mask.dim() == 1:
        on = idx < r.reshape(())
    else:
        on = idx < r.reshape(-1, 1)
    mask.copy_(on)
    return mask


def tlora_params_from_config(config: dict | None, module_ranks=None) -> dict:
    """{"min_rank", "alpha", "max_rank", "source": {name: where it came from}} for the T-LoRA schedule.

    Read like SimpleTuner (`tlora_min_rank` int, default 1; `tlora_alpha` float, default 1.0; max_rank =
    `linear_dim`). Final SimpleTuner files delete these keys from the saved config (reference §1.4), so when
    `linear_dim` is absent max_rank falls back to max(module_ranks) if given, else None (the caller decides).
    """
    config = config or {}
    out: dict = {"source": {}}

    def _pick(name, key, conv, default, default_note):
        value = config.get(key)
        if value is not None:
            try:
                out[name] = conv(value)
                out["source"][name] = f"lycoris_config.{key}"
                return
            except (TypeError, ValueError):
                pass
        out[name] = default
        out["source"][name] = default_note

    _pick("min_rank", "tlora_min_rank", lambda v: int(float(v)), DEFAULT_MIN_RANK, "default (SimpleTuner)")
    _pick("alpha", "tlora_alpha", float, DEFAULT_ALPHA, "default (SimpleTuner)")
    ranks = [int(r) for r in (module_ranks or []) if r]
    _pick("max_rank", "linear_dim", lambda v: int(float(v)), max(ranks) if ranks else None,
         "largest module rank in the file" if ranks else "unknown (not in config)")
    return out


__all__ = ["active_rank", "fill_mask_", "tlora_params_from_config", "DEFAULT_MIN_RANK", "DEFAULT_ALPHA"]
