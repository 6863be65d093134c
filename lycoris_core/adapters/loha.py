# SPDX-License-Identifier: GPL-3.0-or-later
"""LoHa: ΔW = s·(w1_a@w1_b) ⊙ (w2_a@w2_b), Tucker form with `hada_t1`/`hada_t2` (reference §3.2).

Written here rather than taken from lycoris-lora 4.1.3 because its merge (`get_diff_weight`) applies s twice
(`get_weight` already includes s; reference §6.1.1). This is the rebuild-forward maths, s applied once.

Bypass on a linear layer: the Hadamard product of two rank-r products is one rank-r² product,
(A1·B1) ⊙ (A2·B2) = U·V with U[i, (p,q)] = A1[i,p]·A2[i,q] and V[(p,q), j] = B1[p,j]·B2[q,j] (the face-splitting
identity), so y += x·ΔW_sᵀ runs as a LoRA of rank r² when that is cheaper than building ΔW and a full product
(r=16 on a 1024 x 3072 layer: a third of the work); ungrouped convs likewise (a conv with r² filters, then a 1x1
mix). U and V are built per call (no W-sized memory). LyCORIS 4.1.3 always rebuilds ΔW (`bypass_forward_diff`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..layer import LayerSpec
from .additive import AdditiveAdapter, rows_view
from .base import conv_fn, conv_groups, geometry, lora_scale, read_alpha


class LoHaAdapter(AdditiveAdapter):
    """LoHa module: `hada_w{1,2}_a` (out, r), `hada_w{1,2}_b` (r, in·∏k); Tucker: `hada_t{1,2}` (r, r, k...),
    `hada_w{1,2}_a` (r, out), `hada_w{1,2}_b` (r, in); `alpha`, optional `dora_scale`."""

    algo = "loha"
    REQUIRED = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    OPTIONAL = ("hada_t1", "hada_t2", "alpha", "dora_scale")

    def __init__(self, name, tensors, source=""):
        super().__init__(name, tensors, source)
        for k in self.REQUIRED:
            self._need(k)
        t1, t2 = self.tensors.get("hada_t1"), self.tensors.get("hada_t2")
        if (t1 is None) != (t2 is None):
            present, missing = ("hada_t1", "hada_t2") if t1 is not None else ("hada_t2", "hada_t1")
            raise self.format_error(missing, f"missing while '{present}' is present (Tucker LoHa needs both)")
        self.tucker = t1 is not None
        w1a, w1b, w2a, w2b = (self.tensors[k] for k in self.REQUIRED)
        r = w1b.shape[0]
        if self.tucker:
            ok = (w1a.shape[0] == r and w2a.shape[0] == r and w2b.shape[0] == r and w1a.shape == w2a.shape
                  and w1b.shape == w2b.shape and tuple(t1.shape[:2]) == (r, r) and t1.shape == t2.shape)
        else:
            ok = (w1a.dim() == 2 and w1a.shape[1] == r and w1a.shape == w2a.shape and w1b.shape == w2b.shape)
        if not ok:
            raise self.format_error("hada_w1_a", "factor shapes do not agree: " + ", ".join(
                f"{k} {tuple(self.tensors[k].shape)}" for k in self.REQUIRED + (("hada_t1",) if self.tucker else ())))
        self.rank = r
        self.alpha = read_alpha(self.tensors.get("alpha"))
        self.scale = lora_scale(self.alpha, r)

    def expected_weight_shape(self):
        """(out, in·∏k) for the plain form, (out, in, k...) for Tucker."""
        w1a, w1b = self.tensors["hada_w1_a"], self.tensors["hada_w1_b"]
        if self.tucker:
            return (w1a.shape[1], w1b.shape[1], *self.tensors["hada_t1"].shape[2:])
        return (w1a.shape[0], w1b.reshape(w1b.shape[0], -1).shape[1])

    def shape_key(self):
        return "hada_w1_a"

    def fuses(self, layer: LayerSpec) -> bool:
        """Linear layers (plain form): y += x·(m·ΔW_s)ᵀ accumulated by one addmm (rank-r² factors or ΔW)."""
        return layer.kind == "linear" and not self.tucker

    def factorized_bypass(self, tokens: int, d_in: int, d_out: int) -> bool:
        """True when the rank-r² path (per call: U, V built, 2·tokens·r²·(in + out) FLOPs) costs fewer FLOPs than
        building ΔW (two rank-r products and a Hadamard: ~4·r·in·out) and a full product (2·tokens·in·out)."""
        r2 = self.rank * self.rank
        factored = 2 * tokens * r2 * (d_in + d_out) + r2 * (d_in + d_out)
        rebuilt = 4 * self.rank * d_in * d_out + d_in * d_out + 2 * tokens * d_in * d_out
        return factored < rebuilt

    def _face_split(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U (out, r²), V (r², in)) with U·V = (w1a·w1b) ⊙ (w2a·w2b), in `like`'s device/dtype (plain form)."""
        w1a, w1b, w2a, w2b = (self.t(k, like) for k in self.REQUIRED)
        u = (w1a.unsqueeze(2) * w2a.unsqueeze(1)).reshape(w1a.shape[0], -1)
        v = (w1b.unsqueeze(1) * w2b.unsqueeze(0)).reshape(-1, w1b.shape[1])
        return u, v

    def add_delta_(self, x: torch.Tensor, y: torch.Tensor, coeff, layer: LayerSpec) -> torch.Tensor:
        """y += coeff·x·ΔW_sᵀ in place: through the rank-r² factors (coefficient on the (tokens, r²) hidden) when
        `factorized_bypass` says so, else with ΔW_s = s·(w1a·w1b)⊙(w2a·w2b) built in x's dtype (coefficient
        folded into it)."""
        d_in = x.shape[-1]
        xm = x.reshape(-1, d_in)
        y2 = rows_view(y)
        if self.factorized_bypass(xm.shape[0], d_in, y.shape[-1]):
            u, v = self._face_split(x)
            h = xm @ v.t()
            h.mul_(coeff * self.scale)
            if y2 is None:
                return y.add_((h @ u.t()).view(y.shape))
            y2.addmm_(h, u.t())
            return y
        w1a, w1b, w2a, w2b = (self.t(k, x) for k in self.REQUIRED)
        dw = w1a @ w1b.reshape(w1b.shape[0], -1)
        dw.mul_(w2a @ w2b.reshape(w2b.shape[0], -1)).mul_(coeff * self.scale)
        if y2 is None:
            return y.add_(F.linear(x, dw))
        y2.addmm_(xm, dw.t())
        return y

    def delta_act(self, x: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
        """ΔW_s applied to x: linear layers and ungrouped convs (plain form) through the rank-r² factors when that
        is cheaper (a conv: x convolved with V as r² filters, then mixed by U), else op(x, ΔW_s)."""
        if self.fuses(layer) and self.factorized_bypass(x.numel() // x.shape[-1], x.shape[-1], layer.weight_shape[0]):
            u, v = self._face_split(x)
            return F.linear(F.linear(x, v), u) * self.scale
        if layer.kind == "conv" and not self.tucker and conv_groups(layer) == 1:
            out_ch, in_ch, *kernel = layer.weight_shape
            stride = layer.conv.get("stride", 1)
            positions = x.numel() // in_ch // math.prod(stride if isinstance(stride, (tuple, list)) else
                                                        [stride] * len(kernel))
            if self.factorized_bypass(positions, in_ch * math.prod(kernel), out_ch):
                u, v = self._face_split(x)
                h = conv_fn(len(kernel) + 2)(x, v.reshape(-1, in_ch, *kernel), **geometry(layer, groups=False))
                spatial = h.shape[2:]
                h = torch.matmul(u, h.reshape(h.shape[0], h.shape[1], -1))  # (batch, out, positions)
                return h.reshape(h.shape[0], out_ch, *spatial) * self.scale
        return super().delta_act(x, layer)

    def delta_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """s·T1 ⊙ T2 on `weight`'s device/dtype (s applied once)."""
        w1a, w1b, w2a, w2b = (self.t(k, weight) for k in self.REQUIRED)
        if self.tucker:
            t1, t2 = self.t("hada_t1", weight), self.t("hada_t2", weight)
            p1 = torch.einsum("ij...,io,jc->oc...", t1, w1a, w1b)
            p2 = torch.einsum("ij...,io,jc->oc...", t2, w2a, w2b)
        else:
            p1 = (w1a * self.scale) @ w1b.reshape(w1b.shape[0], -1)  # s on the small factor
            p2 = w2a @ w2b.reshape(w2b.shape[0], -1)
            return p1.mul_(p2)
        return p1 * p2 * self.scale
