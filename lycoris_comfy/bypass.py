# SPDX-License-Identifier: GPL-3.0-or-later
"""Bypass form: adapters computed in the layer's forward (activation space); base weights untouched.

One `PatcherInjection` per loaded file, under a unique key, registers a forward hook on each target module when
ComfyUI injects the model and removes it on eject (forward hooks compose across stacked loaders and survive the
FIFO eject order, unlike forward swapping; see comfyui-host.md §3.3). Works on fp8/quantized bases because the
weights are never rewritten. Adapter tensors are copied to the activation's device/dtype once and cached.
"""
from __future__ import annotations

import uuid
import weakref
from dataclasses import dataclass, field

import torch
import comfy.utils
from comfy.patcher_extension import PatcherInjection

from ..lycoris_core.adapters.base import Adapter
from .layers import layer_spec


@dataclass
class BypassSlice:
    """One adapter on one target: the whole module, or the output rows `offset` = (0, start, length)."""

    adapter: Adapter
    offset: tuple[int, int, int] | None = None
    function: object = None  # ComfyUI row function of the target (e.g. swap_scale_shift), or None
    _copies: dict = field(default_factory=dict, repr=False)

    def on(self, device: torch.device, dtype: torch.dtype) -> Adapter:
        """The adapter with tensors on `device` in `dtype`, copied once and cached (one device kept at a time)."""
        key = (device, dtype)
        copy = self._copies.get(key)
        if copy is None:
            self._copies.clear()
            copy = self._copies[key] = self.adapter.to(device=device, dtype=dtype)
        return copy


def _row_permutation(function, rows: int) -> torch.Tensor | None:
    """Index `perm` with comfy_row[i] = file_row[perm[i]] for a ComfyUI row function, or None."""
    if function is None:
        return None
    return function(torch.arange(rows, dtype=torch.float32).unsqueeze(1)).squeeze(1).round().long()


def _weight_key(module: torch.nn.Module, patcher) -> tuple:
    """Which weight the module holds now: (weakref to the tensor, a version). Another loader's merged patch (a new
    tensor, or an in-place update) changes it, and with it what adapters derived from W (DoRA norms).

    The version is the tensor's in-place counter; inference tensors (ComfyUI loads and runs models under
    torch.inference_mode) have none, so for them it is the patcher's `patches_uuid`, which ComfyUI renews whenever
    the weight patches change (None where a host lacks it: then the entries are never reused)."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return (None, None)
    if w.is_inference():
        version = getattr(patcher, "patches_uuid", None)
        version = None if version is None else ("patches", version)
    else:
        version = ("inplace", w._version)
    return (weakref.ref(w), version)  # a weakref, not id(): a freed tensor's id (and memory) get reused


def _same_weight(a: tuple, b: tuple) -> bool:
    if a[0] is None or b[0] is None:
        return a[0] is None and b[0] is None
    w = a[0]()
    return w is not None and w is b[0]() and a[1] is not None and a[1] == b[1]


class _ModuleHook:
    """Forward hook of one module: applies each of its slices' adapters to the base output."""

    def __init__(self, owner: "BypassInjection", module: torch.nn.Module, slices: list[BypassSlice],
                 entries: list | None = None):
        self.owner = owner
        channel_dim = 1 if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)) else -1
        self.channel_dim = channel_dim
        self.entries = entries if entries is not None else self.build_entries(module, slices)

    @staticmethod
    def build_entries(module: torch.nn.Module, slices: list[BypassSlice]) -> list:
        """(slice, LayerSpec, perm, inverse) per slice. Kept across re-injections (see BypassInjection.inject):
        adapters cache layer-derived data (DoRA norms) per LayerSpec object."""
        entries = []
        for s in slices:
            spec = layer_spec(module, s.offset)
            perm = _row_permutation(s.function, spec.weight_shape[0])
            if perm is not None:
                inverse = torch.argsort(perm)
                base_weight = spec.weight
                spec.weight = lambda dtype, device, w=base_weight, inv=inverse: w(dtype, device)[inv.to(device)]
                base_bias = spec.bias
                spec.bias = lambda dtype, device, b=base_bias, inv=inverse: (
                    None if b(dtype, device) is None else b(dtype, device)[inv.to(device)])
                entries.append((s, spec, perm, inverse))
            else:
                entries.append((s, spec, None, None))
        return entries

    def __call__(self, module, args, output):
        x = args[0]
        strength = self.owner.strength
        schedule = self.owner.schedule
        # The layer's output is ours to update in place (fused adapter paths write into it: no output-sized
        # temporaries) unless autograd records this forward.
        inplace = not (torch.is_grad_enabled() and output.requires_grad)
        for s, spec, perm, inverse in self.entries:
            adapter = s.on(output.device, output.dtype)
            if adapter.algo == "tlora":
                adapter.mask = None if schedule is None else schedule.buffer(output.device, output.dtype)
            if s.offset is None:
                y = output
            else:
                y = output.narrow(self.channel_dim, s.offset[1], s.offset[2])
            if perm is not None:
                y = y.index_select(self.channel_dim, inverse.to(y.device))
            new = (adapter.bypass_ if inplace else adapter.bypass)(x, y, strength, spec)
            if perm is not None:
                new = new.index_select(self.channel_dim, perm.to(new.device))
            elif new is y:  # written in place into the output (or its row slice)
                continue
            if s.offset is None:
                output = new
            else:
                output = output.clone() if output.requires_grad else output
                output.narrow(self.channel_dim, s.offset[1], s.offset[2]).copy_(new)
        return output


class BypassInjection:
    """The bypass adapters of one loaded file on one model, as a ComfyUI injection with a unique key.

    `targets`: module path (inside the ModelPatcher's model, e.g. "diffusion_model.double_blocks.0.img_attn.qkv")
    -> its slices. `strength` is the LyCORIS multiplier, read at every call (a python float: changing it touches
    no tensor). `schedule` (a TLoraSchedule or None) supplies the T-LoRA rank mask; None means all ranks.
    """

    def __init__(self, targets: dict[str, list[BypassSlice]], strength: float, key: str | None = None,
                 schedule=None, _entries: dict | None = None):
        self.targets = targets
        self.strength = float(strength)
        self.key = key or f"lycoris_bypass_{uuid.uuid4().hex[:12]}"
        self.schedule = schedule
        self._handles: list = []
        # module path -> (weakref to the module, hook entries, weight key): shared with the with_* copies, so
        # re-injecting (each prompt, each strength change) reuses the layer specs and the per-spec caches of the
        # adapters (DoRA norms of W + ΔW would otherwise be recomputed, a merge's worth of work, at every
        # injection); rebuilt when the module's weight changed (another loader's merged patch below this one)
        self._entries = {} if _entries is None else _entries

    def with_strength(self, strength: float) -> "BypassInjection":
        """A new injection over the same adapters (and device copies) at another multiplier, same key."""
        return BypassInjection(self.targets, strength, self.key, self.schedule, self._entries)

    def with_schedule(self, schedule) -> "BypassInjection":
        """A new injection over the same adapters with another T-LoRA schedule (None: all ranks), same key."""
        return BypassInjection(self.targets, self.strength, self.key, schedule, self._entries)

    def inject(self, patcher) -> None:
        """Register the forward hooks on `patcher.model` (idempotent)."""
        if self._handles:
            return
        for path, slices in self.targets.items():
            module = comfy.utils.get_attr(patcher.model, path)
            weight = _weight_key(module, patcher)
            cached = self._entries.get(path)
            if cached is None or cached[0]() is not module or not _same_weight(cached[2], weight):
                cached = self._entries[path] = (weakref.ref(module), _ModuleHook.build_entries(module, slices),
                                                weight)
            self._handles.append(module.register_forward_hook(_ModuleHook(self, module, slices, cached[1])))

    def eject(self, patcher) -> None:
        """Remove the forward hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def install(self, patcher) -> None:
        """Attach this injection to `patcher` (a clone owned by the caller) under its key."""
        patcher.set_injections(self.key, [PatcherInjection(inject=self.inject, eject=self.eject)])
