# SPDX-License-Identifier: GPL-3.0-or-later
"""T-LoRA in ComfyUI: SimpleTuner's per-timestep rank mask, written at every model call, read by the hooks.

A keyed APPLY_MODEL wrapper sees sigma and the model's `model_sampling`; it turns sigma into SimpleTuner's
timestep (int(1000·sigma) for flow models, the discrete index for eps/v models; reference §4.5) and writes the rank
mask in place into its schedule's preallocated buffer (one per device and dtype the hooks use, normally one: the
model's compute dtype), with tensor ops only (no `.item()`, no host copy). Every T-LoRA module of the model reads
that buffer in its bypass hook. Cond and uncond share one batched call, hence one sigma and one mask. Each load
has its own schedule (its own wrapper key and buffer), so two T-LoRA models in one graph never share a mask.

`install` also registers the ON_PRE_RUN callback of `tlora_base_cache` that prepares the SVD bases (unpatched
weight, cached on disk) before the first step. `schedule_table` / `render_schedule_image` draw the rank per step.
"""
from __future__ import annotations

import uuid

import torch
import comfy.model_sampling
import comfy.patcher_extension

from ..lycoris_core.errors import LycorisError
from ..lycoris_core.tlora_schedule import active_rank, fill_mask_, tlora_params_from_config
from .tlora_base_cache import install_base_preparation

MAX_TIMESTEP = 1000  # SimpleTuner's num_train_timesteps for every standard scheduler


def model_timestep(model_sampling, sigma: torch.Tensor) -> torch.Tensor:
    """SimpleTuner's T-LoRA timestep for `sigma` (a tensor), as the integer its pipelines pass (`int(t)`):
    floor(1000·sigma) for flow (CONST) models, computed in fp32 like diffusers' `timesteps = sigmas * 1000`; else
    the model's own discrete timestep (the nearest training index for SD1.x/SDXL; floor(t + 1e-4) in case a
    ComfyUI version interpolates). Float tensor on sigma's device; tensor ops only (no host sync)."""
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        # ComfyUI's sigma is already shifted; ModelSamplingFlux.timestep(sigma) would return sigma itself (0..1).
        return torch.floor(sigma.float() * MAX_TIMESTEP)
    return torch.floor(model_sampling.timestep(sigma).float() + 1e-4)


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
        """ComfyUI APPLY_MODEL wrapper: update the mask from this call's sigma, then run the model.

        Per call: a few tiny device ops (timestep, rank, compare, copy_ into the buffer); no host sync, no
        host-to-device copy. The buffer is first made in the model's compute dtype (what the hooks see)."""
        model = executor.class_obj
        self.update(model_timestep(model.model_sampling, t[0]), x.device, _compute_dtype(model, x.dtype))
        return executor(x, t, *args, **kwargs)

    def install(self, patcher) -> None:
        """Register this schedule's APPLY_MODEL wrapper on `patcher` (a clone owned by the caller), and the
        ON_PRE_RUN callback that prepares the T-LoRA SVD bases before sampling (once per patcher)."""
        self.uninstall(patcher)
        kind = comfy.patcher_extension.WrappersMP.APPLY_MODEL
        patcher.add_wrapper_with_key(kind, self.key, self.apply_model_wrapper)
        install_base_preparation(patcher)

    def uninstall(self, patcher) -> None:
        """Remove this schedule's wrapper from `patcher`."""
        patcher.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, self.key)

    def ranks_for(self, timesteps) -> list[int]:
        """Active rank at each SimpleTuner timestep (host values; for display)."""
        return [active_rank(float(t), self.max_rank, self.min_rank, self.alpha, MAX_TIMESTEP) for t in timesteps]

    def describe(self) -> str:
        """One line: the parameters and where they came from."""
        return (f"T-LoRA mask: max_rank {self.max_rank}, min_rank {self.min_rank}, alpha {self.alpha:g}"
                f"{' (' + self.source + ')' if self.source else ''}")


def _compute_dtype(model, fallback: torch.dtype) -> torch.dtype:
    """The dtype the model's layers compute in (manual cast dtype, else the weight dtype)."""
    dtype = getattr(model, "manual_cast_dtype", None)
    if dtype is None:
        try:
            dtype = model.get_dtype()
        except Exception:  # noqa: BLE001 - unusual model objects: the latent's dtype
            dtype = fallback
    return dtype if dtype.is_floating_point and dtype.itemsize >= 2 else fallback


# ------------------------------------------------------------------------------------------ schedule picture
DEFAULT_PLOT_STEPS = 20
DEFAULT_PLOT_SCHEDULER = "simple"


def schedule_table(model_sampling, sigmas: torch.Tensor, schedule: TLoraSchedule | None, max_rank: int):
    """[(step, sigma, timestep, rank)] for the model evaluations at `sigmas` (the final sigma, normally 0, is not
    evaluated); schedule None means the mask is off (all ranks)."""
    sig = sigmas.detach().float().cpu().reshape(-1)
    if sig.numel() > 1:
        sig = sig[:-1]
    ts = model_timestep(model_sampling, sig).tolist() if sig.numel() else []
    ranks = schedule.ranks_for(ts) if schedule is not None else [max_rank] * len(ts)
    return [(i, float(s), float(t), int(r)) for i, (s, t, r) in enumerate(zip(sig.tolist(), ts, ranks))]


def render_schedule_image(panels: list[dict], width: int = 640, panel_height: int = 220) -> torch.Tensor:
    """An IMAGE (1, H, W, 3) float in [0, 1]: one bar chart of active rank vs step per panel.

    Panel: {"title": str, "subtitle": str, "rows": schedule_table(...), "max_rank": int}. numpy/PIL only."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    panels = panels or [{"title": "no T-LoRA", "subtitle": "", "rows": [], "max_rank": 1}]
    height = panel_height * len(panels)
    img = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for k, panel in enumerate(panels):
        top = k * panel_height
        left, right, plot_top, plot_bottom = 44, width - 12, top + 40, top + panel_height - 26
        draw.text((8, top + 4), panel["title"], fill=(235, 235, 235), font=font)
        draw.text((8, top + 20), panel.get("subtitle", ""), fill=(170, 170, 175), font=font)
        max_rank = max(int(panel["max_rank"]), 1)
        draw.line([(left, plot_top), (left, plot_bottom), (right, plot_bottom)], fill=(120, 120, 125))
        for value in sorted({0, max_rank // 2, max_rank}):
            y = plot_bottom - (plot_bottom - plot_top) * value / max_rank
            draw.line([(left - 3, y), (right, y)], fill=(55, 55, 60))
            draw.text((6, y - 6), str(value), fill=(170, 170, 175), font=font)
        rows = panel["rows"]
        n = len(rows)
        if n:
            slot = (right - left - 2) / n
            label_every = max(1, int(np.ceil(n / 16)))
            for i, (_step, _sigma, _t, rank) in enumerate(rows):
                x0 = left + 2 + i * slot
                x1 = x0 + max(slot - 2, 1)
                y = plot_bottom - (plot_bottom - plot_top) * rank / max_rank
                draw.rectangle([x0, y, x1, plot_bottom - 1], fill=(90, 160, 230))
                if i % label_every == 0 or i == n - 1:
                    draw.text((x0, plot_bottom + 4), str(i), fill=(170, 170, 175), font=font)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).unsqueeze(0)


_CONFIG_KEYS = {"max_rank": "linear_dim", "min_rank": "tlora_min_rank", "alpha": "tlora_alpha"}


def config_origin(config: dict | None, config_source: str) -> str:
    """Where a file's lycoris_config came from, in words (its metadata, the sidecar's path, or nowhere)."""
    if config is None:
        return "no lycoris_config (neither in the file's metadata nor a lycoris_config.json beside it)"
    if config_source.startswith("sidecar:"):
        return f"lycoris_config.json beside the file ({config_source[len('sidecar:'):]})"
    return "the file's lycoris_config metadata"


def schedule_params(ranks: list[int], config: dict | None, config_source: str) -> tuple[dict, dict]:
    """({"max_rank", "min_rank", "alpha"}, {name: where it came from, in words}) of a T-LoRA file, SimpleTuner's
    way: lycoris_config (metadata, else the sidecar), else SimpleTuner's defaults; max_rank falls back to the
    largest module rank `ranks` because final saves drop linear_dim."""
    params = tlora_params_from_config(config, ranks)
    origin = config_origin(config, config_source)
    where = {}
    for name, note in params["source"].items():
        if note.startswith("lycoris_config."):
            where[name] = f"{_CONFIG_KEYS[name]} in {origin}"
        elif note.startswith("default"):
            where[name] = "SimpleTuner's default (not in the config)"
        else:
            where[name] = f"{note} (linear_dim not in the config)"
    if params["max_rank"] is None:
        raise LycorisError("cannot tell the T-LoRA max rank (no linear_dim in the config and no module ranks).")
    return {k: params[k] for k in ("max_rank", "min_rank", "alpha")}, where


def schedule_source(where: dict) -> str:
    """One line saying where each schedule parameter came from."""
    return "; ".join(f"{k} {where[k]}" for k in ("max_rank", "min_rank", "alpha"))
