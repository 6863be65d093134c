# SPDX-License-Identifier: GPL-3.0-or-later
"""What an adapter needs to know about the layer it targets, independent of ComfyUI."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class LayerSpec:
    """Geometry of a target layer (or of a row slice of a fused layer).

    kind: "linear", "conv" (1/2/3-d) or "norm" (layer/group norm).
    weight: returns the layer's (dequantized) weight for this slice, in the requested dtype/device; used by
        algorithms whose bypass needs W (DoRA norms, GLoRA's W·A1·A2, T-LoRA's SVD base).
    bias: returns the bias of this slice or None.
    conv: keyword arguments of F.conv{n}d for the layer (stride, padding, dilation, groups).
    norm: for "norm": {"type": "layer"|"group", "eps": float, "num_groups": int, "normalized_shape": tuple}.
    """

    kind: str
    weight_shape: tuple[int, ...]
    weight: Callable[[torch.dtype, torch.device], torch.Tensor] | None = None
    bias: Callable[[torch.dtype, torch.device], torch.Tensor | None] | None = None
    conv: dict = field(default_factory=dict)
    norm: dict = field(default_factory=dict)
