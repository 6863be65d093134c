# SPDX-License-Identifier: GPL-3.0-or-later
"""Change the LyCORIS multiplier of already-loaded adapters without reloading or re-parsing anything.

Bypass: a new injection over the same adapters (and cached device copies) with another python-float strength,
so no tensor is touched. Merged: the strength of this pack's patches is rewritten in the clone's patch list and
`patches_uuid` bumped, so ComfyUI recomputes only the patched weights at the next load.
"""
from __future__ import annotations

import dataclasses
import math
import uuid

from ..lycoris_core.errors import LycorisError
from .apply import ATTACHMENT, loaded_lycoris
from .merged import LycorisWeightAdapter


def set_strength(patcher, strength: float, name: str | None = None):
    """A clone of `patcher` whose LyCORIS loads (all, or those from file `name`) use multiplier `strength`."""
    if not math.isfinite(strength):
        raise LycorisError(f"strength must be a finite number, got {strength!r}.")
    records = loaded_lycoris(patcher)
    if not records:
        raise LycorisError("This model carries no LyCORIS loaded by 'Load LyCORIS'; connect the loader's output.")
    if name and not any(r.name == name for r in records):
        known = ", ".join(r.name for r in records)
        raise LycorisError(f"No LyCORIS named {name!r} on this model (loaded: {known}); leave lycoris_name empty "
                           "to set them all.")
    clone = patcher.clone()
    updated, merged_ids = [], set()
    for record in records:
        if name and record.name != name:
            updated.append(record)
            continue
        injection = record.injection
        if injection is not None:
            injection = injection.with_strength(strength)
            injection.install(clone)
        else:
            merged_ids.update(id(adapter) for adapter, _ in record.adapters.values())
        updated.append(dataclasses.replace(record, strength=float(strength), injection=injection))
    if merged_ids:
        for key, patch_list in clone.patches.items():
            clone.patches[key] = [
                (float(strength),) + p[1:]
                if isinstance(p[1], LycorisWeightAdapter) and id(p[1].adapter) in merged_ids else p
                for p in patch_list
            ]
        clone.patches_uuid = uuid.uuid4()
    clone.attachments[ATTACHMENT] = tuple(updated)
    return clone
