# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers shared by the reliability tests: the state hash that proves a model was not modified."""
from __future__ import annotations

import hashlib


def state_hash(patcher) -> str:
    """sha256 over every tensor of the model's state dict (names, dtypes, shapes and bytes)."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(patcher.model.state_dict().items()):
        h.update(k.encode())
        h.update(f"{v.dtype}{tuple(v.shape)}".encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def assert_untouched(patcher, before: str) -> None:
    """The patcher carries no patches, injections or LyCORIS record, and its weights hash as before."""
    assert not patcher.patches, "the input ModelPatcher got weight patches"
    assert not patcher.injections, "the input ModelPatcher got injections"
    assert "lycoris" not in patcher.attachments, "the input ModelPatcher got a LyCORIS record"
    assert state_hash(patcher) == before, "the input model's weights changed"
