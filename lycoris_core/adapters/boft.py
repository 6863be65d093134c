# SPDX-License-Identifier: GPL-3.0-or-later
"""BOFT: butterfly orthogonal transform of the output rows (reference §3.2, `functional/boft.py`).

Stage i (k = 2^i·b/2): permute rows (view (−1, 2, k), swap the last two), left-multiply each block of b rows by
B_i = m·R_i + (1 − m)·I (R·W, not Rᵀ·W), undo the permutation; finally rows ⊙ `rescale` (not interpolated).
Bypass applies the same to y − b on the channel axis and adds b back (4.1.3 rotates the bias too, §6.1.4).
"""
from __future__ import annotations

import torch

from ..layer import LayerSpec
from .base import Multiplier, layer_bias
from .oft_common import OFTBase, channels_back, channels_last


class BOFTAdapter(OFTBase):
    """BOFT module: `oft_blocks` (stages, n, b, b)."""

    algo = "boft"

    def _check_blocks(self, b):
        if b.dim() != 4 or b.shape[2] != b.shape[3] or b.shape[2] % 2:
            raise self.format_error("oft_blocks", f"shape {tuple(b.shape)} is not (stages, n, b, b) with even b")
        self.rank = b.shape[2]

    @property
    def out_features(self) -> int:
        b = self.tensors["oft_blocks"]
        return b.shape[1] * b.shape[2]

    def _stages(self, like: torch.Tensor, multiplier: Multiplier) -> torch.Tensor:
        r = self.rotation(like)
        eye = torch.eye(r.shape[-1], device=r.device, dtype=r.dtype)
        return multiplier * r + (1 - multiplier) * eye

    def merged_weight(self, weight: torch.Tensor, multiplier: Multiplier) -> torch.Tensor:
        """rescale ⊙ butterfly(W) on the rows."""
        stages = self._stages(weight, multiplier)
        b = stages.shape[-1]
        h = weight
        for i in range(stages.shape[0]):
            k = 2 ** i * (b // 2)
            h = h.unflatten(0, (-1, 2, k)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, b))
            h = torch.einsum("nij,nj...->ni...", stages[i], h)
            h = h.flatten(0, 1).unflatten(0, (-1, k, 2)).transpose(1, 2).flatten(0, 2)
        rescale = self.rescale_vec(weight)
        if rescale is not None:
            h = h * rescale.reshape(-1, *([1] * (weight.dim() - 1)))
        return h

    def bypass(self, x: torch.Tensor, y: torch.Tensor, multiplier: Multiplier, layer: LayerSpec) -> torch.Tensor:
        """rescale ⊙ butterfly(y − b) + b on the channel axis."""
        stages = self._stages(y, multiplier)
        b = stages.shape[-1]
        bias = layer_bias(layer, y)
        h = channels_last(y, layer)
        if bias is not None:
            h = h - bias
        for i in range(stages.shape[0]):
            k = 2 ** i * (b // 2)
            h = h.unflatten(-1, (-1, 2, k)).transpose(-2, -1).flatten(-3).unflatten(-1, (-1, b))
            h = torch.einsum("nij,...nj->...ni", stages[i], h)
            h = h.flatten(-2).unflatten(-1, (-1, k, 2)).transpose(-2, -1).flatten(-3)
        rescale = self.rescale_vec(y)
        if rescale is not None:
            h = h * rescale
        if bias is not None:
            h = h + bias
        return channels_back(h, layer)
