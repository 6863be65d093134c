# SPDX-License-Identifier: GPL-3.0-or-later
"""A small bounded cache of parsed LyCORIS files, keyed by (path, mtime_ns, size), shared across prompts.

V3 nodes have no instance state (execute runs on a locked class clone), so the cache lives at module level.
A file replaced under the same name has a new mtime/size and is parsed again.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..lycoris_core.adapters.base import Adapter
from ..lycoris_core.adapters.registry import parse_modules
from ..lycoris_core.safetensors_file import LycorisFile, read_lycoris_file

MAX_FILES = 4


@dataclass
class ParsedFile:
    """A read file and its adapters by module name (CPU tensors in the file's dtype)."""

    file: LycorisFile
    adapters: dict[str, Adapter]


_cache: "OrderedDict[tuple, ParsedFile]" = OrderedDict()
_lock = threading.Lock()


def file_signature(path: str) -> tuple:
    """(absolute path, mtime in ns, size in bytes): changes whenever the file is replaced or rewritten."""
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


PROGRESS_MIN_BYTES = 256 * 2**20  # files this big report reading progress on ComfyUI's progress bar


def _progress_bar(path: str):
    """A progress(done, total) callback driving ComfyUI's progress bar for big files, else None."""
    if os.path.getsize(path) < PROGRESS_MIN_BYTES:
        return None
    import comfy.utils

    bar = comfy.utils.ProgressBar(100)
    return lambda done, total: bar.update_absolute(int(100 * done / total), 100)


def load_parsed(path: str, rank_cap: int | None = None) -> ParsedFile:
    """The parsed file at `path`, from the cache when its signature is unchanged."""
    key = file_signature(path) + (rank_cap,)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    lyco = read_lycoris_file(path, progress=_progress_bar(path))
    parsed = ParsedFile(lyco, parse_modules(lyco.tensors, os.path.basename(path), rank_cap=rank_cap))
    with _lock:
        _cache[key] = parsed
        while len(_cache) > MAX_FILES:
            _cache.popitem(last=False)
    return parsed


def clear() -> None:
    """Forget every cached file."""
    with _lock:
        _cache.clear()
