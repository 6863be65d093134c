# SPDX-License-Identifier: GPL-3.0-or-later
"""Put a LyCORIS file on a ComfyUI model, merged or bypass, and say what was done.

`apply_lycoris` is what the loader node calls. It never mutates its input ModelPatcher: it returns a clone
carrying either weight patches (merged) or a forward-hook injection (bypass), plus an attachment that records
what was loaded (read by the strength node and the T-LoRA wrapper).
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field

import comfy.utils

from ..lycoris_core.adapters.base import Adapter
from ..lycoris_core.errors import LycorisError, NoMatchingKeysError
from ..lycoris_core.tlora_schedule import tlora_params_from_config
from .bypass import BypassInjection, BypassSlice
from .file_cache import load_parsed
from .keymaps import build_key_map, family_of, guess_family
from .layers import is_quantized
from .merged import LycorisWeightAdapter
from .tlora import TLoraSchedule

ATTACHMENT = "lycoris"
MODES = ("auto", "merged", "bypass")
# A file may leave this share of its modules unplaced (reported); above it the load fails (wrong model).
MAX_UNMATCHED_SHARE = 0.10
# Algorithms whose merged form also changes the bias (`diff_b`, `b_norm`).
BIAS_ALGOS = ("full", "norm")


@dataclass(frozen=True)
class LoadedLycoris:
    """What one loader node put on a model (kept in `patcher.attachments["lycoris"]`, a tuple of these)."""

    name: str
    mode: str
    strength: float
    adapters: dict  # module name -> (Adapter, Target)
    injection: BypassInjection | None = None
    schedule: TLoraSchedule | None = None
    config: dict | None = None  # the file's lycoris_config, for T-LoRA defaults


@dataclass
class LoadReport:
    """Human-readable account of a load, shown on the node."""

    file: str
    mode: str
    strength: float
    family: str
    algorithms: Counter = field(default_factory=Counter)
    placed: int = 0
    total: int = 0
    unmatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        """A few lines: file, mode, strength, algorithms with module counts, unmatched keys, notes."""
        algos = ", ".join(f"{a} x{n}" for a, n in sorted(self.algorithms.items()))
        lines = [
            f"{self.file}: {self.placed}/{self.total} modules on {self.family}, mode {self.mode}, strength {self.strength:g}",
            f"algorithms: {algos or 'none'}",
        ]
        if self.unmatched:
            shown = ", ".join(self.unmatched[:8])
            lines.append(f"unmatched ({len(self.unmatched)}): {shown}{' ...' if len(self.unmatched) > 8 else ''}")
        lines.extend(self.notes)
        return "\n".join(lines)


def loaded_lycoris(patcher) -> tuple[LoadedLycoris, ...]:
    """The LyCORIS loads recorded on `patcher`, oldest first."""
    return tuple(patcher.attachments.get(ATTACHMENT, ()))


def _place(adapters: dict[str, Adapter], key_map: dict, label: str, family: str):
    placed, unmatched = {}, []
    for name, adapter in adapters.items():
        target = key_map.get(name)
        if target is None:
            unmatched.append(name)
        else:
            placed[name] = (adapter, target)
    if not placed:
        looks = guess_family(adapters.keys())
        hint = f" Its module names look like a {looks} model." if looks else ""
        raise NoMatchingKeysError(
            f"{label}: none of its {len(adapters)} modules matches this {family} model "
            f"(first: {', '.join(sorted(unmatched)[:3])}).{hint} Load it on the model it was trained for."
        )
    if len(unmatched) > MAX_UNMATCHED_SHARE * len(adapters):
        raise NoMatchingKeysError(
            f"{label}: {len(unmatched)} of {len(adapters)} modules match nothing in this {family} model, e.g. "
            f"{', '.join(sorted(unmatched)[:5])}. The file was probably trained for another model or variant; "
            "load it on that model."
        )
    return placed, sorted(unmatched)


def _check_shapes(placed: dict, model, label: str) -> None:
    for name, (adapter, target) in placed.items():
        weight = comfy.utils.get_attr(model, target.key)
        shape = tuple(weight.shape)
        if target.offset is not None:
            dim, _, length = target.offset
            shape = shape[:dim] + (length,) + shape[dim + 1:]
        adapter.check_target(shape, f"{label}: module {name} -> {target.key}")


def resolve_mode(mode: str, placed: dict, model) -> str:
    """The concrete mode: `auto` is bypass for T-LoRA files and quantized/fp8 bases, merged otherwise."""
    if mode not in MODES:
        raise LycorisError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    has_tlora = any(a.algo == "tlora" for a, _ in placed.values())
    if mode == "merged" and has_tlora:
        raise LycorisError(
            "This file holds T-LoRA modules, whose rank mask changes at every sampling step; a merged weight can "
            "only bake one mask in. Use mode 'bypass' (or 'auto')."
        )
    if mode != "auto":
        return mode
    if has_tlora:
        return "bypass"
    for _, target in placed.values():
        module = comfy.utils.get_attr(model, target.key.rsplit(".", 1)[0])
        if is_quantized(module):
            return "bypass"
    return "merged"


def _merged_patches(placed: dict) -> list[tuple]:
    """(patch key, LycorisWeightAdapter) pairs: the weight of every target, and its bias for full/norm."""
    patches = []
    for adapter, target in placed.values():
        patches.append((target.as_patch_key(), LycorisWeightAdapter(adapter, "weight")))
        if adapter.algo in BIAS_ALGOS and target.bias_key is not None:
            bias_target = dataclasses.replace(target, key=target.bias_key)
            patches.append((bias_target.as_patch_key(), LycorisWeightAdapter(adapter, "bias")))
    return patches


def _bypass_injection(placed: dict, strength: float) -> BypassInjection:
    targets: dict[str, list[BypassSlice]] = {}
    for adapter, target in placed.values():
        module_path = target.key.rsplit(".", 1)[0]
        targets.setdefault(module_path, []).append(BypassSlice(adapter, target.offset, target.function))
    return BypassInjection(targets, strength)


def default_schedule(placed: dict, config: dict | None) -> TLoraSchedule:
    """The T-LoRA schedule SimpleTuner validation used: lycoris_config (metadata or sidecar), else its defaults;
    max_rank falls back to the largest module rank (final-save files drop linear_dim)."""
    ranks = [a.rank for a, _ in placed.values() if a.algo == "tlora"]
    params = tlora_params_from_config(config, ranks)
    source = ", ".join(f"{name} from {where}" for name, where in params["source"].items())
    return TLoraSchedule(params["max_rank"], params["min_rank"], params["alpha"], source)


def apply_lycoris(patcher, path: str, strength: float, mode: str = "auto", *, rank_cap: int | None = None):
    """A clone of `patcher` carrying the LyCORIS file at `path` at multiplier `strength`, and a LoadReport.

    Raises LycorisError subclasses (naming the file, the module and a fix) for bad files and wrong models;
    the input patcher is never modified.
    """
    label = os.path.basename(path)
    parsed = load_parsed(path, rank_cap)
    family = family_of(patcher)
    placed, unmatched = _place(parsed.adapters, build_key_map(patcher), label, family)
    _check_shapes(placed, patcher.model, label)
    concrete = resolve_mode(mode, placed, patcher.model)

    clone = patcher.clone()
    injection = schedule = None
    if concrete == "merged":
        for key, weight_adapter in _merged_patches(placed):
            clone.add_patches({key: weight_adapter}, strength)
    else:
        injection = _bypass_injection(placed, strength)
        if any(a.algo == "tlora" for a, _ in placed.values()):
            # Installed by default so a graph without the T-LoRA wrapper node still renders like SimpleTuner.
            schedule = injection.schedule = default_schedule(placed, parsed.file.config)
            schedule.install(clone)
        injection.install(clone)
    record = LoadedLycoris(label, concrete, float(strength), placed, injection, schedule, parsed.file.config)
    clone.attachments[ATTACHMENT] = loaded_lycoris(patcher) + (record,)

    report = LoadReport(label, concrete, float(strength), family, Counter(a.algo for a, _ in placed.values()),
                        len(placed), len(parsed.adapters), unmatched)
    if unmatched:
        report.notes.append("Unmatched modules were skipped; the rest loaded (their share is small).")
    if schedule is not None:
        report.notes.append(schedule.describe())
    return clone, report
