# SPDX-License-Identifier: GPL-3.0-or-later
"""Norm adapters (`train_norm`): γ' = γ + m·w_norm, β' = β + m·b_norm on LayerNorm/GroupNorm (reference §3.2).

Bypass recomputes the norm from x with the patched affine parameters (the layer's `norm` geometry), so it equals
the merged layer exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layer import LayerSpec
from .base import Adapter, Multiplier


class NormAdapter(Adapter):
    """Norm module: `w_norm` (C,), optional `b_norm` (C,)."""

    algo = "norm"
    REQUIRED = ("w_norm",)
    OPTIONAL = ("b_norm",)

    def __init__(self, name, tensors, source=""):
        super().__init__(name, tensors, source)
        w = self._need("w_norm")
        b = self.tensors.get("b_norm")
        if b is not None and b.numel() != w.numel():
            raise self.format_error("b_norm", f"{b.numel()} entries but w_norm has {w.numel()}")

    def expected_weight_shape(self):
        """(C,), the affine weight's shape."""
        return (self.tensors["w_norm"].numel(),)

    def check_target(self, weight_shape, where):
        """The affine weight must have as many elements as `w_norm`."""
        n = 1
        for d in weight_shape:
            n *= d
        if n != self.tensors["w_norm"].numel():
            raise self.shape_error(where, "w_norm", self.expected_weight_shape(), weight_shape)

    def merged_weight(self, weight: torch.Tensor, multiplier: Multiplier) -> torch.Tensor:
        """γ + m·w_norm."""
        return weight + multiplier * self.t("w_norm", weight).reshape(weight.shape)

    def merged_bias(self, bias: torch.Tensor | None, multiplier: Multiplier) -> torch.Tensor | None:
        """β + m·b_norm (m·b_norm without a layer bias); None when the file has no `b_norm`."""
        if "b_norm" not in self.tensors:
            return None
        if bias is None:
            return multiplier * self.tensors["b_norm"].reshape(-1)
        return bias + multiplier * self.t("b_norm", bias).reshape(bias.shape)

    def bypass(self, x: torch.Tensor, y: torch.Tensor, multiplier: Multiplier, layer: LayerSpec) -> torch.Tensor:
        """The norm of x recomputed with γ', β' (layer.norm: type "layer"|"group", eps, normalized_shape /
        num_groups)."""
        if layer.kind != "norm":
            raise ValueError(f"{self._where()}: norm adapter on a {layer.kind!r} layer")
        shape = tuple(layer.weight_shape)
        gamma = layer.weight(x.dtype, x.device) if layer.weight is not None else None
        if gamma is None:
            gamma = torch.ones(shape, device=x.device, dtype=x.dtype)
        beta = layer.bias(x.dtype, x.device) if layer.bias is not None else None
        if beta is None and "b_norm" in self.tensors:
            beta = torch.zeros(shape, device=x.device, dtype=x.dtype)
        gamma = self.merged_weight(gamma, multiplier)
        new_beta = self.merged_bias(beta, multiplier)
        beta = beta if new_beta is None else new_beta
        eps = float(layer.norm.get("eps", 1e-5))
        if layer.norm.get("type") == "group":
            return F.group_norm(x, int(layer.norm["num_groups"]), gamma.reshape(-1),
                                None if beta is None else beta.reshape(-1), eps)
        normalized = tuple(layer.norm.get("normalized_shape", shape))
        return F.layer_norm(x, normalized, gamma.reshape(normalized),
                            None if beta is None else beta.reshape(normalized), eps)
