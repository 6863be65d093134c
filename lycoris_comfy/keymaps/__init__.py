# SPDX-License-Identifier: GPL-3.0-or-later
"""Key maps: which ComfyUI weight each module name of a LyCORIS file patches.

SimpleTuner names LyCORIS modules ``lycoris_<diffusers module path, "." -> "_">``; other trainers use
``lora_unet_<...>``, ``lora_transformer_<...>``, ``transformer.<dotted>`` or ComfyUI's own paths. ComfyUI stores
the BFL/SAI layout, where several diffusers modules are row slices of one fused weight (q/k/v -> ``qkv``).

:func:`build_key_map` returns, for one loaded ComfyUI model, every accepted spelling of every module -> a
:class:`Target` (state-dict key, optional row slice, optional patch function). It is built from the model's own
state dict (never by splitting names on ``_``: module paths contain underscores), from the per-family tables in
:mod:`.tables`, and from ComfyUI's own ``comfy.lora.model_lora_keys_unet`` (so nothing ComfyUI accepts is lost).
"""
from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import tables as _tables

__all__ = ["Target", "KeyMap", "build_key_map", "family_of", "guess_family", "candidate_families",
           "family_table", "normalize_name", "FAMILIES"]


@dataclass(frozen=True)
class Target:
    """Where one LyCORIS module lands in a ComfyUI model.

    ``key``: the ComfyUI state-dict weight key (``diffusion_model.<path>.weight``, or ``.scale`` for Flux's RMS
    norms). ``offset``: ``(dim, start, length)`` row slice of a fused weight (ComfyUI's convention, applied with
    ``weight.narrow(*offset)``), or None for the whole weight. ``function``: transform applied to the delta before
    it is added (e.g. ``comfy.utils.swap_scale_shift`` for diffusers' ``norm_out.linear``), or None. ``bias_key``:
    the matching bias key when the model has one (same offset applies), else None.
    """

    key: str
    offset: tuple[int, int, int] | None = None
    function: Callable | None = None
    bias_key: str | None = None

    def as_patch_key(self):
        """The key form ``ModelPatcher.add_patches`` takes: ``key``, ``(key, offset)`` or ``(key, offset, fn)``."""
        if self.function is not None:
            return (self.key, self.offset, self.function)
        if self.offset is not None:
            return (self.key, self.offset)
        return self.key


FAMILIES: dict[str, _tables.Family] = {f.name: f for f in _tables.ALL}

# Prefixes other tools put before a diffusers path ("." spellings) or before the "_"-joined path.
_DOT_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "unet.", "base_model.model.",
                 "unet.base_model.model.")
_US_PREFIXES = ("lycoris_", "lora_unet_", "lora_transformer_", "lora_prior_unet_")


class KeyMap(dict):
    """``{module name spelling: Target}`` for one model, plus lenient lookups.

    Plain dict lookups hit the explicit spellings. ``get`` / ``[]`` / ``in`` also accept any other prefix
    combination of a known path (e.g. ``model.diffusion_model.<comfy path>``, ``unet.<...>.processor.to_q``) by
    normalising the name to its prefix-free ``_`` form. Attributes: ``family`` (see :func:`family_of`) and
    ``canonical`` (``{"_"-joined diffusers or ComfyUI path: Target}``).
    """

    def __init__(self, *args, family: str = "", canonical: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.family = family
        self.canonical = canonical or {}

    def _fallback(self, name):
        if not isinstance(name, str):
            return None
        n = normalize_name(name)
        t = self.canonical.get(n)
        if t is None and n.endswith("_to_out") and "." in name:  # diffusers' old processor spelling of to_out.0
            t = self.canonical.get(n + "_0")
        return t

    def get(self, name, default=None):
        """The Target for a module name in any accepted spelling, else ``default``."""
        t = dict.get(self, name)
        if t is None:
            t = self._fallback(name)
        return default if t is None else t

    def __missing__(self, name):
        t = self._fallback(name)
        if t is None:
            raise KeyError(name)
        return t

    def __contains__(self, name):
        return dict.__contains__(self, name) or self._fallback(name) is not None

    def split(self, file_key: str) -> tuple[str, str] | None:
        """Split a file tensor key into ``(module name, parameter)`` using the longest known module prefix.

        ``"transformer.transformer_blocks.0.attn.to_q.lora_A.weight"`` -> ``("transformer.transformer_blocks.0
        .attn.to_q", "lora_A.weight")``; LyCORIS keys split at the first ``.``. Returns None if no prefix resolves.
        """
        parts = file_key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            name = ".".join(parts[:n])
            if name in self:
                return name, ".".join(parts[n:])
        return None

    def resolve(self, file_key: str) -> tuple[Target, str] | None:
        """``(Target, parameter)`` for a file tensor key, or None when its module is unknown (see :meth:`split`)."""
        s = self.split(file_key)
        return None if s is None else (self.get(s[0]), s[1])


def normalize_name(name: str) -> str:
    """A module name without any known prefix, ``"."`` -> ``"_"`` (diffusers' ``.processor`` dropped).

    ``"transformer.transformer_blocks.0.attn.to_q"`` and ``"lycoris_transformer_blocks_0_attn_to_q"`` both give
    ``"transformer_blocks_0_attn_to_q"``. Only used to look names up in a table built the same way; never split.
    """
    n = name
    for _ in range(2):
        for p in _DOT_PREFIXES:
            if n.startswith(p):
                n = n[len(p):]
                break
        else:
            break
    if "." in n:
        n = n.replace(".processor.", ".").replace(".", "_")
    else:
        for p in _US_PREFIXES:
            if n.startswith(p):
                n = n[len(p):]
                break
    return n


def _diffusers_spellings(path: str) -> list[str]:
    u = path.replace(".", "_")
    return ["lycoris_" + u, "lora_unet_" + u, "lora_transformer_" + u, path, "transformer." + path, "unet." + path,
            "base_model.model." + path]


def _comfy_spellings(path: str) -> list[str]:
    u = path.replace(".", "_")
    return ["diffusion_model." + path, "lora_unet_" + u, "lycoris_" + u, path]


# --------------------------------------------------------------------------------------------------------------
# family detection

_CLASS_FAMILY = (  # checked in MRO order of the model class, most specific first
    ("Flux2", "flux2"), ("ChromaRadiance", "chroma_radiance"), ("Chroma", "chroma"), ("Flux", "flux1"),
    ("SDXLRefiner", "sdxl_refiner"), ("SDXL", "sdxl"), ("SD3", "sd3"), ("AuraFlow", "auraflow"),
    ("PixArt", "pixart"), ("HiDream", "hidream"), ("QwenImage", "qwen_image"), ("Lumina2", "lumina2"),
    ("WAN21", "wan"), ("HunyuanVideo15", "hunyuan_video15"), ("HunyuanVideo", "hunyuan_video"), ("LTXV", "ltxv"),
    ("StableCascade_C", "stable_cascade"), ("HunyuanDiT", "hunyuan_dit"), ("GenmoMochi", "mochi"),
    ("CosmosPredict2", "cosmos_predict2"), ("Omnigen2", "omnigen2"), ("HunyuanImage21", "hunyuan_image21"),
)


def _base_model(model_patcher):
    return getattr(model_patcher, "model", model_patcher)


def family_of(model_patcher) -> str:
    """The family name of a ComfyUI model (a ``ModelPatcher`` or a ``BaseModel``), from its class and config.

    Returns e.g. ``"flux2"``, ``"flux1"``, ``"chroma"``, ``"sdxl"``, ``"sd15"`` (SD 1.x), ``"sd2"`` (SD 2.x),
    ``"sd3"``, ``"auraflow"``, ``"pixart"``, ``"hidream"``, ``"qwen_image"``, ``"lumina2"``, ``"z_image"``,
    ``"wan"``, ``"hunyuan_video"``, ``"ltxv"``; for other models the lower-cased ComfyUI class name.
    """
    model = _base_model(model_patcher)
    names = [c.__name__ for c in type(model).__mro__]
    cfg = getattr(getattr(model, "model_config", None), "unet_config", None) or {}
    for cls_name, fam in _CLASS_FAMILY:
        if cls_name in names:
            if fam == "lumina2" and cfg.get("z_image_modulation"):
                return "z_image"
            return fam
    if "num_res_blocks" in cfg:  # plain BaseModel UNets: SD1.x / SD2.x and their variants
        conf = type(getattr(model, "model_config", None)).__name__
        if conf.startswith("SD15"):
            return "sd15"
        if conf.startswith(("SD20", "SD21", "SD2_")):
            return "sd2"
        ctx = cfg.get("context_dim")
        if ctx == 768:
            return "sd15"
        if ctx == 1024:
            return "sd2"
        return "unet"
    return type(model).__name__.lower()


def _pattern(template: str) -> str:
    return re.escape(template.replace(".", "_")).replace(r"\{i\}", r"\d+").replace(r"\{j\}", r"\d+")


_FAMILY_REGEX: dict[str, tuple] = {}


def _family_regex(fam: _tables.Family):
    r = _FAMILY_REGEX.get(fam.name)
    if r is None:
        accept = [_pattern(d) for d, _, _ in fam.rows] + [_pattern(c) for _, c, _ in fam.rows] + list(fam.accept)
        r = (re.compile("^(?:" + "|".join(accept) + ")$") if accept else None,
             [re.compile(s) for s in fam.signature], [re.compile(s) for s in fam.exclude])
        _FAMILY_REGEX[fam.name] = r
    return r


def candidate_families(module_names: Iterable[str]) -> list[str]:
    """Families whose module names can produce all (>= 95 %) of ``module_names``, most likely first.

    Names are normalised (prefixes stripped, ``"."`` -> ``"_"``); a family is dropped when any name hits one of its
    exclusion patterns (e.g. SDXL's 2nd transformer block for SD 1.x). Ranking: count of names only this family
    has (its signature patterns), then table priority. Families sharing a naming scheme (``sd15``/``sd2``; a Flux
    file that only trains attention matches ``flux1``, ``flux2``, ``chroma``...) all appear. Empty when none fits.
    """
    names = {normalize_name(n) for n in module_names}
    names.discard("")
    if not names:
        return []
    scored = []
    for prio, fam in enumerate(_tables.ALL):
        accept, sig, excl = _family_regex(fam)
        if accept is None:
            continue
        if any(e.search(n) for e in excl for n in names):
            continue
        hit = sum(1 for n in names if accept.match(n))
        if hit < 0.95 * len(names):
            continue
        score = sum(1 for n in names if any(s.search(n) for s in sig))
        scored.append((-score, prio, fam.name))
    scored.sort()
    return [s[2] for s in scored]


def guess_family(module_names: Iterable[str]) -> str | None:
    """The family a file's module names look like (first of :func:`candidate_families`), or None if none fits.

    Meant for "wrong family" messages: names shared by several families (attention-only Flux files, SD 1.x vs
    2.x) give the most specific candidate; check ``family_of(model) in candidate_families(names)`` before
    calling a file incompatible.
    """
    c = candidate_families(module_names)
    return c[0] if c else None


def family_table(name: str) -> _tables.Family | None:
    """The :class:`tables.Family` record for a family name (``sd2`` shares ``sd15``'s), or None."""
    return FAMILIES.get(_tables.ALIASES.get(name, name))


# --------------------------------------------------------------------------------------------------------------
# building


def _part_offset(part, shape) -> tuple[int, int, int] | None:
    """Row slice (dim 0) for a table ``part`` on a weight of ``shape``; None when it does not fit."""
    kind, idx = part
    rows = shape[0]
    fan_in = shape[1] if len(shape) > 1 else None
    if kind == "qkv":
        q = fan_in
        if q is None or (rows - q) <= 0 or (rows - q) % 2:
            return None
        kv = (rows - q) // 2
        return (0, (0, q, q + kv)[idx], (q, kv, kv)[idx])
    if kind == "qkvm":
        h = fan_in
        if h is None or rows <= 3 * h:
            return None
        if idx == "qkv":
            return (0, 0, 3 * h)
        return (0, idx * h, h) if idx < 3 else (0, 3 * h, rows - 3 * h)
    if kind == "kv":
        if rows % 2:
            return None
        return (0, idx * rows // 2, rows // 2)
    raise ValueError(f"unknown part {part!r}")


def _template_regex(template: str):
    rx = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile("^" + rx + "$")


def _module_index(sd_shapes: dict) -> dict[str, str]:
    """ComfyUI module path -> its weight key (``.weight``, else ``.scale``), for diffusion_model params."""
    mods = {}
    for k in sd_shapes:
        if not k.startswith("diffusion_model."):
            continue
        path, _, param = k[len("diffusion_model."):].rpartition(".")
        if param == "weight" or (param == "scale" and path not in mods):
            mods[path] = k
    return mods


def _bias_for(key: str, sd_shapes: dict) -> str | None:
    base = key.rpartition(".")[0]
    b = base + ".bias"
    return b if b in sd_shapes else None


def _swap_fn():
    import comfy.utils

    return comfy.utils.swap_scale_shift


def _from_table(fam: _tables.Family, sd_shapes: dict, mods: dict) -> dict[str, Target]:
    """diffusers module path -> Target for our own rows of ``fam`` (identity entries first when declared)."""
    out = {}
    if fam.identity:
        for cpath, key in mods.items():
            out[cpath] = Target(key, None, None, _bias_for(key, sd_shapes))
    for dtpl, ctpl, part in fam.rows:
        if "{" not in ctpl:
            matches = [({}, ctpl)] if ctpl in mods else []
        else:
            rx = _template_regex(ctpl)
            matches = [(m.groupdict(), path) for path in mods for m in [rx.match(path)] if m]
        for groups, cpath in matches:
            key = mods[cpath]
            dpath = dtpl.format(**groups)
            offset, fn = None, None
            if part == _tables.SWAP:
                fn = _swap_fn()
            elif part is not None:
                offset = _part_offset(part, sd_shapes[key])
                if offset is None:
                    continue
            out[dpath] = Target(key, offset, fn, _bias_for(key, sd_shapes))
    return out


def _from_builtin(fam: _tables.Family, model, sd_shapes: dict) -> dict[str, Target]:
    """diffusers module path -> Target from the ComfyUI converter ``fam.builtin`` (weights only, filtered)."""
    import comfy.utils

    fn = getattr(comfy.utils, fam.builtin, None)
    if fn is None:
        return {}
    cfg = model.model_config.unet_config
    try:
        raw = fn(cfg) if fam.builtin == "unet_to_diffusers" else fn(cfg, output_prefix="diffusion_model.")
    except Exception:  # a converter that does not fit this config variant: the rows and ComfyUI's map remain
        return {}
    if fam.builtin == "unet_to_diffusers":
        raw = {k: "diffusion_model." + v for k, v in raw.items()}
    out, biases = {}, {}
    for dkey, t in raw.items():
        dpath, _, param = dkey.rpartition(".")
        if isinstance(t, str):
            t = (t, None, None)
        key, offset, fn_ = (tuple(t) + (None, None))[:3]
        if key not in sd_shapes:
            continue
        if offset is not None:
            dim, start, length = offset
            if start + length > sd_shapes[key][dim]:
                continue
        if param == "weight":
            out[dpath] = Target(key, tuple(offset) if offset is not None else None, fn_)
        elif param == "bias":
            biases[dpath] = key
    for dpath, t in list(out.items()):
        b = biases.get(dpath)
        if b is not None:
            out[dpath] = Target(t.key, t.offset, t.function, b)
    return out


def _from_comfy_lora(model, sd_shapes: dict, reject: tuple = ()) -> dict[str, Target]:
    """Every module name ComfyUI's own ``model_lora_keys_unet`` accepts -> Target (keys present in the model,
    names matching a ``reject`` regex dropped)."""
    import comfy.lora

    out = {}
    try:
        km = comfy.lora.model_lora_keys_unet(model, {})
    except Exception:
        return out
    rx = re.compile("|".join(reject)) if reject else None
    for name, t in km.items():
        if rx is not None and rx.search(name):
            continue
        if isinstance(t, str):
            t = (t,)
        key = t[0]
        if key not in sd_shapes or name == key:
            continue
        offset = t[1] if len(t) > 1 else None
        fn = t[2] if len(t) > 2 else None
        if offset is not None and offset[1] + offset[2] > sd_shapes[key][offset[0]]:
            continue
        out[name] = Target(key, tuple(offset) if offset is not None else None, fn,
                           _bias_for(key, sd_shapes) if key.endswith(".weight") else None)
    return out


def _build(model) -> KeyMap:
    sd = model.state_dict()
    sd_shapes = {k: tuple(v.shape) for k, v in sd.items()}
    del sd
    family = family_of(model)
    fam = family_table(family)
    mods = _module_index(sd_shapes)

    diffusers: dict[str, Target] = {}
    if fam is not None:
        if fam.builtin:
            diffusers.update(_from_builtin(fam, model, sd_shapes))
        diffusers.update(_from_table(fam, sd_shapes, mods))

    km = KeyMap(family=family)
    canonical: dict[str, Target] = {}
    for dpath, t in diffusers.items():  # diffusers spellings first: they win every collision
        for s in _diffusers_spellings(dpath):
            km.setdefault(s, t)
        canonical.setdefault(dpath.replace(".", "_"), t)
    for cpath, key in mods.items():  # the model's own module paths
        t = Target(key, None, None, _bias_for(key, sd_shapes))
        for s in _comfy_spellings(cpath):
            km.setdefault(s, t)
        canonical.setdefault(cpath.replace(".", "_"), t)
    reject = fam.comfy_reject if fam else ()
    for name, t in _from_comfy_lora(model, sd_shapes, reject).items():  # whatever else ComfyUI accepts
        km.setdefault(name, t)
    km.canonical = canonical
    return km


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def build_key_map(model_patcher) -> KeyMap:
    """Every accepted module-name spelling -> :class:`Target` for a ComfyUI model (``ModelPatcher`` or model).

    Returns a :class:`KeyMap` (a dict): for each diffusers module path ``d`` of the model's family the names
    ``lycoris_<d_>``, ``lora_unet_<d_>``, ``lora_transformer_<d_>``, ``d``, ``transformer.d``, ``unet.d``,
    ``base_model.model.d``; for each of the model's own module paths ``c`` the names
    ``diffusion_model.c``, ``lora_unet_<c_>``, ``lycoris_<c_>``, ``c``; plus every name ComfyUI's
    ``model_lora_keys_unet`` accepts. Norm modules map to their weight (or ``.scale``) key. Only keys present in
    ``model.state_dict()`` are returned. Cached per model instance (weakly), so it is cheap to call per load.
    """
    model = _base_model(model_patcher)
    try:
        return _CACHE[model]
    except (KeyError, TypeError):
        pass
    km = _build(model)
    try:
        _CACHE[model] = km
    except TypeError:
        pass
    return km
