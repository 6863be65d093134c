# SPDX-License-Identifier: GPL-3.0-or-later
"""From a file's flat tensor dict to one `Adapter` per module: grouping, algorithm detection, key validation.

Keys are `<module>.<suffix>`; the module is the part before the FIRST '.', the suffix may contain dots
(`lora_up.weight`). Detection follows lycoris-lora's `MODULE_LIST` order (reference §3.3): the first algorithm
with any of its detection keys wins. DyLoRA files have LoCon's keys and load as "locon".

Files come from the internet, so every module is also checked before use: non-empty floating-point tensors
only (`alpha` may be any number), finite values only (NaN/Inf are refused with the module names: one NaN turns the whole image
black), and an adapter whose tensors do not fit together raises AdapterFormatError, never another exception.
"""
from __future__ import annotations

import torch

from ..errors import AdapterFormatError, LycorisError
from .base import Adapter
from .boft import BOFTAdapter
from .diag_oft import DiagOFTAdapter
from .full import FullAdapter
from .glora import GLoRAAdapter
from .ia3 import IA3Adapter
from .locon import LoConAdapter
from .loha import LoHaAdapter
from .lokr import LoKrAdapter
from .norm import NormAdapter
from .tlora import TLoRAAdapter

#: algorithm -> adapter class
ADAPTERS: dict[str, type[Adapter]] = {
    "locon": LoConAdapter, "loha": LoHaAdapter, "ia3": IA3Adapter, "lokr": LoKrAdapter, "full": FullAdapter,
    "norm": NormAdapter, "diag-oft": DiagOFTAdapter, "boft": BOFTAdapter, "glora": GLoRAAdapter,
    "tlora": TLoRAAdapter,
}

# (algorithm, detection suffixes) in lycoris/modules/__init__.py MODULE_LIST order; OFT is split by ndim.
_DETECTION: list[tuple[str, tuple[str, ...]]] = [
    ("locon", ("lora_up.weight",)),
    ("loha", ("hada_w1_a",)),
    ("ia3", ("on_input",)),
    ("lokr", ("lokr_w1", "lokr_w1_a")),
    ("full", ("diff",)),
    ("norm", ("w_norm",)),
    ("diag-oft", ("oft_blocks",)),
    ("boft", ("oft_blocks",)),
    ("glora", ("a1.weight",)),
    # DyLoRA would be here: it has no detection keys of its own (its files are LoCon's).
    ("tlora", ("lambda_layer",)),
]


def detect_algorithm(suffixes: set[str], tensors: dict[str, torch.Tensor] | None = None) -> str | None:
    """The LyCORIS algorithm name for a module with these tensor suffixes (MODULE_LIST order), or None.

    `tensors` (suffix -> tensor) tells Diag-OFT (`oft_blocks` 3-D) from BOFT (4-D); without it 3-D is assumed.
    """
    for algo, keys in _DETECTION:
        if not any(k in suffixes for k in keys):
            continue
        if algo in ("diag-oft", "boft"):
            ndim = tensors["oft_blocks"].dim() if tensors and "oft_blocks" in tensors else 3
            if (ndim == 3) != (algo == "diag-oft"):
                continue
        return algo
    return None


def _hint_for_unknown(keys: set[str]) -> str:
    """Which detection key is missing when a module carries only partner keys of an algorithm."""
    for algo, cls in ADAPTERS.items():
        family = set(cls.REQUIRED) | set(cls.OPTIONAL)
        partners = (keys & family) - {"alpha", "dora_scale"}
        if partners:
            det = dict(_DETECTION)[algo]
            return (f"; it has {algo} tensor(s) {sorted(partners)} but not the detection key "
                    f"{' or '.join(repr(d) for d in det)}, so the file looks incomplete")
    return ""


#: modules named in a non-finite-values error
_MAX_NAMED = 8


def _finite(t: torch.Tensor) -> bool:
    """True when a tensor holds no NaN/Inf (fp8 is checked through fp16, which holds every fp8 value)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if t.element_size() == 1:
        t = t.to(torch.float16)
    # min and max propagate NaN and reach ±Inf: one reduction pass, no boolean temporary (4-5x faster than
    # isfinite(t).all() on CPU, which dominated cold parsing).
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _check_values(groups: dict[str, dict[str, torch.Tensor]], source: str) -> None:
    """Refuse empty and integer/bool adapter tensors and NaN/Inf values, naming the modules and tensors."""
    for name, group in groups.items():
        for suffix, t in group.items():
            if not isinstance(t, torch.Tensor):
                raise AdapterFormatError(f"{source}: module '{name}', tensor '{suffix}' is not a tensor "
                                         f"({type(t).__name__}). Fix: re-export the file from the trainer.")
            if t.numel() == 0:
                raise AdapterFormatError(
                    f"{source}: module '{name}', tensor '{suffix}' is empty (shape {tuple(t.shape)}). Fix: the file "
                    f"is damaged or was written by an incompatible tool; re-export it from the trainer.")
            if suffix != "alpha" and not t.is_floating_point():
                raise AdapterFormatError(
                    f"{source}: module '{name}', tensor '{suffix}' has dtype {str(t.dtype).replace('torch.', '')}; "
                    f"LyCORIS weights are floating point. Fix: the file is damaged or not a LyCORIS file; "
                    f"re-export it (fp32/fp16/bf16/fp8).")
    bad = [(name, suffix) for name, group in groups.items() for suffix, t in group.items() if not _finite(t)]
    if bad:
        modules = sorted({n for n, _ in bad})
        shown = ", ".join(f"'{n}.{k}'" for n, k in sorted(bad)[:_MAX_NAMED])
        more = f" and {len(bad) - _MAX_NAMED} more" if len(bad) > _MAX_NAMED else ""
        raise AdapterFormatError(
            f"{source}: {len(modules)} module(s) hold NaN or Inf values: {shown}{more}. Applying them would turn "
            f"every output into NaN (black images). Fix: training diverged or the file was saved in too small a "
            f"dtype; use an earlier checkpoint, or re-save it in fp32/bf16.")


def _check_structure(adapter: Adapter) -> None:
    """Shape rules the adapter classes do not check themselves (found by fuzzing; raise before any maths runs)."""
    if adapter.algo == "lokr":
        for key in ("lokr_w2_a", "lokr_w2_b"):
            t = adapter.tensors.get(key)
            if t is not None and t.dim() != 2:  # LyCORIS writes them 2-D (conv kernels live in lokr_t2/w2_b cols)
                raise adapter.format_error(key, f"shape {tuple(t.shape)} is not 2-D")
    if adapter.algo == "boft":
        stages, n = adapter.tensors["oft_blocks"].shape[:2]
        if stages < 1 or n % (2 ** (stages - 1)):
            raise adapter.format_error(
                "oft_blocks", f"shape {tuple(adapter.tensors['oft_blocks'].shape)}: {stages} butterfly stages need "
                f"the block count ({n}) to be a multiple of {2 ** max(stages - 1, 0)}")


def check_target(adapter: Adapter, weight_shape, where: str) -> None:
    """`adapter.check_target` plus the DoRA magnitude's length against the target's axis, with any non-LycorisError
    (an odd shape the adapter's check trips on) turned into a ShapeMismatchError: what the binding calls."""
    weight_shape = tuple(weight_shape)
    try:
        adapter.check_target(weight_shape, where)
    except LycorisError:
        raise
    except Exception as e:  # noqa: BLE001
        raise adapter.shape_error(where, adapter.shape_key(), adapter.expected_weight_shape() or "?",
                                  weight_shape) from e
    g = adapter.dora_scale
    if g is not None and len(weight_shape) >= 2:
        axis = adapter.dora_axis
        n = weight_shape[0] if axis == "output" else weight_shape[1]
        if g.numel() != n:
            raise adapter.format_error(
                "dora_scale", f"holds {g.numel()} values (shape {tuple(g.shape)}) but the {axis} axis of {where} "
                f"{tuple(weight_shape)} has {n}")


def _build(cls: type[Adapter], name: str, group: dict, source: str, algo: str, **kwargs) -> Adapter:
    """cls(name, group, source) with any non-LycorisError (a shape the adapter maths cannot use) turned into an
    AdapterFormatError naming the module and its tensor shapes."""
    try:
        adapter = cls(name, group, source, **kwargs)
        _check_structure(adapter)
        return adapter
    except LycorisError:
        raise
    except Exception as e:  # noqa: BLE001 - hostile files must only produce our errors
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(group.items()))
        raise AdapterFormatError(
            f"{source}: module '{name}' ({algo}) has tensors that do not fit together ({shapes}): "
            f"{type(e).__name__}: {e}. Fix: the file is damaged or was written by an incompatible tool; re-export "
            f"it from the trainer.") from None


def parse_modules(tensors: dict[str, torch.Tensor], source: str, *, rank_cap: int | None = None,
                  rank_cap_rescale: bool = False, strict: bool = True,
                  check_values: bool = True) -> dict[str, Adapter]:
    """Module name -> Adapter for every module of a file's tensors (`source` names the file in errors).

    rank_cap: keep only the first k ranks of LoCon/DyLoRA modules (DyLoRA `dyn`); the scale stays alpha/r_full
    (A1111 LyCORIS extension semantics) unless rank_cap_rescale=True (alpha/k, DyLoRA's training scale at rank k).
    strict: keys that no algorithm uses (and keys without a '.') raise AdapterFormatError; lycoris-lora ignores
    them silently.
    check_values: refuse non-float tensors and NaN/Inf values (module docstring).
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    loose: list[str] = []
    for key, tensor in tensors.items():
        prefix, dot, suffix = key.partition(".")
        if not dot or not prefix or not suffix:
            loose.append(key)
            continue
        groups.setdefault(prefix, {})[suffix] = tensor
    if loose and strict:
        raise AdapterFormatError(
            f"{source}: keys {sorted(loose)[:8]} are not '<module>.<tensor>' LyCORIS keys. Fix: this is not a "
            f"LyCORIS file (or was converted to another naming); load it with a loader for that format.")
    if check_values:
        _check_values(groups, source)
    adapters: dict[str, Adapter] = {}
    for name, group in groups.items():
        keys = set(group)
        algo = detect_algorithm(keys, group)
        if algo is None:
            raise AdapterFormatError(
                f"{source}: module '{name}' has an unknown key set {sorted(keys)}{_hint_for_unknown(keys)}. Fix: "
                f"use a LyCORIS file (locon/loha/lokr/glora/ia3/full/norm/diag-oft/boft/tlora) or re-export it.")
        cls = ADAPTERS[algo]
        missing, unknown = cls.key_problems(keys)
        if missing:
            present = sorted(keys - {"alpha"})
            raise AdapterFormatError(
                f"{source}: module '{name}' ({algo}) has {present} but is missing {missing}. Fix: the file is "
                f"incomplete or damaged; re-export it from the trainer.")
        if unknown and strict:
            raise AdapterFormatError(
                f"{source}: module '{name}' ({algo}) has keys {unknown} that {algo} does not use. Fix: the file "
                f"mixes formats or was edited; re-export it, or load with strict=False to ignore them.")
        if unknown:
            group = {k: v for k, v in group.items() if k not in unknown}
        if cls is LoConAdapter:
            adapters[name] = _build(cls, name, group, source, algo, rank_cap=rank_cap,
                                    rank_cap_rescale=rank_cap_rescale)
        else:
            adapters[name] = _build(cls, name, group, source, algo)
    return adapters
