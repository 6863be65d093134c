# SPDX-License-Identifier: GPL-3.0-or-later
"""What the T-LoRA Sampler Wrapper node does to a model: override, or disable, its loaded T-LoRA schedules, say
which parameters are used and where they came from, and draw the schedule."""
from __future__ import annotations

import dataclasses

import torch

from ..lycoris_core.errors import LycorisError
from .apply import ATTACHMENT, loaded_lycoris
from .tlora import (DEFAULT_PLOT_SCHEDULER, DEFAULT_PLOT_STEPS, TLoraSchedule, render_schedule_image,
                    schedule_params, schedule_source, schedule_table)
from .tlora_base_cache import install_base_preparation, quantized_targets


def file_params(record) -> tuple[dict, dict]:
    """({"max_rank", "min_rank", "alpha"}, {name: where, in words}) of a loaded T-LoRA file."""
    ranks = [a.rank for a, _ in record.adapters.values() if a.algo == "tlora"]
    return schedule_params(ranks, record.config, record.config_source)


def _describe(record, schedule: TLoraSchedule | None, where: dict) -> str:
    if schedule is None:
        return f"{record.name}: T-LoRA mask OFF (all ranks at every step, what a merged T-LoRA renders)"
    parts = [f"max_rank {schedule.max_rank} ({where['max_rank']})", f"min_rank {schedule.min_rank} "
             f"({where['min_rank']})", f"alpha {schedule.alpha:g} ({where['alpha']})"]
    ranks = [a.rank for a, _ in record.adapters.values() if a.algo == "tlora"]
    odd = sum(1 for r in ranks if r != schedule.max_rank)
    text = f"{record.name}: T-LoRA mask on, " + "; ".join(parts)
    if odd:
        text += (f"\n  {odd} of {len(ranks)} T-LoRA modules have another rank than max_rank: the mask is truncated "
                 f"for smaller ones, extra ranks stay on for larger ones (as LyCORIS does)")
    return text


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
        params, where = file_params(record)
        schedule = None
        if enabled:
            if min_rank >= 1:
                params["min_rank"], where["min_rank"] = min(min_rank, params["max_rank"]), "from this node"
                if min_rank > params["max_rank"]:
                    where["min_rank"] += f", clamped to max_rank (asked {min_rank})"
            if alpha > 0:
                params["alpha"], where["alpha"] = float(alpha), "from this node"
            schedule = TLoraSchedule(params["max_rank"], params["min_rank"], params["alpha"],
                                     schedule_source(where))
            schedule.install(clone)
        lines.append(_describe(record, schedule, where))
        injection = record.injection.with_schedule(schedule)
        injection.install(clone)
        # Keep a schedule object even when disabled so the node can be re-applied downstream; the injection's
        # schedule (active_schedule) says whether the mask is on.
        updated.append(dataclasses.replace(record, injection=injection, schedule=schedule or record.schedule))
    install_base_preparation(clone)
    clone.attachments[ATTACHMENT] = tuple(updated)
    quantized = quantized_targets(clone)
    if quantized:
        lines.append(f"warning: {len(quantized)} T-LoRA target weight(s) are stored quantized (fp8 or similar, e.g. "
                     f"{quantized[0]}): the T-LoRA base is rebuilt from the dequantized weight, which differs from "
                     f"training; load the base model in bf16/fp16 for SimpleTuner's exact result.")
    return clone, "\n".join(lines)


def active_schedule(record) -> TLoraSchedule | None:
    """The schedule the hooks of `record` read (None: mask off)."""
    return None if record.injection is None else record.injection.schedule


def schedule_image(patcher, sigmas: torch.Tensor | None = None) -> torch.Tensor:
    """IMAGE of the active rank at every model evaluation of `sigmas` (default: 20 steps of the 'simple'
    scheduler), one panel per T-LoRA load on `patcher`."""
    model_sampling = patcher.get_model_object("model_sampling")
    note = "for the connected sigmas"
    if sigmas is None or sigmas.numel() < 2:
        import comfy.samplers
        sigmas = comfy.samplers.calculate_sigmas(model_sampling, DEFAULT_PLOT_SCHEDULER, DEFAULT_PLOT_STEPS)
        note = f"{DEFAULT_PLOT_STEPS} steps of '{DEFAULT_PLOT_SCHEDULER}' (connect SIGMAS for your sampler)"
    panels = []
    for record in loaded_lycoris(patcher):
        if record.schedule is None:
            continue
        schedule = active_schedule(record)
        rows = schedule_table(model_sampling, sigmas, schedule, record.schedule.max_rank)
        if schedule is None:
            title = f"{record.name}: mask off, all {record.schedule.max_rank} ranks"
        else:
            title = (f"{record.name}: active rank per step (max {schedule.max_rank}, min {schedule.min_rank}, "
                     f"alpha {schedule.alpha:g})")
        ranks = " ".join(str(r[3]) for r in rows[:24]) + (" ..." if len(rows) > 24 else "")
        panels.append({"title": title, "subtitle": f"{note}: {ranks}", "rows": rows,
                       "max_rank": record.schedule.max_rank})
    return render_schedule_image(panels)
