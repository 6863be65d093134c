# SPDX-License-Identifier: GPL-3.0-or-later
"""DoRA (weight decomposition, `dora_scale`) maths shared by LoCon, LoHa and LoKr (reference §3.1).

W' = (W + ΔW_s) · (m·(g / N(W + ΔW_s) − 1) + 1), ΔW_s = s·ΔW (no m), N the L2 norm per output row (output axis)
or per input column over (out, spatial) (input axis), plus finfo(dtype of dora_scale as stored).eps
(`lycoris/functional/general.py:_weight_decompose`). Unlike lycoris-lora 4.1.3, the bypass path here applies
DoRA too (4.1.3 silently drops it in bypass, reference §6.1.3), so bypass equals merged.
"""
from __future__ import annotations

import torch

OUTPUT = "output"
INPUT = "input"


def dora_axis(dora_scale: torch.Tensor, out_features: int) -> str:
    """"output" when `dora_scale` is (out, 1, ...), else "input" ((1, in, ...))."""
    if dora_scale.shape[0] == out_features and all(d == 1 for d in dora_scale.shape[1:]):
        return OUTPUT
    return INPUT


def dora_norm(weight: torch.Tensor, axis: str, eps: float) -> torch.Tensor:
    """N(weight) + eps, shaped like dora_scale: (out, 1, ...) on the output axis, (1, in, 1, ...) on the input axis."""
    rest = [1] * (weight.dim() - 1)
    if axis == OUTPUT:
        n = weight.reshape(weight.shape[0], -1).norm(dim=1)
        return n.reshape(weight.shape[0], *rest) + eps
    n = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
    return n.reshape(1, weight.shape[1], *rest[1:]) + eps


def dora_factor(dora_scale: torch.Tensor, norm: torch.Tensor, multiplier) -> torch.Tensor:
    """m·(g/N − 1) + 1, the per-row (or per-column) factor; no host read of `multiplier`."""
    return multiplier * (dora_scale.reshape(norm.shape) / norm - 1) + 1


def _merge_factor(weight_plus_delta: torch.Tensor, dora_scale: torch.Tensor, multiplier, axis: str,
                  eps: float) -> torch.Tensor:
    """The DoRA factor of `weight_plus_delta`, shaped to broadcast over it, in its dtype."""
    g = dora_scale.to(device=weight_plus_delta.device, dtype=weight_plus_delta.dtype)
    if axis == OUTPUT:
        g = g.reshape(weight_plus_delta.shape[0], *([1] * (weight_plus_delta.dim() - 1)))
    else:
        g = g.reshape(1, weight_plus_delta.shape[1], *([1] * (weight_plus_delta.dim() - 2)))
    return dora_factor(g, dora_norm(weight_plus_delta, axis, eps), multiplier)


def dora_merge(weight_plus_delta: torch.Tensor, dora_scale: torch.Tensor, multiplier, axis: str,
               eps: float) -> torch.Tensor:
    """W' from W + ΔW_s (any shape with out first); maths in the dtype of `weight_plus_delta`."""
    return weight_plus_delta * _merge_factor(weight_plus_delta, dora_scale, multiplier, axis, eps)


def dora_merge_(weight_plus_delta: torch.Tensor, dora_scale: torch.Tensor, multiplier, axis: str,
                eps: float) -> torch.Tensor:
    """`dora_merge` written into `weight_plus_delta` (returned): no weight-sized temporary."""
    return weight_plus_delta.mul_(_merge_factor(weight_plus_delta, dora_scale, multiplier, axis, eps))
