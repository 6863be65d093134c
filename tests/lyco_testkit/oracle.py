# SPDX-License-Identifier: GPL-3.0-or-later
"""Reference outputs with SimpleTuner's validation semantics (lycoris-format.md §2.1, §4.4).

SimpleTuner validates with the LIVE training network (never merged): every wrapped module runs
``org_forward(x) + Δ`` (rebuild: ``op(x, W' − W)``; bypass when the network was created with ``bypass_mode``),
``network.set_multiplier(validation_lycoris_strength)`` writes ``m`` on every module, and for T-LoRA each denoiser
call is wrapped in ``set_timestep_mask(compute_timestep_mask(int(t), 1000, linear_dim, tlora_min_rank,
tlora_alpha))`` … ``clear_timestep_mask()``. :func:`reference_output` reproduces exactly that on the twin's
diffusers side; :func:`base_output` runs a pristine copy (multiplier 0 is NOT "no adapter": rebuild-mode DoRA still
applies W+ΔW renormalised, §2.2).

CAVEAT: this is lycoris-lora 4.1.3's behaviour, bugs included. Where 4.1.3 is known to be wrong or to crash
(lycoris-format.md §6.1: LoHa/LoKr merge s², DoRA ignored in bypass, IA3/OFT/BOFT bypass transforming the bias,
Diag-OFT bypass with m ≠ 1 crashing on Linear activations, per-sample T-LoRA masks, bf16 T-LoRA without autocast),
tests must compare the pack against written-out maths instead of (or in addition to) this oracle.
"""
from __future__ import annotations

import torch

MAX_TIMESTEP = 1000


def tlora_mask_for(artifact, inputs: dict) -> torch.Tensor:
    """SimpleTuner's inference mask for ``inputs`` (``int(inputs["tlora_t"])``, T = 1000, the artifact's
    schedule): ``lycoris.modules.tlora.compute_timestep_mask`` → float32 (1, max_rank)."""
    from lycoris.modules.tlora import compute_timestep_mask

    if artifact.tlora is None:
        raise ValueError("not a T-LoRA artifact")
    s = artifact.tlora
    return compute_timestep_mask(int(inputs["tlora_t"]), MAX_TIMESTEP, s["max_rank"], s["min_rank"], s["alpha"])


def reference_output(twin, artifact, multiplier: float, inputs: dict, *, tlora_mask=None) -> torch.Tensor:
    """The adapted diffusers output at strength ``multiplier`` (SimpleTuner validation), in the twin's layout.

    ``tlora_mask``: None = no mask set (all ranks on, what pipelines without the hook do); a (1, R) tensor; or
    ``"auto"`` = :func:`tlora_mask_for` (what SimpleTuner's pipelines do). The mask is cleared afterwards and the
    multiplier reset to 1.0 (``clean_pipeline``)."""
    from lycoris.modules.tlora import clear_timestep_mask, set_timestep_mask

    net = artifact.network
    if isinstance(tlora_mask, str):
        if tlora_mask != "auto":
            raise ValueError(f"tlora_mask must be None, a tensor or 'auto', not {tlora_mask!r}")
        tlora_mask = tlora_mask_for(artifact, inputs)
    net.set_multiplier(float(multiplier))
    try:
        if tlora_mask is not None:
            set_timestep_mask(tlora_mask)
        return twin.run_diffusers(artifact.model, inputs)
    finally:
        clear_timestep_mask()
        net.set_multiplier(1.0)


def base_output(twin, inputs: dict) -> torch.Tensor:
    """The un-adapted diffusers output (a pristine copy of the twin's model, not multiplier 0)."""
    return twin.run_diffusers(twin._pristine, inputs)


__all__ = ["reference_output", "base_output", "tlora_mask_for", "MAX_TIMESTEP"]
