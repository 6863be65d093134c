# SPDX-License-Identifier: GPL-3.0-or-later
"""Merged form: LyCORIS adapters as ComfyUI weight patches (`ModelPatcher.add_patches`).

ComfyUI computes patched weights lazily (at load, or per forward under low VRAM through `LowVramPatch`), in fp32,
and restores the originals from its backup on unpatch. The patch `strength` is the LyCORIS multiplier.
"""
from __future__ import annotations

import torch
from comfy.weight_adapter.base import WeightAdapterBase

from ..lycoris_core.adapters.base import Adapter


def _undo_function(function, t: torch.Tensor) -> torch.Tensor:
    """Bring a ComfyUI-layout tensor to the file's (diffusers) layout; the row functions used are involutions."""
    return t if function is None else function(t)


def _is_identity(function, like: torch.Tensor) -> bool:
    """True for no row function: None, or ComfyUI's stand-in `lambda a: a` (calculate_weight never passes None)."""
    if function is None:
        return True
    probe = like.new_empty((2, 1))
    try:
        return function(probe) is probe
    except Exception:  # a real row function that needs real rows
        return False


class LycorisWeightAdapter(WeightAdapterBase):
    """A ComfyUI weight adapter computing LyCORIS's merged weight (per-algorithm multiplier semantics).

    `part` is "weight" or "bias": full (`diff_b`) and norm (`b_norm`) adapters also patch the bias key.
    """

    name = "lycoris"

    def __init__(self, adapter: Adapter, part: str = "weight"):
        self.adapter = adapter
        self.part = part
        self.loaded_keys = set()
        self.weights = []

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        """Update `weight` (already narrowed to the slice) in place to the merged weight at multiplier `strength`."""
        adapter = self.adapter.to(device=weight.device, dtype=intermediate_dtype)
        if self.part == "weight" and _is_identity(function, weight) and weight.dtype == intermediate_dtype \
                and hasattr(adapter, "merge_into_"):
            # ComfyUI hands over its own intermediate copy: W += m·ΔW_s in place, no W-sized temporaries
            return adapter.merge_into_(weight, strength)
        work = _undo_function(function, weight.to(intermediate_dtype))
        if self.part == "bias":
            new = adapter.merged_bias(work, strength)
            if new is None:
                return weight
        else:
            new = adapter.merged_weight(work, strength)
        weight.copy_(_undo_function(function, new).to(weight.dtype))
        return weight
