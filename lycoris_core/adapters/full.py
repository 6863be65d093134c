# SPDX-License-Identifier: GPL-3.0-or-later
"""Full / native fine-tune difference: W' = W + m·diff, b' = b + m·diff_b (reference §3.2, `modules/full.py`).

4.1.3 has no bypass for `full`; here bypass is y + m·(op(x, diff) + diff_b), equal to merged.
"""
from __future__ import annotations

import torch

from ..layer import LayerSpec
from .base import Adapter, Multiplier, channel_view, layer_op


class FullAdapter(Adapter):
    """Full module: `diff` (shape of W), optional `diff_b` (out,)."""

    algo = "full"
    REQUIRED = ("diff",)
    OPTIONAL = ("diff_b",)

    def __init__(self, name, tensors, source=""):
        super().__init__(name, tensors, source)
        diff = self._need("diff")
        diff_b = self.tensors.get("diff_b")
        if diff_b is not None and diff_b.numel() != diff.shape[0]:
            raise self.format_error("diff_b", f"{diff_b.numel()} entries for {diff.shape[0]} output rows")

    def expected_weight_shape(self):
        """The shape of `diff`."""
        return tuple(self.tensors["diff"].shape)

    def merged_weight(self, weight: torch.Tensor, multiplier: Multiplier) -> torch.Tensor:
        """W + m·diff."""
        return weight + multiplier * self.t("diff", weight).reshape(weight.shape)

    def merged_bias(self, bias: torch.Tensor | None, multiplier: Multiplier) -> torch.Tensor | None:
        """b + m·diff_b (m·diff_b when the layer has no bias); None when the file has no `diff_b`."""
        if "diff_b" not in self.tensors:
            return None
        if bias is None:
            return multiplier * self.tensors["diff_b"].reshape(-1)
        return bias + multiplier * self.t("diff_b", bias).reshape(bias.shape)

    def bypass(self, x: torch.Tensor, y: torch.Tensor, multiplier: Multiplier, layer: LayerSpec) -> torch.Tensor:
        """y + m·(op(x, diff) + diff_b)."""
        d = layer_op(layer, x, self.t("diff", x))
        diff_b = self.t("diff_b", x)
        if diff_b is not None:
            d = d + channel_view(diff_b, layer, d.dim())
        return y + multiplier * d
