# SPDX-License-Identifier: GPL-3.0-or-later
"""T-LoRA SVD bases: prepared before sampling, cached in memory and on disk, keyed by a hash of the weight.

LyCORIS 4.1.3 does not save T-LoRA's frozen base (P0, Q0, λ0 = the top-r SVD of the target weight), so a loader
rebuilds it from the base model (lycoris-format §1.5, §4.8). `prepare_bases(patcher)` runs from an ON_PRE_RUN
callback (after ComfyUI loaded the model, before the first step): for every T-LoRA slice of every LyCORIS load on
the patcher it takes the *unpatched* target weight (or its row slice of a fused qkv/linear1, in the file's row
order), hashes it (BLAKE2b of the fp32 bytes), and sets the adapter's base from, in order: the adapter itself
(same hash), this process's memory cache, the disk cache, or a fresh exact SVD (`tlora_svd_base`, float64 Gram
eigendecomposition for large matrices, fp32 or better), with ComfyUI's progress bar while computing. Weights
stored quantized (fp8, QuantizedTensor, scaled fp8) are dequantized first and a warning says the base then differs
from the one used in training.

Disk cache: `<ComfyUI user dir>/lycoris_cache/tlora_svd/<hash>_r<rank>.safetensors` (fp32, unrounded), or
`$LYCORIS_TLORA_CACHE_DIR`; bounded by `$LYCORIS_TLORA_CACHE_MAX_MB` (default 2048), oldest files removed first.
`LYCORIS_TLORA_CACHE_DIR=off` disables it. The temp dir is not used because ComfyUI empties it at every start.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
import uuid
from collections import OrderedDict

import torch
import comfy.patcher_extension
import comfy.utils

from ..lycoris_core.adapters.tlora import tlora_svd_base
from .bypass import _row_permutation
from .layers import is_quantized

log = logging.getLogger(__name__)

CACHE_VERSION = 1
PREP_KEY = "lycoris_tlora_bases"
ENV_DIR = "LYCORIS_TLORA_CACHE_DIR"
ENV_MAX_MB = "LYCORIS_TLORA_CACHE_MAX_MB"
DEFAULT_MAX_MB = 2048
MEMORY_BYTES = 512 * 2**20
#: bases at least this large (out·in) count as "long SVD work" worth a log line
LONG_WORK_ELEMENTS = 1 << 20

_lock = threading.Lock()
_memory: "OrderedDict[tuple[str, int], tuple]" = OrderedDict()
_memory_bytes = 0
#: what the last prepare_bases did: {"slices", "computed", "memory", "disk", "kept", "quantized", "seconds"}
last_stats: dict = {}


# ------------------------------------------------------------------------------------------------ hashing
def weight_digest(weight: torch.Tensor) -> str:
    """BLAKE2b-160 of the fp32 values of `weight` (shape included): the same on every device."""
    w = weight.detach().float().contiguous().cpu()
    h = hashlib.blake2b(digest_size=20)
    h.update(f"v{CACHE_VERSION}:{tuple(w.shape)}:".encode())
    h.update(memoryview(w.view(torch.int32).numpy()).cast("B"))
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ disk
def cache_dir() -> str | None:
    """The disk cache folder, or None when disabled (`LYCORIS_TLORA_CACHE_DIR=off`)."""
    env = os.environ.get(ENV_DIR, "").strip()
    if env.lower() in ("off", "0", "none", "false"):
        return None
    if env:
        return env
    try:
        import folder_paths
        root = folder_paths.get_user_directory()
    except Exception:  # noqa: BLE001 - no ComfyUI paths (plain python): no disk cache
        return None
    return os.path.join(root, "lycoris_cache", "tlora_svd")


def _disk_path(digest: str, rank: int) -> str | None:
    root = cache_dir()
    return None if root is None else os.path.join(root, f"{digest}_r{rank}.safetensors")


def _disk_get(digest: str, rank: int):
    path = _disk_path(digest, rank)
    if path is None or not os.path.isfile(path):
        return None
    try:
        from safetensors.torch import load_file
        t = load_file(path)
        svd = (t["p0"], t["q0"], t["lam0"])
        if svd[0].shape[1] != rank or svd[1].shape[0] != rank or svd[2].numel() != rank:
            raise ValueError("rank mismatch")
        os.utime(path)  # recently used: pruned last
        return svd
    except Exception as e:  # noqa: BLE001 - a damaged entry is recomputed
        log.warning("LyCORIS T-LoRA: ignoring unreadable SVD cache entry %s (%s)", path, e)
        return None


def _disk_put(digest: str, rank: int, svd) -> None:
    path = _disk_path(digest, rank)
    if path is None:
        return
    try:
        from safetensors.torch import save_file
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        p0, q0, lam0 = (t.detach().float().contiguous().cpu() for t in svd)
        save_file({"p0": p0, "q0": q0, "lam0": lam0}, tmp, {"version": str(CACHE_VERSION)})
        os.replace(tmp, path)
        _prune(os.path.dirname(path))
    except OSError as e:
        log.warning("LyCORIS T-LoRA: could not write the SVD cache (%s); bases are recomputed next time", e)


def _prune(folder: str) -> None:
    try:
        limit = float(os.environ.get(ENV_MAX_MB, DEFAULT_MAX_MB)) * 2**20
    except ValueError:
        limit = DEFAULT_MAX_MB * 2**20
    entries = []
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            st = os.stat(os.path.join(folder, name))
            entries.append((st.st_mtime, st.st_size, name))
    total = sum(e[1] for e in entries)
    for _, size, name in sorted(entries):
        if total <= limit:
            break
        try:
            os.remove(os.path.join(folder, name))
            total -= size
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------ memory
def _memory_get(digest: str, rank: int):
    with _lock:
        hit = _memory.get((digest, rank))
        if hit is not None:
            _memory.move_to_end((digest, rank))
        return hit


def _memory_put(digest: str, rank: int, svd) -> None:
    global _memory_bytes
    svd = tuple(t.detach().float().cpu() for t in svd)
    size = sum(t.numel() * 4 for t in svd)
    with _lock:
        if (digest, rank) in _memory:
            return
        _memory[(digest, rank)] = svd
        _memory_bytes += size
        while _memory_bytes > MEMORY_BYTES and len(_memory) > 1:
            _, old = _memory.popitem(last=False)
            _memory_bytes -= sum(t.numel() * 4 for t in old)


def clear_memory() -> None:
    """Forget the in-process cache (tests; the disk cache stays)."""
    global _memory_bytes
    with _lock:
        _memory.clear()
        _memory_bytes = 0


def cached_svd_base(weight, rank: int, digest: str | None = None) -> tuple[tuple, str]:
    """(svd, where) for `weight` (a tensor, or a callable giving it, called only when needed) at `rank`: where is
    "memory", "disk" or "computed" (then stored in both). `digest` defaults to `weight_digest(weight)`."""
    get = weight if callable(weight) else (lambda: weight)
    digest = digest or weight_digest(get())
    hit = _memory_get(digest, rank)
    if hit is not None:
        return hit, "memory"
    hit = _disk_get(digest, rank)
    if hit is not None:
        _memory_put(digest, rank, hit)
        return hit, "disk"
    svd = tlora_svd_base(get(), rank)
    _memory_put(digest, rank, svd)
    _disk_put(digest, rank, svd)
    return svd, "computed"


# ------------------------------------------------------------------------------------------------ weights
def _original_weight(patcher, module_path: str, module: torch.nn.Module) -> torch.Tensor:
    """The module's unpatched weight (ModelPatcher.backup holds it while merged patches are applied)."""
    backup = getattr(patcher, "backup", {}).get(f"{module_path}.weight")
    return backup.weight if backup is not None else module.weight


def _dequantize(weight, module: torch.nn.Module, device) -> torch.Tensor:
    if type(weight).__name__ == "QuantizedTensor":
        weight = weight.dequantize()
    weight = weight.detach().to(device=device, dtype=torch.float32)
    scale = getattr(module, "scale_weight", None)
    if scale is not None:
        weight = weight * scale.to(device=device, dtype=torch.float32)
    return weight


def slice_weight(patcher, module_path: str, module: torch.nn.Module, bypass_slice, device=None) -> torch.Tensor:
    """The fp32 weight a T-LoRA slice was trained on: the target's unpatched weight, or its row slice of a fused
    weight, rows in the file's order (ComfyUI row functions undone, as the bypass hook does)."""
    weight = _original_weight(patcher, module_path, module)
    device = device if device is not None else weight.device
    w = _dequantize(weight, module, device)
    if bypass_slice.offset is not None:
        dim, start, length = bypass_slice.offset
        w = w.narrow(dim, start, length)
    perm = _row_permutation(bypass_slice.function, w.shape[0])
    if perm is not None:
        w = w[torch.argsort(perm).to(w.device)]
    return w


def _digest_memo(module: torch.nn.Module, weight: torch.Tensor, offset, function) -> tuple[dict, tuple]:
    """Per-module memo of digests, keyed by the weight's storage and version (rehash only when it changed)."""
    memo = module.__dict__.setdefault("_lycoris_tlora_digests", {})
    try:
        version = weight._version
    except RuntimeError:  # inference tensors track no version; ComfyUI keeps the original in patcher.backup
        version = None
    key = (offset, getattr(function, "__name__", None), weight.device.type, weight.data_ptr(), version,
           tuple(weight.shape), weight.dtype)
    return memo, key


def tlora_slices(patcher):
    """(record, module path, BypassSlice) for every T-LoRA slice without stored base loaded on `patcher`."""
    from .apply import loaded_lycoris

    for record in loaded_lycoris(patcher):
        injection = record.injection
        if injection is None:
            continue
        for path, slices in injection.targets.items():
            for s in slices:
                if s.adapter.algo == "tlora" and not s.adapter.has_stored_base:
                    yield record, path, s


def quantized_targets(patcher) -> list[str]:
    """Module paths of T-LoRA targets (needing an SVD base) whose weights are stored quantized."""
    out = []
    for _, path, _ in tlora_slices(patcher):
        module = comfy.utils.get_attr(patcher.model, path)
        if is_quantized(module) and path not in out:
            out.append(path)
    return out


# ------------------------------------------------------------------------------------------------ the pass
def prepare_bases(patcher, progress: bool = True) -> dict:
    """Set the SVD base of every T-LoRA slice on `patcher` from its unpatched target weight (see module doc).

    Cheap when nothing changed (digests are memoised per weight storage). Returns and records in `last_stats`
    how many bases were kept, found in memory/on disk, or computed."""
    start = time.perf_counter()
    stats = {"slices": 0, "kept": 0, "memory": 0, "disk": 0, "computed": 0, "quantized": 0, "seconds": 0.0}
    work = []
    quantized = []
    for record, path, s in tlora_slices(patcher):
        stats["slices"] += 1
        module = comfy.utils.get_attr(patcher.model, path)
        weight = _original_weight(patcher, path, module)
        memo, key = _digest_memo(module, weight, s.offset, s.function)
        digest = memo.get(key)
        if digest is not None and s.adapter.base_token == digest:
            stats["kept"] += 1
            continue
        if is_quantized(module):
            quantized.append(path)
        work.append((record, path, module, s, memo, key, digest))
    if quantized:
        stats["quantized"] = len(quantized)
        log.warning("LyCORIS T-LoRA: %d target weight(s) are stored quantized (e.g. %s); the T-LoRA base is "
                    "rebuilt from the dequantized weight, which differs from the weight it was trained on, so "
                    "results deviate slightly from SimpleTuner's. Load the base model in bf16/fp16 for exact "
                    "results.", len(quantized), quantized[0])
    bar = comfy.utils.ProgressBar(len(work)) if work and progress else None
    device = _svd_device(patcher)
    for record, path, module, s, memo, key, digest in work:
        w = None
        if digest is None:
            w = slice_weight(patcher, path, module, s, device)
            digest = memo[key] = weight_digest(w)
        if s.adapter.base_token == digest:
            stats["kept"] += 1
        else:
            t0 = time.perf_counter()
            weight_fn = (lambda w=w, path=path, module=module, s=s:
                         w if w is not None else slice_weight(patcher, path, module, s, device))
            svd, where = cached_svd_base(weight_fn, s.adapter.rank, digest)
            stats[where] += 1
            s.adapter.prepare_base(svd=svd, token=digest)
            if where == "computed" and math.prod(module.weight.shape) >= LONG_WORK_ELEMENTS:
                log.info("LyCORIS T-LoRA: SVD base of %s rank %d in %.2fs", path, s.adapter.rank,
                         time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
    stats["seconds"] = time.perf_counter() - start
    if stats["computed"] or stats["disk"]:
        log.info("LyCORIS T-LoRA bases: %d computed, %d from disk cache (%s), %d from memory, %d kept, %.2fs",
                 stats["computed"], stats["disk"], cache_dir() or "disabled", stats["memory"], stats["kept"],
                 stats["seconds"])
    last_stats.clear()
    last_stats.update(stats)
    return stats


def _svd_device(patcher):
    """Where to compute: the model's load device when it is a GPU (fast float64 GEMMs), else the CPU."""
    dev = torch.device(getattr(patcher, "load_device", "cpu"))
    return dev if dev.type in ("cuda", "xpu") else torch.device("cpu")


def _prepare_callback(patcher) -> None:
    prepare_bases(patcher)


def install_base_preparation(patcher) -> None:
    """Register (once per patcher) the ON_PRE_RUN callback that prepares the T-LoRA bases before sampling."""
    kind = comfy.patcher_extension.CallbacksMP.ON_PRE_RUN
    if PREP_KEY in patcher.callbacks.get(kind, {}):
        return
    patcher.add_callback_with_key(kind, PREP_KEY, _prepare_callback)


__all__ = ["weight_digest", "cache_dir", "cached_svd_base", "slice_weight", "prepare_bases", "quantized_targets",
           "install_base_preparation", "clear_memory", "tlora_slices", "last_stats", "PREP_KEY"]
