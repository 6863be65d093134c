# SPDX-License-Identifier: GPL-3.0-or-later
"""Describe a ComfyUI layer (or a row slice of a fused layer) to the core as a `LayerSpec`."""
from __future__ import annotations

import torch

from ..lycoris_core.layer import LayerSpec

_CONV_TYPES = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def dequantized_weight(module: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The module's weight as a plain tensor in `dtype` on `device` (QuantizedTensor and scaled-fp8 undone)."""
    weight = module.weight
    if type(weight).__name__ == "QuantizedTensor":  # comfy.quant_ops (mixed-precision checkpoints)
        weight = weight.dequantize()
    weight = weight.to(device=device, dtype=dtype)
    scale = getattr(module, "scale_weight", None)
    if scale is not None:
        weight = weight * scale.to(device=device, dtype=dtype)
    return weight


def is_quantized(module: torch.nn.Module) -> bool:
    """True when the module's weight is stored in a format merged patching would round badly (fp8, quantized)."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return False
    if type(weight).__name__ == "QuantizedTensor" or getattr(module, "scale_weight", None) is not None:
        return True
    return weight.dtype in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None))


def layer_spec(module: torch.nn.Module, offset: tuple[int, int, int] | None) -> LayerSpec:
    """A LayerSpec for `module` restricted to the output rows `offset` = (dim, start, length), or the whole layer."""

    def rows(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or offset is None:
            return t
        return t.narrow(offset[0], offset[1], offset[2])

    def weight(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return rows(dequantized_weight(module, dtype, device))

    def bias(dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        b = getattr(module, "bias", None)
        return None if b is None else rows(b.to(device=device, dtype=dtype))

    shape = tuple(module.weight.shape)
    if offset is not None:
        shape = shape[: offset[0]] + (offset[2],) + shape[offset[0] + 1:]
    if isinstance(module, _CONV_TYPES):
        conv = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups)
        return LayerSpec("conv", shape, weight, bias, conv=conv)
    if isinstance(module, torch.nn.GroupNorm):
        norm = dict(type="group", eps=module.eps, num_groups=module.num_groups)
        return LayerSpec("norm", shape, weight, bias, norm=norm)
    if isinstance(module, torch.nn.LayerNorm):
        norm = dict(type="layer", eps=module.eps, normalized_shape=tuple(module.normalized_shape))
        return LayerSpec("norm", shape, weight, bias, norm=norm)
    return LayerSpec("linear", shape, weight, bias)


