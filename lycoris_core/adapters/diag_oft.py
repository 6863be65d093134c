# SPDX-License-Identifier: GPL-3.0-or-later
"""Diag-OFT: block-diagonal orthogonal rotation of the output rows (reference §3.2, `modules/diag_oft.py`).

Per block k: M_k = m·R_k + (1 − m)·I, W'_k = M_kᵀ·W_k (W viewed (n, bs, in...)), then rows ⊙ `rescale` (not
interpolated). Bypass applies the same to y − b on the channel axis and adds b back (4.1.3's bypass rotates the
bias too and crashes for m ≠ 1 on linear activations, §6.1.4/7).
"""
from __future__ import annotations

import torch

from ..layer import LayerSpec
from .base import Multiplier, layer_bias
from .oft_common import OFTBase, channels_back, channels_last


class DiagOFTAdapter(OFTBase):
    """Diag-OFT module: `oft_blocks` (n, bs, bs)."""

    algo = "diag-oft"

    def _check_blocks(self, b):
        if b.dim() != 3 or b.shape[1] != b.shape[2]:
            raise self.format_error("oft_blocks", f"shape {tuple(b.shape)} is not (n, bs, bs)")
        self.rank = b.shape[1]

    @property
    def out_features(self) -> int:
        b = self.tensors["oft_blocks"]
        return b.shape[0] * b.shape[1]

    def _mix(self, like: torch.Tensor, multiplier: Multiplier) -> torch.Tensor:
        r = self.rotation(like)
        eye = torch.eye(r.shape[-1], device=r.device, dtype=r.dtype)
        return multiplier * r + (1 - multiplier) * eye

    def merged_weight(self, weight: torch.Tensor, multiplier: Multiplier) -> torch.Tensor:
        """rescale ⊙ blockdiag(M_kᵀ)·W."""
        n, bs, _ = self.tensors["oft_blocks"].shape
        m = self._mix(weight, multiplier)
        w = torch.einsum("kij,ki...->kj...", m, weight.reshape(n, bs, *weight.shape[1:])).reshape(weight.shape)
        rescale = self.rescale_vec(weight)
        if rescale is not None:
            w = w * rescale.reshape(-1, *([1] * (weight.dim() - 1)))
        return w

    def bypass(self, x: torch.Tensor, y: torch.Tensor, multiplier: Multiplier, layer: LayerSpec) -> torch.Tensor:
        """rescale ⊙ blockdiag(M_kᵀ)·(y − b) + b on the channel axis."""
        n, bs, _ = self.tensors["oft_blocks"].shape
        bias = layer_bias(layer, y)
        h = channels_last(y, layer)
        if bias is not None:
            h = h - bias
        m = self._mix(y, multiplier)
        out = torch.einsum("kij,...ki->...kj", m, h.reshape(*h.shape[:-1], n, bs)).reshape(h.shape)
        rescale = self.rescale_vec(y)
        if rescale is not None:
            out = out * rescale
        if bias is not None:
            out = out + bias
        return channels_back(out, layer)
