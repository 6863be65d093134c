# SPDX-License-Identifier: GPL-3.0-or-later
"""What the T-LoRA Sampler Wrapper node does to a model: override, or disable, its loaded T-LoRA schedules."""
from __future__ import annotations

import dataclasses

from ..lycoris_core.errors import LycorisError
from .apply import ATTACHMENT, default_schedule, loaded_lycoris
from .tlora import TLoraSchedule


def configure_tlora(patcher, min_rank: int = -1, alpha: float = 0.0, enabled: bool = True):
    """(clone, text): a clone of `patcher` whose T-LoRA loads use the given schedule parameters (min_rank -1 and
    alpha <= 0 keep the file's values) or, with enabled False, all ranks at every step."""
    records = loaded_lycoris(patcher)
    tlora_records = [r for r in records if r.schedule is not None]
    if not tlora_records:
        raise LycorisError("No T-LoRA on this model: load a T-LoRA file with 'Load LyCORIS' (mode auto or bypass) "
                           "and connect its MODEL output here.")
    if min_rank < -1 or min_rank == 0:
        raise LycorisError(f"min_rank must be -1 (from the file) or >= 1, got {min_rank}.")
    clone = patcher.clone()
    updated, lines = [], []
    for record in records:
        if record.schedule is None:
            updated.append(record)
            continue
        record.schedule.uninstall(clone)
        schedule = None
        if enabled:
            base = default_schedule(record.adapters, record.config)
            sources = [base.source] if base.source else []
            min_r, a = base.min_rank, base.alpha
            if min_rank >= 1:
                min_r, sources = min(min_rank, base.max_rank), sources + ["min_rank from the node"]
            if alpha > 0:
                a, sources = alpha, sources + ["alpha from the node"]
            schedule = TLoraSchedule(base.max_rank, min_r, a, "; ".join(sources))
            schedule.install(clone)
            lines.append(f"{record.name}: {schedule.describe()}")
        else:
            lines.append(f"{record.name}: T-LoRA mask disabled (all ranks at every step)")
        injection = record.injection.with_schedule(schedule)
        injection.install(clone)
        # Keep a schedule object even when disabled so the node can be re-applied downstream.
        updated.append(dataclasses.replace(record, injection=injection,
                                           schedule=schedule or record.schedule))
    clone.attachments[ATTACHMENT] = tuple(updated)
    return clone, "\n".join(lines)
