# SPDX-License-Identifier: GPL-3.0-or-later
"""From a file's flat tensor dict to one `Adapter` per module: grouping, algorithm detection, key validation.

Keys are `<module>.<suffix>`; the module is the part before the FIRST '.', the suffix may contain dots
(`lora_up.weight`). Detection follows lycoris-lora's `MODULE_LIST` order (reference §3.3): the first algorithm
with any of its detection keys wins. DyLoRA files have LoCon's keys and load as "locon".
"""
from __future__ import annotations

import torch

from ..errors import AdapterFormatError
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


def parse_modules(tensors: dict[str, torch.Tensor], source: str, *, rank_cap: int | None = None,
                  rank_cap_rescale: bool = False, strict: bool = True) -> dict[str, Adapter]:
    """Module name -> Adapter for every module of a file's tensors (`source` names the file in errors).

    rank_cap: keep only the first k ranks of LoCon/DyLoRA modules (DyLoRA `dyn`); the scale stays alpha/r_full
    (A1111 LyCORIS extension semantics) unless rank_cap_rescale=True (alpha/k, DyLoRA's training scale at rank k).
    strict: keys that no algorithm uses (and keys without a '.') raise AdapterFormatError; lycoris-lora ignores
    them silently.
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
            adapters[name] = cls(name, group, source, rank_cap=rank_cap, rank_cap_rescale=rank_cap_rescale)
        else:
            adapters[name] = cls(name, group, source)
    return adapters
