# SPDX-License-Identifier: GPL-3.0-or-later
"""T-LoRA in ComfyUI: SimpleTuner's per-timestep rank mask, written at every model call, read by the hooks.

A keyed APPLY_MODEL wrapper sees sigma and the model's `model_sampling`; it turns sigma into SimpleTuner's
timestep (1000·sigma for flow models, the discrete index for eps/v models) and writes the rank mask in place into
one preallocated buffer per (device, dtype) of its schedule, with tensor ops only (no `.item()`, no host copy).
Every T-LoRA module of the model reads that buffer in its bypass hook. Cond and uncond share one batched call,
hence one sigma and one mask.
"""
from __future__ import annotations

import uuid

import torch
import comfy.model_sampling
import comfy.patcher_extension

from ..lycoris_core.tlora_schedule import fill_mask_

MAX_TIMESTEP = 1000  # SimpleTuner's num_train_timesteps for every standard scheduler


def model_timestep(model_sampling, sigma: torch.Tensor) -> torch.Tensor:
    """SimpleTuner's T-LoRA timestep for `sigma` (a tensor): 1000·sigma for flow (CONST) models, else the
    model's own discrete timestep (nearest training index for SD1.x/SDXL). Float tensor, same device."""
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        # ComfyUI's sigma is already shifted; ModelSamplingFlux.timestep(sigma) would return sigma itself (0..1).
        return sigma.float() * MAX_TIMESTEP
    return model_sampling.timestep(sigma).float()


class TLoraSchedule:
    """The mask parameters of one loaded T-LoRA file and its device buffers (`max_rank` ranks each)."""

    def __init__(self, max_rank: int, min_rank: int, alpha: float, source: str = ""):
        self.max_rank = int(max_rank)
        self.min_rank = int(min_rank)
        self.alpha = float(alpha)
        self.source = source
        self.key = f"lycoris_tlora_{uuid.uuid4().hex[:12]}"
        self._buffers: dict[tuple, torch.Tensor] = {}

    def buffer(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The (max_rank,) mask buffer on `device` in `dtype`; all ranks on until the first model call."""
        device = torch.device(device)
        buf = self._buffers.get((device, dtype))
        if buf is None:
            # Allocated once, outside inference mode, so in-place writes work inside and outside it; a new dtype
            # starts from the current mask of another buffer on the same device.
            same_device = [b for (d, _), b in self._buffers.items() if d == device]
            with torch.inference_mode(False):
                buf = torch.ones(self.max_rank, device=device, dtype=dtype)
                if same_device:
                    buf.copy_(same_device[0])
            self._buffers[(device, dtype)] = buf
        return buf

    def update(self, timestep: torch.Tensor, device: torch.device, dtype: torch.dtype) -> None:
        """Write the mask for `timestep` (0-d tensor) into every buffer of this schedule on `device`."""
        device = torch.device(device)
        self.buffer(device, dtype)
        for (dev, _), buf in self._buffers.items():
            if dev == device:
                fill_mask_(buf, timestep, self.max_rank, self.min_rank, self.alpha, MAX_TIMESTEP)

    def apply_model_wrapper(self, executor, x, t, *args, **kwargs):
        """ComfyUI APPLY_MODEL wrapper: update the mask from this call's sigma, then run the model."""
        model_sampling = executor.class_obj.model_sampling
        self.update(model_timestep(model_sampling, t[0]), x.device, x.dtype)
        return executor(x, t, *args, **kwargs)

    def install(self, patcher) -> None:
        """Register this schedule's APPLY_MODEL wrapper on `patcher` (a clone owned by the caller)."""
        patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, self.key, self.apply_model_wrapper)

    def uninstall(self, patcher) -> None:
        """Remove this schedule's wrapper from `patcher`."""
        patcher.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, self.key)

    def describe(self) -> str:
        """One line: the parameters and where they came from."""
        return (f"T-LoRA mask: max_rank {self.max_rank}, min_rank {self.min_rank}, alpha {self.alpha:g}"
                f"{' (' + self.source + ')' if self.source else ''}")
