# SPDX-License-Identifier: GPL-3.0-or-later
"""LoKr: ΔW = s·W1 ⊗ W2 (reference §3.2, `lycoris/modules/lokr.py`), shapes derived from the tensors only.

Written here rather than taken from lycoris-lora 4.1.3 because its merge applies s twice (§6.1.1) and its loader
re-derives factor shapes from a guessed `factor` (fails for `unbalanced_factorization`, §2.3). Rules kept:
- W1 = `lokr_w1` (a, c) or `lokr_w1_a`@`lokr_w1_b`; W2 = `lokr_w2` (b, d[, k...]), `lokr_w2_a`@`lokr_w2_b`
  ((b, r)@(r, d·∏k)), or Tucker `lokr_t2` (r, r, k...) with `lokr_w2_a` (r, b), `lokr_w2_b` (r, d);
- rank r = w1_a.size(1), else t2.size(0) (Tucker: w2_a is (r, b), so w2_a.size(1) would be b), else w2_a.size(1);
- both factors full: s = 1 whatever `alpha` says (`lokr.py:210-212`); else s = alpha/r.
Bypass on a linear layer uses the Kronecker identity (W1⊗W2)·vec(X) = vec(W1·X·W2ᵀ), on an ungrouped conv its
convolutional form (conv with W2 per group of input channels, then W1 across groups); neither builds ΔW.
"""
from __future__ import annotations

import torch

from ..layer import LayerSpec
from .additive import AdditiveAdapter, rows_view
from .base import conv_fn, conv_groups, geometry, layer_op, lora_scale, read_alpha


class LoKrAdapter(AdditiveAdapter):
    """LoKr module (keys above), optional `alpha`, `dora_scale`."""

    algo = "lokr"
    REQUIRED = ()
    OPTIONAL = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha",
                "dora_scale")

    @classmethod
    def key_problems(cls, keys):
        """(missing, unknown): w1 needs `lokr_w1` or both `lokr_w1_a`/`lokr_w1_b`; likewise w2; t2 needs w2_a/b."""
        missing, unknown = super().key_problems(keys)
        for n in ("1", "2"):
            full, a, b = f"lokr_w{n}", f"lokr_w{n}_a", f"lokr_w{n}_b"
            if full not in keys:
                if a not in keys and b not in keys:
                    missing.append(f"{full} (or {a} + {b})")
                elif a not in keys:
                    missing.append(a)
                elif b not in keys:
                    missing.append(b)
        if "lokr_t2" in keys and not {"lokr_w2_a", "lokr_w2_b"} <= keys:
            missing.extend(k for k in ("lokr_w2_a", "lokr_w2_b") if k not in keys and k not in missing)
        return missing, unknown

    def __init__(self, name, tensors, source=""):
        super().__init__(name, tensors, source)
        missing, _ = self.key_problems(set(self.tensors))
        if missing:
            raise self.format_error(missing[0], "missing")
        g = self.tensors.get
        self.w1_full = g("lokr_w1") is not None
        self.w2_full = g("lokr_w2") is not None
        self.tucker = not self.w2_full and g("lokr_t2") is not None
        a, c = self._w1_shape()
        w2_shape = self._w2_shape()
        if self.w1_full and self.w2_full:
            rank = None
        elif not self.w1_full:
            rank = g("lokr_w1_a").shape[1]
        elif self.tucker:
            rank = g("lokr_t2").shape[0]
        else:
            rank = g("lokr_w2_a").shape[1]
        self.rank = rank
        self.alpha = read_alpha(g("alpha"))
        # Both factors full: LyCORIS forces alpha = lora_dim, i.e. s = 1; the stored alpha is meaningless.
        self.scale = 1.0 if rank is None else lora_scale(self.alpha, rank)
        self._shape = (a * w2_shape[0], c * w2_shape[1], *w2_shape[2:])

    def _w1_shape(self) -> tuple[int, int]:
        g = self.tensors.get
        if self.w1_full:
            w1 = g("lokr_w1")
            if w1.dim() != 2:
                raise self.format_error("lokr_w1", f"shape {tuple(w1.shape)} is not 2-D (a, c)")
            return tuple(w1.shape)
        w1a, w1b = g("lokr_w1_a"), g("lokr_w1_b")
        if w1a.dim() != 2 or w1b.dim() != 2 or w1a.shape[1] != w1b.shape[0]:
            raise self.format_error("lokr_w1_a", f"lokr_w1_a {tuple(w1a.shape)} and lokr_w1_b "
                                    f"{tuple(w1b.shape)} do not multiply")
        return (w1a.shape[0], w1b.shape[1])

    def _w2_shape(self) -> tuple[int, ...]:
        g = self.tensors.get
        if self.w2_full:
            return tuple(g("lokr_w2").shape)
        w2a, w2b = g("lokr_w2_a"), g("lokr_w2_b")
        if self.tucker:
            t2 = g("lokr_t2")
            if (w2a.dim() != 2 or w2b.dim() != 2 or t2.dim() < 3 or t2.shape[0] != w2a.shape[0]
                    or t2.shape[1] != w2b.shape[0]):
                raise self.format_error("lokr_t2", f"lokr_t2 {tuple(t2.shape)}, lokr_w2_a {tuple(w2a.shape)} and "
                                        f"lokr_w2_b {tuple(w2b.shape)} do not form a Tucker factor")
            return (w2a.shape[1], w2b.shape[1], *t2.shape[2:])
        if w2a.dim() != 2 or w2a.shape[1] != w2b.shape[0]:
            raise self.format_error("lokr_w2_a", f"lokr_w2_a {tuple(w2a.shape)} and lokr_w2_b "
                                    f"{tuple(w2b.shape)} do not multiply")
        return (w2a.shape[0], w2b.reshape(w2b.shape[0], -1).shape[1])

    def expected_weight_shape(self):
        """(a·b, c·d[, k...]); (a·b, c·d·∏k) when the conv W2 is stored flattened."""
        return self._shape

    def shape_key(self):
        return "lokr_w2" if self.w2_full else "lokr_w2_b"

    def _w1(self, ref: torch.Tensor) -> torch.Tensor:
        if self.w1_full:
            return self.t("lokr_w1", ref)
        return self.t("lokr_w1_a", ref) @ self.t("lokr_w1_b", ref)

    def _w2(self, ref: torch.Tensor) -> torch.Tensor:
        if self.w2_full:
            return self.t("lokr_w2", ref)
        w2a, w2b = self.t("lokr_w2_a", ref), self.t("lokr_w2_b", ref)
        if self.tucker:
            return torch.einsum("ij...,ip,jq->pq...", self.t("lokr_t2", ref), w2a, w2b)
        return w2a @ w2b.reshape(w2b.shape[0], -1)

    def delta_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """s·kron(W1, W2) on `weight`'s device/dtype, shape `expected_weight_shape()`."""
        w1, w2 = self._w1(weight), self._w2(weight)
        w1 = (w1 * self.scale).reshape(*w1.shape, *([1] * (w2.dim() - 2)))  # s on the small factor
        return torch.kron(w1, w2.contiguous())

    def fuses(self, layer: LayerSpec) -> bool:
        """Linear layers: the Kronecker identity, the last product accumulated into y (baddbmm or addmm)."""
        return layer.kind == "linear"

    def add_delta_(self, x: torch.Tensor, y: torch.Tensor, coeff, layer: LayerSpec) -> torch.Tensor:
        """y += coeff·s·vec(W1·X·W2ᵀ) in place, no ΔW, in the cheaper order of the two products: W2 first
        (H = X·W2ᵀ (tokens, c, b) in one GEMM, then y viewed (tokens, a, b) gets (coeff·s·W1)·H by a batched GEMM
        with a broadcast W1) or W1 first (Z = (coeff·s·W1)·X (tokens, a, d), then y viewed (tokens·a, b) gets Z·W2ᵀ
        by one addmm). No output-sized temporary when y is contiguous (a row slice of a fused output gets the
        product through one temporary)."""
        w1 = self._w1(x)
        a, c = w1.shape
        b = y.shape[-1] // a
        h = x.reshape(-1, c, x.shape[-1] // c)  # (M, c, d)
        w1 = w1 * (coeff * self.scale)
        m = h.shape[0]
        if not self.w2_full:
            # W2 = w2_a·w2_b (rank r): X·w2_bᵀ (M, c, r), then W1· (M, a, r), then ·w2_aᵀ accumulated into y; every
            # intermediate is rank-sized, y is read and written once (as LoRA)
            g = torch.matmul(w1, h @ self.t("lokr_w2_b", x).transpose(0, 1))  # (M, a, r)
            w2a = self.t("lokr_w2_a", x)
            y2 = rows_view(y)
            if y.is_contiguous() and y2 is not None:
                y2.view(m * a, b).addmm_(g.reshape(m * a, -1), w2a.t())
            else:
                y.add_((g @ w2a.t()).view(y.shape))
            return y
        d = h.shape[-1]
        w2 = self.t("lokr_w2", x).reshape(b, -1)
        if a * c * d + a * d * b < c * d * b + a * c * b:  # W1 first: fewer FLOPs (out wider than in)
            z = torch.matmul(w1, h)  # (M, a, d)
            if y.is_contiguous():
                y.view(m * a, b).addmm_(z.view(m * a, d), w2.t())
            else:
                y.add_((z @ w2.t()).view(y.shape))
            return y
        h = h @ w2.transpose(0, 1)  # (M, c, b)
        if y.is_contiguous():
            y.view(m, a, b).baddbmm_(w1.expand(m, a, c), h)
        else:  # a row slice of a fused output: baddbmm into strided memory falls back to a slow per-batch loop
            y.add_(torch.matmul(w1, h).view(y.shape))
        return y

    def _conv_delta(self, x: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
        """Ungrouped conv with ΔW = s·W1 ⊗ W2 (W2 (b, d, k...)): the input's c·d channels viewed as c groups of d,
        each convolved with W2 (one conv over batch·c images, d -> b channels, the layer's stride/padding/dilation),
        then mixed over c by W1: a times fewer conv FLOPs than convolving with ΔW, and no ΔW built."""
        w1 = self._w1(x) * self.scale
        a, c = w1.shape
        out_ch, in_ch, *kernel = layer.weight_shape
        w2 = self._w2(x).reshape(out_ch // a, in_ch // c, *kernel)
        n = x.shape[0]
        h = conv_fn(w2.dim())(x.reshape(n * c, in_ch // c, *x.shape[2:]), w2, **geometry(layer, groups=False))
        spatial = h.shape[2:]
        h = torch.matmul(w1, h.reshape(n, c, -1))  # (n, a, b·spatial)
        return h.reshape(n, out_ch, *spatial)

    def delta_act(self, x: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
        """Linear: s·vec(W1·X·W2ᵀ) with X = x viewed (..., c, d), no ΔW built; ungrouped conv: `_conv_delta`;
        anything else: op(x, ΔW_s)."""
        if layer.kind == "conv" and conv_groups(layer) == 1:
            return self._conv_delta(x, layer)
        if layer.kind != "linear":
            return layer_op(layer, x, self.delta_weight(x.new_empty(())))
        w1 = self._w1(x)
        a, c = w1.shape
        h = x.reshape(*x.shape[:-1], c, x.shape[-1] // c)  # (..., c, d)
        if self.w2_full:
            h = h @ self.t("lokr_w2", x).reshape(self._shape[0] // a, -1).transpose(0, 1)  # (..., c, b)
        else:
            h = (h @ self.t("lokr_w2_b", x).transpose(0, 1)) @ self.t("lokr_w2_a", x).transpose(0, 1)
        h = h.transpose(-1, -2) @ w1.transpose(0, 1)  # (..., b, a)
        return h.transpose(-1, -2).reshape(*x.shape[:-1], -1) * self.scale
