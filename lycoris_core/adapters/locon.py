# SPDX-License-Identifier: GPL-3.0-or-later
"""LoRA / LoCon (and DyLoRA, whose files are identical): ΔW = s·up@down, Tucker form with `lora_mid`.

Reference §3.2 / `lycoris/modules/locon.py`. Bypass runs the factors as layers: linear `up(down(x))`; conv
`down` with the layer's stride/padding/dilation then a 1x1 `up` (Tucker: 1x1 down, k×k mid, 1x1 up). Unlike
4.1.3's bypass (adapter geometry, dilation 1), the layer's own geometry is used so bypass equals merged; grouped
convs fall back to op(x, ΔW_s) because the factors are not grouped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layer import LayerSpec
from .additive import AdditiveAdapter, rows_view
from .base import conv_fn, conv_groups, geometry, layer_op, lora_scale, read_alpha


class LoConAdapter(AdditiveAdapter):
    """LoRA/LoCon module: `lora_up.weight` (out, r[,1..]), `lora_down.weight` (r, in[, k..]), optional
    `lora_mid.weight` (r, r, k..), `alpha`, `dora_scale`.

    rank_cap (DyLoRA `dyn`): keep only the first k ranks. The scale stays alpha/r of the full rank, as in the
    A1111 LyCORIS extension (`dyn=`, `rebuild_conventional` truncates up/down, `dim` stays the full rank);
    `rank_cap_rescale=True` instead uses alpha/k, which is what DyLoRA's training forward used at rank k
    (`lycoris/modules/dylora.py:get_weight` scales by alpha/#blocks, i.e. inversely to the active rank).
    """

    algo = "locon"
    REQUIRED = ("lora_up.weight", "lora_down.weight")
    OPTIONAL = ("lora_mid.weight", "alpha", "dora_scale")

    def __init__(self, name, tensors, source="", *, rank_cap: int | None = None, rank_cap_rescale: bool = False):
        super().__init__(name, tensors, source)
        up, down = self._need("lora_up.weight"), self._need("lora_down.weight")
        mid = self.tensors.get("lora_mid.weight")
        r = down.shape[0]
        if up.dim() < 2 or up.shape[1] != r or any(d != 1 for d in up.shape[2:]):
            raise self.format_error("lora_up.weight", f"shape {tuple(up.shape)} does not match lora_down.weight "
                                    f"{tuple(down.shape)} (expected (out, {r}[, 1...]))")
        if mid is not None and (mid.dim() < 3 or tuple(mid.shape[:2]) != (r, r)):
            raise self.format_error("lora_mid.weight", f"shape {tuple(mid.shape)} is not ({r}, {r}, k...)")
        if mid is not None and any(d != 1 for d in down.shape[2:]):
            raise self.format_error("lora_down.weight", "a Tucker (lora_mid) module needs a 1x1 lora_down")
        self.full_rank = r
        self.alpha = read_alpha(self.tensors.get("alpha"))
        self.scale = lora_scale(self.alpha, r)
        self.rank = r
        if rank_cap is not None and 0 < rank_cap < r:
            k = int(rank_cap)
            self.tensors["lora_up.weight"] = up[:, :k]
            self.tensors["lora_down.weight"] = down[:k]
            if mid is not None:
                self.tensors["lora_mid.weight"] = mid[:k, :k]
            self.rank = k
            if rank_cap_rescale:
                self.scale = lora_scale(self.alpha if self.alpha else r, k)

    def expected_weight_shape(self):
        """(out, in[, k...]) from lora_up/lora_down (and lora_mid's kernel)."""
        up, down = self.tensors["lora_up.weight"], self.tensors["lora_down.weight"]
        mid = self.tensors.get("lora_mid.weight")
        if mid is not None:
            return (up.shape[0], down.shape[1], *mid.shape[2:])
        return (up.shape[0], *down.shape[1:])

    def shape_key(self):
        return "lora_down.weight"

    def delta_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """s·up@down (Tucker: s·Σ up[o,i]·mid[i,j,…]·down[j,c]) on `weight`'s device/dtype."""
        up, down, mid = self.t("lora_up.weight", weight), self.t("lora_down.weight", weight), \
            self.t("lora_mid.weight", weight)
        r = down.shape[0]
        up2 = up.reshape(up.shape[0], r) * self.scale  # s on the small factor: no pass over ΔW
        if mid is None:
            return (up2 @ down.reshape(r, -1)).reshape(self.expected_weight_shape())
        return torch.einsum("ij...,oi,jc->oc...", mid, up2, down.reshape(r, -1))

    def fuses(self, layer: LayerSpec) -> bool:
        """Linear layers: y += (m·s·down(x))·upᵀ in one addmm."""
        return layer.kind == "linear" and "lora_mid.weight" not in self.tensors

    def add_delta_(self, x: torch.Tensor, y: torch.Tensor, coeff, layer: LayerSpec) -> torch.Tensor:
        """y += coeff·s·up(down(x)) in place: the coefficient scales the (tokens, r) hidden, addmm accumulates."""
        up, down = self.t("lora_up.weight", x), self.t("lora_down.weight", x)
        r = down.shape[0]
        h = F.linear(x, down.reshape(r, -1))
        c = coeff * self.scale
        if not (isinstance(c, float) and c == 1.0):
            h.mul_(c)
        y2 = rows_view(y)
        if y2 is None:
            return y.add_(F.linear(h, up.reshape(up.shape[0], r)))
        y2.addmm_(h.reshape(-1, r), up.reshape(up.shape[0], r).t())
        return y

    def delta_act(self, x: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
        """s·up(down(x)) with the layer's geometry; grouped convs go through op(x, ΔW_s)."""
        up, down, mid = self.t("lora_up.weight", x), self.t("lora_down.weight", x), self.t("lora_mid.weight", x)
        r = down.shape[0]
        if layer.kind == "linear":
            h = F.linear(x, down.reshape(r, -1))
            return F.linear(h, up.reshape(up.shape[0], r)) * self.scale
        if conv_groups(layer) != 1:
            return layer_op(layer, x, self.delta_weight(x.new_empty(())))
        nd = len(layer.weight_shape)
        conv = conv_fn(nd)
        ones = [1] * (nd - 2)
        geo = geometry(layer, groups=False)
        if mid is None:
            if down.dim() != nd:  # linear-shaped factors on a 1x1 conv
                down = down.reshape(r, -1, *ones)
            h = conv(x, down, **geo)
        else:
            h = conv(conv(x, down.reshape(r, -1, *ones)), mid, **geo)
        return conv(h, up.reshape(up.shape[0], r, *ones)) * self.scale
