# SPDX-License-Identifier: GPL-3.0-or-later
"""Additive adapters (LoCon, LoHa, LoKr; GLoRA and T-LoRA reuse the plain part): W' = W + m·ΔW_s, or DoRA.

Subclasses give `delta_weight(weight)` (ΔW_s = s·ΔW on `weight`'s device/dtype, natural shape) and optionally a
faster `delta_act(x, layer)` (ΔW_s applied to x with the layer's geometry, no bias).
"""
from __future__ import annotations

import torch

from ..layer import LayerSpec
from .base import Adapter, Multiplier, channel_view, conv_groups, layer_bias, layer_op, layer_weight
from .dora import OUTPUT, dora_factor, dora_merge, dora_merge_, dora_norm


class AdditiveAdapter(Adapter):
    """Base of algorithms whose update is a weight delta ΔW_s, optionally DoRA-decomposed."""

    # ------------------------------------------------------------------ to implement
    def delta_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """ΔW_s = s·ΔW (no multiplier) on `weight`'s device/dtype; shape `expected_weight_shape()`."""
        raise NotImplementedError

    def delta_act(self, x: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
        """ΔW_s applied to x with the layer's geometry (no bias): same shape as the layer output."""
        ref = layer_weight(layer, x, self._where()) if self.needs_weight_for_delta else _like(x)
        return layer_op(layer, x, self.delta_weight(ref))

    #: True when ΔW depends on the base weight (GLoRA, T-LoRA without stored base).
    needs_weight_for_delta = False

    def fuses(self, layer: LayerSpec) -> bool:
        """True when `add_delta_` has a fused in-place path for this layer (linear layers, per algorithm)."""
        return False

    def add_delta_(self, x: torch.Tensor, y: torch.Tensor, coeff: Multiplier, layer: LayerSpec) -> torch.Tensor:
        """y += coeff·ΔW_s·x in place (only when `fuses(layer)`): the multiplier is folded into a small factor and
        the last product accumulates straight into y (addmm/baddbmm), so no output-sized temporary is made."""
        raise NotImplementedError

    # ------------------------------------------------------------------ merged
    def merged_weight(self, weight: torch.Tensor, multiplier: Multiplier) -> torch.Tensor:
        """W + m·ΔW_s, or the DoRA form (W + ΔW_s)·(m·(g/N − 1) + 1); same shape/dtype as `weight`."""
        dw = self.delta_weight(weight).reshape(weight.shape)
        if self.dora_scale is None:
            return weight + multiplier * dw
        return dora_merge(weight + dw, self.dora_scale, multiplier, self.dora_axis, self.dora_eps)

    def merge_into_(self, weight: torch.Tensor, multiplier: Multiplier) -> torch.Tensor:
        """`weight` updated in place to `merged_weight(weight, multiplier)` and returned: W += m·ΔW_s, or DoRA's
        W += ΔW_s then W *= factor, with no temporary beyond ΔW_s."""
        if type(self).merged_weight is not AdditiveAdapter.merged_weight:
            return weight.copy_(self.merged_weight(weight, multiplier))
        dw = self.delta_weight(weight).reshape(weight.shape)
        if self.dora_scale is not None:
            weight.add_(dw)
            del dw
            return dora_merge_(weight, self.dora_scale, multiplier, self.dora_axis, self.dora_eps)
        if isinstance(multiplier, (int, float)):
            return weight.add_(dw, alpha=multiplier)
        return weight.add_(dw * multiplier)  # dw may be a stored tensor: never scaled in place

    # ------------------------------------------------------------------ bypass
    def _dora_norm(self, layer: LayerSpec, x: torch.Tensor) -> torch.Tensor:
        """N(W + ΔW_s) + eps in fp32 on x's device, cached per device (and per layer object)."""
        key = ("dora_norm", x.device)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is layer:
            return hit[1]
        w = layer_weight(layer, x.new_empty((), dtype=torch.float32), self._where())
        merged = w + self.delta_weight(w).reshape(w.shape)
        n = dora_norm(merged, self.dora_axis, self.dora_eps)
        self._cache[key] = (layer, n)
        return n

    def bypass_(self, x: torch.Tensor, y: torch.Tensor, multiplier: Multiplier, layer: LayerSpec) -> torch.Tensor:
        """In-place `bypass` (see Adapter.bypass_) where `fuses(layer)`: y += m·ΔW_s·x, or for output-axis DoRA
        y = (y − b + ΔW_s·x)·factor + b, all written into y."""
        if not self.fuses(layer):
            return self.bypass(x, y, multiplier, layer)
        g = self.dora_scale
        if g is None:
            return self.add_delta_(x, y, multiplier, layer)
        if self.dora_axis != OUTPUT:
            return self.bypass(x, y, multiplier, layer)
        norm = self._dora_norm(layer, x)
        factor = dora_factor(g.to(device=x.device, dtype=torch.float32), norm, multiplier).to(y.dtype).reshape(-1)
        bias = layer_bias(layer, y)
        if bias is not None:
            y.sub_(bias)
        self.add_delta_(x, y, 1.0, layer)
        y.mul_(factor)
        if bias is not None:
            y.add_(bias)
        return y

    def bypass(self, x: torch.Tensor, y: torch.Tensor, multiplier: Multiplier, layer: LayerSpec) -> torch.Tensor:
        """y + m·ΔW_s·x, or, with DoRA, op(x, W', b) computed from y (output axis) or from W (input axis)."""
        g = self.dora_scale
        if g is None:
            return y + multiplier * self.delta_act(x, layer)
        norm = self._dora_norm(layer, x)
        factor = dora_factor(g.to(device=x.device, dtype=torch.float32), norm, multiplier).to(x.dtype)
        bias = layer_bias(layer, y)
        if self.dora_axis == OUTPUT:
            base = y if bias is None else y - channel_view(bias, layer, y.dim())
            out = (base + self.delta_act(x, layer)) * channel_view(factor, layer, y.dim())
            return out if bias is None else out + channel_view(bias, layer, y.dim())
        # Input axis: W' = (W + ΔW_s)·diag(c) over input columns, i.e. scale x's channels by c first.
        c = factor.reshape(-1)
        groups = conv_groups(layer)
        if groups > 1:
            c = c.repeat(groups)
        xs = x * channel_view(c, layer, x.dim())
        w = layer_weight(layer, x, self._where())
        return layer_op(layer, xs, w, bias) + self.delta_act(xs, layer)


def rows_view(t: torch.Tensor) -> torch.Tensor | None:
    """`t` (..., n) viewed as (M, n) without a copy (also for a row slice of a wider output), or None."""
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        return None


def _like(x: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor carrying x's device and dtype (for `delta_weight`, which only reads those)."""
    return x.new_empty(())
