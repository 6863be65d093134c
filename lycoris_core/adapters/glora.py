# SPDX-License-Identifier: GPL-3.0-or-later
"""GLoRA: ΔW = s·(W·A1·A2 + B1·B2) (reference §3.2, `lycoris/modules/glora.py`); W' = W + m·ΔW.

`a1.weight` (in, r[,1..]), `a2.weight` (r, in[,1..]), `b1.weight` (out, r[,1..]), `b2.weight` (r, in[, k...])
(conv b2 has the layer's kernel), raw `alpha` (s = alpha/r, r = a2.size(0)), and optionally the Tucker
`bm.weight` (r, r, k...) that 4.1.3 can never create but would read. Bypass:
y + s·m·(op(a1(a2(x)), W) + b1(b2(x))) with the layer's geometry, which equals op(x, W', b).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layer import LayerSpec
from .additive import AdditiveAdapter
from .base import conv_fn, conv_groups, geometry, layer_op, layer_weight, lora_scale, read_alpha


class GLoRAAdapter(AdditiveAdapter):
    """GLoRA module; needs the base weight W for both merged and bypass."""

    algo = "glora"
    REQUIRED = ("a1.weight", "a2.weight", "b1.weight", "b2.weight")
    OPTIONAL = ("bm.weight", "alpha")
    needs_weight_for_delta = True

    def __init__(self, name, tensors, source=""):
        super().__init__(name, tensors, source)
        a1, a2, b1, b2 = (self._need(k) for k in self.REQUIRED)
        r = a2.shape[0]
        if a1.shape[1] != r or a1.shape[0] != a2.shape[1] or b1.shape[1] != b2.shape[0]:
            raise self.format_error("a1.weight", "factor shapes do not agree: " + ", ".join(
                f"{k} {tuple(self.tensors[k].shape)}" for k in self.REQUIRED))
        self.rank = r
        self.alpha = read_alpha(self.tensors.get("alpha"))
        self.scale = lora_scale(self.alpha, r)

    def expected_weight_shape(self):
        """(out, in[, k...]) from b1/b2 (bm's kernel in the Tucker form)."""
        b1, b2, bm = self.tensors["b1.weight"], self.tensors["b2.weight"], self.tensors.get("bm.weight")
        if bm is not None:
            return (b1.shape[0], b2.shape[1], *bm.shape[2:])
        return (b1.shape[0], *b2.shape[1:])

    def shape_key(self):
        return "b2.weight"

    def check_target(self, weight_shape, where):
        """Also require A1/A2's `in` to be the weight's input channels (grouped convs do not fit)."""
        super().check_target(weight_shape, where)
        if self.tensors["a1.weight"].shape[0] != weight_shape[1]:
            raise self.shape_error(where, "a1.weight", (weight_shape[0], self.tensors["a1.weight"].shape[0],
                                                        *weight_shape[2:]), weight_shape)

    def delta_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """s·(W·A1·A2 + B1·B2) on `weight` (the base weight, W-shaped result)."""
        a1, a2, b1, b2 = (self.t(k, weight) for k in self.REQUIRED)
        bm = self.t("bm.weight", weight)
        r = a2.shape[0]
        b1_2 = b1.reshape(b1.shape[0], r)
        if bm is not None:
            wb = torch.einsum("mn...,im,nj->ij...", bm, b1_2, b2.reshape(r, -1))
        else:
            wb = (b1_2 @ b2.reshape(r, -1)).reshape(weight.shape)
        wa = torch.einsum("oi...,ij->oj...", weight, a1.reshape(a1.shape[0], r))
        wa = torch.einsum("oi...,ij->oj...", wa, a2.reshape(r, -1))
        return (wb.reshape(weight.shape) + wa) * self.scale

    def _w_a1(self, layer: LayerSpec, x: torch.Tensor) -> torch.Tensor:
        """W·A1 ((out, r) linear, (out, r, k...) conv) on x's device/dtype, cached per (device, dtype, layer)."""
        key = ("w_a1", x.device, x.dtype)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is layer:
            return hit[1]
        w = layer_weight(layer, x, self._where())
        a1 = self.t("a1.weight", x)
        wa1 = torch.einsum("oi...,ij->oj...", w, a1.reshape(a1.shape[0], -1))
        self._cache[key] = (layer, wa1)
        return wa1

    def delta_act(self, x: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
        """s·((W·A1)(A2 x) + B1(B2 x)) with the layer's geometry (no bias); W·A1 is cached, so no full-width
        matmul with W per call."""
        a2, b1, b2 = self.t("a2.weight", x), self.t("b1.weight", x), self.t("b2.weight", x)
        r = a2.shape[0]
        if layer.kind == "linear":
            ax = F.linear(F.linear(x, a2.reshape(r, -1)), self._w_a1(layer, x))
            return (ax + F.linear(F.linear(x, b2.reshape(r, -1)), b1.reshape(-1, r))) * self.scale
        if conv_groups(layer) != 1 or "bm.weight" in self.tensors:
            return layer_op(layer, x, self.delta_weight(layer_weight(layer, x, self._where())))
        nd = len(layer.weight_shape)
        conv, ones = conv_fn(nd), [1] * (nd - 2)
        geo = geometry(layer, groups=False)
        ax = conv(conv(x, a2.reshape(r, -1, *ones)), self._w_a1(layer, x), **geo)
        bx = conv(conv(x, b2.reshape(r, -1, *layer.weight_shape[2:]), **geo), b1.reshape(-1, r, *ones))
        return (ax + bx) * self.scale
