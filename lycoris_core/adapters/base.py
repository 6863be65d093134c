# SPDX-License-Identifier: GPL-3.0-or-later
"""The `Adapter` contract shared by every LyCORIS algorithm, and the small helpers they all use.

An adapter holds one module's tensors exactly as read from the file (suffix -> tensor) and knows two things:
- `merged_weight(W, m)`: the full new weight W' that LyCORIS 4.1.3's rebuild forward (non-bypass, `apply_to`) uses
  at multiplier m (reference doc §2.2), with lycoris-lora's merge bugs left out (s applied once);
- `bypass(x, y, m, layer)`: the new layer output from its input x and base output y (bias included), equal to
  `op(x, W', b')`, computed in activation space where the algorithm allows it.

All maths run in the dtype/device of the tensors the caller passes (callers pass fp32 for a merge). `multiplier`
is a python float or a 0-d tensor on the activation's device: no code here reads its value on the host.
"""
from __future__ import annotations

import copy
import math
from typing import Union

import torch
import torch.nn.functional as F

from ..errors import AdapterFormatError, ShapeMismatchError
from ..layer import LayerSpec
from .dora import dora_axis

Multiplier = Union[float, torch.Tensor]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def read_alpha(tensor: torch.Tensor | None) -> float | None:
    """The module's `alpha` as a python float (files are often all-bf16), or None when absent."""
    if tensor is None:
        return None
    return float(tensor.detach().float().reshape(-1)[0]) if tensor.numel() else None


def lora_scale(alpha: float | None, rank: int | None) -> float:
    """s = alpha / rank (reference §3.1); alpha 0 or None means alpha = rank, i.e. s = 1."""
    if alpha is None or alpha == 0 or not rank:
        return 1.0
    return alpha / rank


def conv_fn(weight_ndim: int):
    """F.conv1d/2d/3d for a conv weight with `weight_ndim` dims (3, 4 or 5)."""
    try:
        return _CONV[weight_ndim - 2]
    except KeyError:
        raise ValueError(f"no convolution for a weight with {weight_ndim} dims") from None


def geometry(layer: LayerSpec, *, groups: bool = True) -> dict:
    """The layer's conv keyword arguments (stride, padding, dilation[, groups]); {} for a linear layer."""
    if layer.kind != "conv":
        return {}
    keys = ("stride", "padding", "dilation", "groups") if groups else ("stride", "padding", "dilation")
    return {k: v for k, v in layer.conv.items() if k in keys}


def conv_groups(layer: LayerSpec) -> int:
    """The layer's conv groups (1 for anything else)."""
    return int(layer.conv.get("groups", 1)) if layer.kind == "conv" else 1


def layer_op(layer: LayerSpec, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """op(x, weight, bias) with the layer's own geometry; `weight` is reshaped to the layer's weight shape.

    Linear: x (..., in) -> (..., out). Conv: x (B, C, *spatial) -> (B, out, *spatial').
    """
    if layer.kind == "linear":
        return F.linear(x, weight.reshape(weight.shape[0], -1), bias)
    if layer.kind == "conv":
        w = weight.reshape(layer.weight_shape)
        return conv_fn(w.dim())(x, w, bias, **geometry(layer))
    raise ValueError(f"layer kind {layer.kind!r} has no weight op")


def channel_view(v: torch.Tensor, layer: LayerSpec, ndim: int) -> torch.Tensor:
    """A per-channel vector (C,) shaped to broadcast on the channel axis of an activation with `ndim` dims
    (last axis for linear, axis 1 for conv)."""
    v = v.reshape(-1)
    if layer.kind == "conv":
        return v.reshape(1, -1, *([1] * (ndim - 2)))
    return v


def layer_bias(layer: LayerSpec, like: torch.Tensor) -> torch.Tensor | None:
    """The layer's bias on `like`'s device/dtype, or None."""
    if layer.bias is None:
        return None
    return layer.bias(like.dtype, like.device)


def layer_weight(layer: LayerSpec, like: torch.Tensor, where: str) -> torch.Tensor:
    """The layer's (dequantized) weight on `like`'s device/dtype; a clear error when the spec cannot give it."""
    if layer.weight is None:
        raise ValueError(f"{where}: this algorithm needs the layer's weight in bypass, but the LayerSpec has none")
    return layer.weight(like.dtype, like.device)


def shapes_compatible(expected: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    """True when an adapter delta of shape `expected` fits a weight of shape `actual`.

    Equal shapes fit; so does a flattened form with the same output rows and the same number of input elements
    (LoHa/LoKr store conv factors flattened as (out, in·k·k); a 1x1 conv may carry linear-shaped factors).
    """
    expected, actual = tuple(expected), tuple(actual)
    if expected == actual:
        return True
    if not expected or not actual or expected[0] != actual[0]:
        return False
    if len(expected) > 2 and len(actual) > 2:
        return False
    return math.prod(expected[1:]) == math.prod(actual[1:])


class Adapter:
    """One LyCORIS module of a file: its tensors, algorithm, rank, scale, and the maths to apply it.

    Attributes: `name` (module prefix as in the file), `algo`, `rank` (int or None), `alpha` (float or None, as
    read), `scale` (s applied once), `tensors` (suffix -> Tensor), `source` (file, for messages), `file_dtype`
    (dtype the file stored, kept across `to()`).
    """

    algo: str = ""
    #: tensor suffixes this algorithm requires / accepts; used by the registry to validate a module.
    REQUIRED: tuple[str, ...] = ()
    OPTIONAL: tuple[str, ...] = ()

    def __init__(self, name: str, tensors: dict[str, torch.Tensor], source: str = ""):
        self.name = name
        self.source = source
        self.tensors = dict(tensors)
        floats = [t for t in self.tensors.values() if t.is_floating_point()]
        self.file_dtype = floats[0].dtype if floats else torch.float32
        g = self.tensors.get("dora_scale")
        self._dora_dtype = g.dtype if g is not None else self.file_dtype
        self.rank: int | None = None
        self.alpha: float | None = None
        self.scale: float = 1.0
        self._cache: dict = {}
        # State shared by every `to()` copy of this adapter (not global): expensive W-derived data.
        self._shared: dict = {}

    # ---------------------------------------------------------------- validation
    @classmethod
    def key_problems(cls, keys: set[str]) -> tuple[list[str], list[str]]:
        """(missing, unknown) suffixes of a module with `keys` for this algorithm."""
        missing = [k for k in cls.REQUIRED if k not in keys]
        unknown = sorted(k for k in keys if k not in cls.REQUIRED and k not in cls.OPTIONAL)
        return missing, unknown

    def _where(self) -> str:
        return f"{self.source or '<tensors>'}: module '{self.name}' ({self.algo})"

    def format_error(self, key: str, problem: str, fix: str | None = None) -> AdapterFormatError:
        """An AdapterFormatError naming the file, module and tensor key."""
        fix = fix or "the file is damaged or was written by an incompatible tool; re-export it from the trainer"
        return AdapterFormatError(f"{self._where()}, tensor '{key}': {problem}. Fix: {fix}.")

    def shape_error(self, where: str, key: str, expected, actual) -> ShapeMismatchError:
        """A ShapeMismatchError naming module, tensor, expected vs actual and the fix."""
        return ShapeMismatchError(
            f"{self._where()}, tensor '{key}' expects a target weight of shape {tuple(expected)}, but {where} has "
            f"{tuple(actual)}. This file was trained for another model / variant: load it on the base model it "
            f"was trained on (check the model family and size).")

    def _need(self, key: str) -> torch.Tensor:
        t = self.tensors.get(key)
        if t is None:
            raise self.format_error(key, "missing")
        return t

    # ---------------------------------------------------------------- shape contract
    def expected_weight_shape(self) -> tuple[int, ...] | None:
        """The weight shape this module's tensors imply ((out, in[, k...]), possibly with flattened input dims),
        or None when the tensors fix only part of it."""
        return None

    def shape_key(self) -> str:
        """The tensor suffix named in shape errors."""
        return next(iter(self.REQUIRED), "?")

    def check_target(self, weight_shape, where: str) -> None:
        """Raise ShapeMismatchError unless this module fits a target weight of `weight_shape` (at `where`)."""
        expected = self.expected_weight_shape()
        if expected is not None and not shapes_compatible(expected, tuple(weight_shape)):
            raise self.shape_error(where, self.shape_key(), expected, weight_shape)

    # ---------------------------------------------------------------- DoRA
    @property
    def dora_scale(self) -> torch.Tensor | None:
        """The DoRA magnitude vector g as stored ((out, 1, ...) or (1, in, ...)), or None."""
        return self.tensors.get("dora_scale")

    @property
    def dora_axis(self) -> str | None:
        """"output" or "input" (which axis DoRA normalizes), None without DoRA."""
        g = self.dora_scale
        if g is None:
            return None
        exp = self.expected_weight_shape()
        return dora_axis(g, exp[0] if exp else g.shape[0])

    @property
    def dora_eps(self) -> float:
        """finfo(eps) of dora_scale's dtype as stored in the file (LyCORIS adds it in that dtype)."""
        return float(torch.finfo(self._dora_dtype).eps)

    # ---------------------------------------------------------------- maths
    def merged_weight(self, weight: torch.Tensor, multiplier: Multiplier) -> torch.Tensor:
        """W' (same shape/dtype as `weight`): the layer weight LyCORIS's rebuild forward uses at `multiplier`."""
        raise NotImplementedError

    def merged_bias(self, bias: torch.Tensor | None, multiplier: Multiplier) -> torch.Tensor | None:
        """b' for algorithms that change the bias (full `diff_b`, norm `b_norm`); None means unchanged."""
        return None

    def bypass(self, x: torch.Tensor, y: torch.Tensor, multiplier: Multiplier, layer: LayerSpec) -> torch.Tensor:
        """The layer's new output given input `x` and base output `y` (bias included); equals op(x, W', b')."""
        raise NotImplementedError

    def bypass_(self, x: torch.Tensor, y: torch.Tensor, multiplier: Multiplier, layer: LayerSpec) -> torch.Tensor:
        """`bypass`, but allowed to write the result into `y` in place (no output-sized temporaries) and return
        `y`. Only for a `y` the caller owns and no autograd graph needs (a fresh layer output or a view of it).
        Algorithms without a fused path return `bypass(...)` (a new tensor, `y` untouched)."""
        return self.bypass(x, y, multiplier, layer)

    # ---------------------------------------------------------------- tensors
    def t(self, key: str, like: torch.Tensor) -> torch.Tensor | None:
        """Tensor `key` on `like`'s device and dtype (None when absent)."""
        v = self.tensors.get(key)
        if v is None:
            return None
        return v.to(device=like.device, dtype=like.dtype)

    def to(self, device=None, dtype=None) -> "Adapter":
        """A copy with float tensors moved to `device` / cast to `dtype` (per-instance caches start empty)."""
        new = copy.copy(self)
        new.tensors = {
            k: v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else v.dtype)
            for k, v in self.tensors.items()
        }
        new._cache = {}
        return new

    def clear_cache(self) -> None:
        """Forget W-derived data (DoRA norms, T-LoRA base): call when the base weight under this adapter changed."""
        self._cache.clear()
        self._shared.clear()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} algo={self.algo} rank={self.rank} scale={self.scale:g}>"
