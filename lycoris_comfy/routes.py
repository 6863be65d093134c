# SPDX-License-Identifier: GPL-3.0-or-later
"""HTTP route for the page extension: ``GET /lycoris/api/info?name=<lycoris_name>`` (also under ``/api/``).

It answers with what a LyCORIS file's safetensors **header** says (algorithms, ranks / LoKr factors, module count,
base model, T-LoRA schedule, a few metadata keys), as JSON. Rules:

- only names that ComfyUI lists in its ``loras`` folders are read (:func:`paths.resolve_lycoris_path`: no paths,
  no ``..``, nothing that resolves outside the folders);
- only the header is read (``lycoris_core.safetensors_file.read_header``): no tensor data, no sidecar files, no
  pickles. The node ``LycorisInfo`` reads the whole file; this is the cheap preview while a name is picked.

Answers 200 ``{"name", "found": true, ...summary}``; for a name not in the loras folders, or a file that is not a
valid safetensors file, 200 ``{"name", "found": false, "error"}`` (the page shows the sentence; a lookup miss is
not an HTTP error, so a workflow naming files the user lacks leaves the browser console clean); 400 without
``name``. Registered by ``nodes/extension.py`` only when a PromptServer exists.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter, OrderedDict

from ..lycoris_core.adapters.registry import detect_algorithm
from ..lycoris_core.errors import LycorisError
from ..lycoris_core.safetensors_file import CONFIG_KEY, read_header
from ..lycoris_core.tlora_schedule import tlora_params_from_config
from .paths import resolve_lycoris_path

log = logging.getLogger("comfyui_lycoris")

ROUTE = "/lycoris/api/info"
METADATA_KEYS = ("modelspec.architecture", "modelspec.title", "modelspec.implementation", "modelspec.resolution",
                 "modelspec.date", "global_step", "ss_network_module")
_CACHE: "OrderedDict[tuple, dict]" = OrderedDict()
_CACHE_SIZE = 64
_registered = False


class _Shape:
    """Stands in for a tensor in ``detect_algorithm`` (which only asks ``oft_blocks.dim()``)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def dim(self) -> int:
        return len(self.shape)


def _rank(algo: str, shapes: dict) -> int | None:
    """The module's rank (LoRA dim / OFT block size) from tensor shapes; None where it has none (full LoKr,
    IA3, full, norm)."""
    s = shapes.get
    try:
        if algo == "locon":
            return s("lora_down.weight")[0]
        if algo == "loha":
            return s("hada_w1_b")[0]
        if algo == "lokr":
            if s("lokr_w1_a"):
                return s("lokr_w1_a")[1]
            if s("lokr_t2"):
                return s("lokr_t2")[0]
            if s("lokr_w2_a"):
                return s("lokr_w2_a")[1]
            return None
        if algo == "tlora":
            return s("q_layer.weight")[0]
        if algo == "glora":
            return s("a2.weight")[0]
        if algo == "diag-oft":
            return s("oft_blocks")[1]
        if algo == "boft":
            return s("oft_blocks")[2]
    except (TypeError, IndexError):
        return None
    return None


def _lokr_factor(shapes: dict) -> str | None:
    """LoKr's small Kronecker factor as ``"a x c"`` (its rows are the config's ``factor`` when it divides)."""
    if shapes.get("lokr_w1"):
        w1 = shapes["lokr_w1"]
        return f"{w1[0]}x{w1[1]}" if len(w1) >= 2 else None
    a, b = shapes.get("lokr_w1_a"), shapes.get("lokr_w1_b")
    return f"{a[0]}x{b[1]}" if a and b and len(b) >= 2 else None


def _counts(counter: Counter) -> dict:
    return {str(k): n for k, n in sorted(counter.items(), key=lambda kv: (str(type(kv[0])), kv[0]))}


def summarize_header(path: str) -> dict:
    """The JSON-ready summary of the LyCORIS file at ``path`` from its header alone."""
    metadata, infos, _ = read_header(path)
    modules: dict[str, dict] = {}
    for key, info in infos.items():
        prefix, dot, suffix = key.partition(".")
        if dot:
            modules.setdefault(prefix, {})[suffix] = info.shape
    algos, ranks, factors, unknown = Counter(), Counter(), Counter(), []
    dora, full_lokr = 0, 0
    for name, shapes in modules.items():
        algo = detect_algorithm(set(shapes), {k: _Shape(v) for k, v in shapes.items()})
        if algo is None:
            unknown.append(name)
            continue
        algos[algo] += 1
        rank = _rank(algo, shapes)
        if rank is not None:
            ranks[rank] += 1
        if algo == "lokr":
            factor = _lokr_factor(shapes)
            if factor:
                factors[factor] += 1
            if rank is None:
                full_lokr += 1
        if "dora_scale" in shapes:
            dora += 1
    config, config_note = None, "none"
    if CONFIG_KEY in metadata:
        try:
            parsed = json.loads(metadata[CONFIG_KEY])
            config, config_note = (parsed, "metadata") if isinstance(parsed, dict) else (None, "not an object")
        except ValueError:
            config_note = "not valid JSON"
    try:
        from .keymaps import guess_family

        family = guess_family(modules.keys())
    except Exception:  # noqa: BLE001 - a guess only
        family = None
    out = {
        "file": os.path.basename(path),
        "size_mib": round(os.path.getsize(path) / 2**20, 2),
        "tensors": len(infos),
        "modules": len(modules),
        "algorithms": _counts(algos),
        "ranks": _counts(ranks),
        "lokr_factors": _counts(factors),
        "lokr_full_matrix_modules": full_lokr,
        "dora_modules": dora,
        "dtypes": _counts(Counter(i.dtype for i in infos.values())),
        "base_model": metadata.get("modelspec.architecture") or family,
        "family_guess": family,
        "metadata": {k: metadata[k] for k in METADATA_KEYS if k in metadata},
        "lycoris_config": config,
        "lycoris_config_source": config_note,
        "unknown_modules": sorted(unknown)[:8],
        "tlora": None,
    }
    if algos.get("tlora"):
        params = tlora_params_from_config(config, module_ranks=[r for r in ranks if isinstance(r, int)])
        out["tlora"] = {k: params[k] for k in ("min_rank", "alpha", "max_rank")} | {"source": params["source"]}
    if config:
        for key in ("algo", "factor", "linear_dim", "linear_alpha", "full_matrix", "bypass_mode"):
            if key in config:
                out.setdefault("config", {})[key] = config[key]
    return out


def info_for_name(name: str) -> dict:
    """:func:`summarize_header` of loras file ``name`` (LycorisError if it isn't listed), cached by mtime."""
    path = resolve_lycoris_path(name)
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    out = {"name": name, "found": True, **summarize_header(path)}
    _CACHE[key] = out
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out


def metadata_summary(name: str) -> dict:
    """Alias kept for callers of the first version of this module."""
    return info_for_name(name)


def register() -> bool:
    """Add the route to ComfyUI's server if one is running (no-op in scripts and tests); True if added."""
    global _registered
    if _registered:
        return True
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return False
    if getattr(PromptServer, "instance", None) is None:
        return False
    import asyncio

    async def lycoris_info(request):
        name = request.query.get("name", "")
        if not name:
            return web.json_response({"error": "pass ?name=<a file from models/loras>"}, status=400)
        try:
            return web.json_response(await asyncio.to_thread(info_for_name, name))
        except LycorisError as e:
            return web.json_response({"name": name, "found": False, "error": str(e)})
        except OSError as e:
            return web.json_response({"name": name, "found": False,
                                      "error": f"cannot read {name!r}: {e.strerror or e}"})

    PromptServer.instance.routes.get(ROUTE)(lycoris_info)
    _registered = True
    return True
