# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared OFT pieces: the constrained Cayley transform and the output-rows contract of Diag-OFT and BOFT."""
from __future__ import annotations

import torch

from ..layer import LayerSpec
from .base import Adapter, read_alpha


def cayley(blocks: torch.Tensor, constraint: float) -> torch.Tensor:
    """R = (I + Q)(I − Q)⁻¹ per block, Q = B − Bᵀ (last two axes); fp32 (fp64 stays fp64).

    With constraint > 0 (already multiplied by `out`), Q is rescaled to Frobenius norm `constraint` when
    ‖Q‖_F + 1e-8 (over the whole tensor, all blocks and stages) exceeds it (`lycoris/functional/diag_oft.py:get_r`).
    """
    work = blocks if blocks.dtype == torch.float64 else blocks.float()
    q = work - work.transpose(-1, -2)
    if constraint > 0:  # a file constant, not the multiplier
        qn = torch.linalg.vector_norm(q) + 1e-8
        q = q * torch.where(qn > constraint, constraint / qn, torch.ones_like(qn))
    eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype)
    return (eye + q) @ torch.linalg.inv_ex(eye - q)[0]


class OFTBase(Adapter):
    """Common parts of Diag-OFT and BOFT: `oft_blocks`, raw-constraint `alpha`, optional `rescale` (out, 1...)."""

    REQUIRED = ("oft_blocks",)
    OPTIONAL = ("rescale", "alpha")

    def __init__(self, name, tensors, source=""):
        super().__init__(name, tensors, source)
        self._check_blocks(self._need("oft_blocks"))
        self.alpha = read_alpha(self.tensors.get("alpha"))
        self.constraint = float(self.alpha or 0.0)  # raw, as stored; threshold is constraint·out
        rescale = self.tensors.get("rescale")
        if rescale is not None and rescale.numel() != self.out_features:
            raise self.format_error("rescale", f"{rescale.numel()} entries for {self.out_features} output rows")

    def _check_blocks(self, blocks: torch.Tensor) -> None:
        """Validate `oft_blocks`' layout and set `rank` (the block size)."""
        raise NotImplementedError

    @property
    def out_features(self) -> int:
        """Output rows the blocks cover."""
        raise NotImplementedError

    def expected_weight_shape(self):
        """None: OFT fixes only the output rows (checked by `check_target`)."""
        return None

    def check_target(self, weight_shape, where):
        """The blocks must cover exactly the weight's output rows."""
        if not weight_shape or weight_shape[0] != self.out_features:
            raise self.shape_error(where, "oft_blocks", (self.out_features, *tuple(weight_shape)[1:]), weight_shape)

    def rotation(self, like: torch.Tensor) -> torch.Tensor:
        """The Cayley R of every block on `like`'s device in `like`'s dtype, cached per (device, dtype)."""
        key = ("R", like.device, like.dtype)
        r = self._cache.get(key)
        if r is None:
            blocks = self.tensors["oft_blocks"].to(device=like.device)
            r = self._cache[key] = cayley(blocks, self.constraint * self.out_features).to(like.dtype)
        return r

    def rescale_vec(self, like: torch.Tensor) -> torch.Tensor | None:
        """`rescale` as an (out,) vector on `like`'s device/dtype, or None."""
        r = self.t("rescale", like)
        return None if r is None else r.reshape(-1)


def channels_last(y: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
    """y with its channel axis last (a view; conv outputs move axis 1)."""
    return y.movedim(1, -1) if layer.kind == "conv" else y


def channels_back(y: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
    """Inverse of `channels_last`."""
    return y.movedim(-1, 1) if layer.kind == "conv" else y
