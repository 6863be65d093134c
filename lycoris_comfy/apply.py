# SPDX-License-Identifier: GPL-3.0-or-later
"""Put a LyCORIS file on a ComfyUI model, merged or bypass, and say what was done.

`apply_lycoris` is what the loader node calls. It never mutates its input ModelPatcher: it returns a clone
carrying either weight patches (merged) or a forward-hook injection (bypass), plus an attachment that records
what was loaded (read by the strength node and the T-LoRA wrapper).
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from dataclasses import dataclass, field

import comfy.utils

from ..lycoris_core.adapters.base import Adapter
from ..lycoris_core.adapters.registry import check_target
from ..lycoris_core.errors import LycorisError, NoMatchingKeysError, ShapeMismatchError
from ..lycoris_core.safetensors_file import read_header
from .bypass import BypassInjection, BypassSlice
from .file_cache import load_parsed
from .keymaps import build_key_map, family_of, guess_family
from .layers import is_quantized
from .merged import LycorisWeightAdapter
from .tlora import TLoraSchedule, schedule_params, schedule_source

ATTACHMENT = "lycoris"
MODES = ("auto", "merged", "bypass")
# A file may leave this share of its modules unplaced (reported); above it the load fails (wrong model).
MAX_UNMATCHED_SHARE = 0.10
# Algorithms whose merged form also changes the bias (`diff_b`, `b_norm`).
BIAS_ALGOS = ("full", "norm")
# The loader/strength widgets' range (ComfyUI skips its own min/max check for inputs a node validates itself).
STRENGTH_MIN, STRENGTH_MAX = -100.0, 100.0
# Size sanity before any tensor data is read: no LyCORIS tensor is larger than the largest weight it can target
# (full `diff` = that weight; LoKr/LoHa/LoCon factors are smaller), and no file holds more elements than the
# model. A file declaring more than SIZE_RATIO times that (plus slack for tiny models) is refused from its header.
SIZE_RATIO = 4
SIZE_SLACK = 1 << 22  # elements
# T-LoRA wrapper widgets: min_rank -1 (from the file) or 1..TLORA_MAX_RANK; alpha 0 (from the file) .. 100.
TLORA_MAX_RANK = 4096
TLORA_MAX_ALPHA = 100.0


def strength_problem(strength, lo: float = STRENGTH_MIN, hi: float = STRENGTH_MAX) -> str | None:
    """Why `strength` is not a usable LyCORIS multiplier (None when it is): not a number, NaN/Inf, out of range.
    None (a linked input, unknown at validation) is accepted."""
    if strength is None:
        return None
    try:
        value = float(strength)
    except (TypeError, ValueError, OverflowError):
        return f"strength must be a number, got {strength!r}"
    if not math.isfinite(value):
        return f"strength must be a finite number between {lo:g} and {hi:g}, got {value}"
    if not lo <= value <= hi:
        return f"strength {value:g} is outside {lo:g}..{hi:g}"
    return None


def tlora_params_problem(min_rank=None, alpha=None) -> str | None:
    """Why T-LoRA wrapper parameters are unusable (None when they are fine; None values are linked inputs)."""
    if min_rank is not None:
        if isinstance(min_rank, bool) or not isinstance(min_rank, int):
            return f"min_rank must be an integer, got {min_rank!r}"
        if not (min_rank == -1 or 1 <= min_rank <= TLORA_MAX_RANK):
            return f"min_rank must be -1 (from the file) or 1..{TLORA_MAX_RANK}, got {min_rank}"
    if alpha is not None:
        try:
            value = float(alpha)
        except (TypeError, ValueError, OverflowError):
            return f"tlora_alpha must be a number, got {alpha!r}"
        if not math.isfinite(value) or not 0.0 <= value <= TLORA_MAX_ALPHA:
            return f"tlora_alpha must be 0 (from the file) .. {TLORA_MAX_ALPHA:g}, got {value}"
    return None


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
    config_source: str = "none"  # "metadata", "sidecar:<path>" or "none"


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
    looks = guess_family(adapters.keys())
    hint = f" Its module names look like a {looks} model." if looks and looks != family else ""
    if not placed:
        raise NoMatchingKeysError(
            f"{label}: none of its {len(adapters)} modules matches this {family} model "
            f"(first: {', '.join(sorted(unmatched)[:3])}).{hint} Fix: load it on the model it was trained for."
        )
    if len(unmatched) > MAX_UNMATCHED_SHARE * len(adapters):
        raise NoMatchingKeysError(
            f"{label}: {len(unmatched)} of {len(adapters)} modules match nothing in this {family} model, e.g. "
            f"{', '.join(sorted(unmatched)[:5])}. The file was probably trained for another model or variant."
            f"{hint} Fix: load it on that model."
        )
    return placed, sorted(unmatched)


def check_declared_sizes(path: str, model, label: str) -> None:
    """Refuse, from the header alone (before any tensor is allocated), a file whose tensors are absurdly large for
    `model`: one tensor bigger than SIZE_RATIO x the model's largest weight, or more elements than SIZE_RATIO x the
    whole model (plus SIZE_SLACK)."""
    _, infos, _ = read_header(path)
    if not infos:
        return
    params = [p.numel() for p in model.parameters()] or [0]
    largest, total = max(params), sum(params)
    key, biggest = max(((k, math.prod(i.shape)) for k, i in infos.items()), key=lambda kv: kv[1])
    if biggest > SIZE_RATIO * largest + SIZE_SLACK:
        raise ShapeMismatchError(
            f"{label}: tensor '{key}' declares {biggest:,} elements, more than {SIZE_RATIO}x the largest weight of "
            f"this model ({largest:,}); refused before reading it. Fix: this file was made for a much larger model "
            f"(or is damaged); load it on the model it was trained for.")
    declared = sum(math.prod(i.shape) for i in infos.values())
    if declared > SIZE_RATIO * total + SIZE_SLACK:
        raise ShapeMismatchError(
            f"{label}: the file declares {declared:,} tensor elements, more than {SIZE_RATIO}x this whole model "
            f"({total:,}); refused before reading it. Fix: load it on the model it was trained for.")


def _check_shapes(placed: dict, model, label: str) -> None:
    for name, (adapter, target) in placed.items():
        weight = comfy.utils.get_attr(model, target.key)
        shape = tuple(weight.shape)
        if target.offset is not None:
            dim, _, length = target.offset
            shape = shape[:dim] + (length,) + shape[dim + 1:]
        check_target(adapter, shape, f"{label}: module {name} -> {target.key}")


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


def default_schedule(placed: dict, config: dict | None, config_source: str) -> TLoraSchedule:
    """The T-LoRA schedule SimpleTuner validation used: lycoris_config (metadata or sidecar), else its defaults."""
    ranks = [a.rank for a, _ in placed.values() if a.algo == "tlora"]
    params, where = schedule_params(ranks, config, config_source)
    return TLoraSchedule(params["max_rank"], params["min_rank"], params["alpha"], schedule_source(where))


def apply_lycoris(patcher, path: str, strength: float, mode: str = "auto", *, rank_cap: int | None = None):
    """A clone of `patcher` carrying the LyCORIS file at `path` at multiplier `strength`, and a LoadReport.

    Raises LycorisError subclasses (naming the file, the module and a fix) for bad files and wrong models;
    the input patcher is never modified.
    """
    label = os.path.basename(path)
    problem = strength_problem(strength, -math.inf, math.inf)
    if problem:
        raise LycorisError(f"{label}: {problem}. Fix: give a finite strength (1.0 is the trained strength).")
    check_declared_sizes(path, patcher.model, label)
    parsed = load_parsed(path, rank_cap)
    family = family_of(patcher)
    placed, unmatched = _place(parsed.adapters, build_key_map(patcher), label, family)
    _check_shapes(placed, patcher.model, label)
    concrete = resolve_mode(mode, placed, patcher.model)

    clone = patcher.clone()
    injection = schedule = None
    if concrete == "merged":
        # One add_patches call per batch of distinct keys (each call walks the model's state dict once).
        batches: list[dict] = []
        for key, weight_adapter in _merged_patches(placed):
            batch = next((b for b in batches if key not in b), None)
            if batch is None:
                batches.append(batch := {})
            batch[key] = weight_adapter
        for batch in batches:
            clone.add_patches(batch, strength)
    else:
        injection = _bypass_injection(placed, strength)
        if any(a.algo == "tlora" for a, _ in placed.values()):
            # Installed by default so a graph without the T-LoRA wrapper node still renders like SimpleTuner.
            schedule = injection.schedule = default_schedule(placed, parsed.file.config, parsed.file.config_source)
            schedule.install(clone)
        injection.install(clone)
    record = LoadedLycoris(label, concrete, float(strength), placed, injection, schedule, parsed.file.config,
                           parsed.file.config_source)
    clone.attachments[ATTACHMENT] = loaded_lycoris(patcher) + (record,)

    report = LoadReport(label, concrete, float(strength), family, Counter(a.algo for a, _ in placed.values()),
                        len(placed), len(parsed.adapters), unmatched)
    if unmatched:
        report.notes.append("Unmatched modules were skipped; the rest loaded (their share is small).")
    report.notes.extend("warning: " + w.replace(parsed.file.path, label) for w in parsed.file.warnings)
    if schedule is not None:
        report.notes.append(schedule.describe())
    if rank_cap:
        report.notes.append(f"DyLoRA rank cap: the first {rank_cap} ranks of each LoCon/DyLoRA module "
                            "(scale alpha/r of the full rank, as the A1111 LyCORIS extension's dyn=).")
    return clone, report
