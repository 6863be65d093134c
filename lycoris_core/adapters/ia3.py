# SPDX-License-Identifier: GPL-3.0-or-later
"""(IA)³: W' = W ⊙ (1 + m·w) per output row, or per input column when `on_input` is set (reference §3.2).

Keys: `weight` ((out,) / (in,); conv (1, C, 1...)), `on_input` (0/1 flag in the file dtype). Read natively:
4.1.3's loader cannot rebuild IA3 (§2.3). Bypass equals merged: output side scales y − b, not the bias
(4.1.3's bypass also scales the bias, §6.1.4); input side runs op(x ⊙ m·w, W) and adds it to y.
"""
from __future__ import annotations

import torch

from ..layer import LayerSpec
from .base import Adapter, Multiplier, channel_view, conv_groups, layer_bias, layer_op, layer_weight


class IA3Adapter(Adapter):
    """(IA)³ module."""

    algo = "ia3"
    REQUIRED = ("weight", "on_input")
    OPTIONAL = ()

    def __init__(self, name, tensors, source=""):
        super().__init__(name, tensors, source)
        self._need("weight")
        flag = self._need("on_input")
        self.on_input = bool(float(flag.detach().float().reshape(-1)[0]) != 0) if flag.numel() else False
        w = self.tensors["weight"]
        if sum(d != 1 for d in w.shape) > 1:
            raise self.format_error("weight", f"shape {tuple(w.shape)} is not a per-channel vector")
        self.channels = w.numel()

    def expected_weight_shape(self):
        """None: IA3 fixes only one axis (checked by `check_target`)."""
        return None

    def check_target(self, weight_shape, where):
        """The vector must have one entry per output row (or per input column with `on_input`)."""
        axis = 1 if self.on_input else 0
        if len(weight_shape) < 2 or weight_shape[axis] != self.channels:
            exp = list(weight_shape) if len(weight_shape) >= 2 else ["?", "?"]
            exp[axis] = self.channels
            raise self.shape_error(where, "weight", tuple(exp), weight_shape)

    def _vec(self, like: torch.Tensor) -> torch.Tensor:
        return self.t("weight", like).reshape(-1)

    def merged_weight(self, weight: torch.Tensor, multiplier: Multiplier) -> torch.Tensor:
        """W ⊙ (1 + m·w) broadcast on rows (or columns with on_input)."""
        f = 1 + multiplier * self._vec(weight)
        shape = [1] * weight.dim()
        shape[1 if self.on_input else 0] = -1
        return weight * f.reshape(shape)

    def bypass(self, x: torch.Tensor, y: torch.Tensor, multiplier: Multiplier, layer: LayerSpec) -> torch.Tensor:
        """Output side: y + (y − b)·m·w. Input side: y + op(x·m·w, W)."""
        w = self._vec(x)
        if self.on_input:
            if conv_groups(layer) > 1:
                w = w.repeat(conv_groups(layer))
            xs = x * channel_view(multiplier * w, layer, x.dim())
            return y + layer_op(layer, xs, layer_weight(layer, x, self._where()))
        bias = layer_bias(layer, y)
        base = y if bias is None else y - channel_view(bias, layer, y.dim())
        return y + base * channel_view(multiplier * w, layer, y.dim())
