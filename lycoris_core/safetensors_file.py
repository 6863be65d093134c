# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading LyCORIS safetensors files safely: header validated before any tensor is allocated.

Safetensors layout: 8-byte little-endian header length N, N bytes of JSON header ({name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {str: str}}), then the data buffer. Pickle formats (.ckpt/.pt/.bin/
.pth, or a pickle/zip magic) are refused: loading them runs arbitrary code.
"""
from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass, field

import safetensors
import safetensors.torch
import torch

from .errors import AdapterFormatError

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 100 * 1024 * 1024
SIDECAR_NAME = "lycoris_config.json"
CONFIG_KEY = "lycoris_config"
_PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_CONVERT = "convert it to .safetensors (e.g. load it once in a trusted Python session and save it with " \
           "safetensors.torch.save_file)"

#: safetensors dtype -> (torch dtype name, bytes per element)
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
    "U16": ("uint16", 2), "U32": ("uint32", 4), "U64": ("uint64", 8),
}


@dataclass
class TensorInfo:
    """One header entry: dtype (safetensors name), shape, byte range inside the data buffer."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class LycorisFile:
    """A read LyCORIS file: tensors on CPU in the file dtype, string metadata, parsed `lycoris_config`.

    config_source: "metadata" (the `lycoris_config` metadata key), "sidecar:<path>" (lycoris_config.json beside
    the file), or "none"; `warnings` lists what was ignored (e.g. metadata that is not JSON).
    """

    path: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    config: dict | None
    config_source: str
    warnings: list[str] = field(default_factory=list)


def _fail(path: str, problem: str, fix: str) -> AdapterFormatError:
    return AdapterFormatError(f"{path}: {problem}. Fix: {fix}.")


def _refuse_pickle(path: str, head: bytes) -> None:
    ext = os.path.splitext(path)[1].lower()
    if ext in _PICKLE_EXTS:
        raise _fail(path, f"'{ext}' files are pickles, which can run code when loaded and are not read here",
                    _CONVERT)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise _fail(path, "the file starts with a pickle header (a PyTorch checkpoint renamed?)", _CONVERT)
    if head[:4] == b"PK\x03\x04":
        raise _fail(path, "the file is a zip archive (a PyTorch checkpoint renamed?)", _CONVERT)


def read_header(path: str) -> tuple[dict[str, str], dict[str, TensorInfo], int]:
    """(metadata, tensor infos, data start offset) from the file's header, fully validated; reads no tensor data."""
    path = os.fspath(path)
    _refuse_pickle(path, b"")  # by extension: a pickle file is never even opened
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            _refuse_pickle(path, head)
            if len(head) < 8:
                raise _fail(path, f"file is {size} bytes, too short for a safetensors header",
                            "the file is truncated; download or copy it again")
            (n,) = struct.unpack("<Q", head)
            if n >= size or n > size - 8:
                raise _fail(path, f"header length {n} bytes exceeds the file size {size}",
                            "the file is truncated or not a safetensors file; download or copy it again")
            if n >= MAX_HEADER_BYTES:
                raise _fail(path, f"header length {n} bytes is over the {MAX_HEADER_BYTES} byte limit",
                            "this is not a plausible LyCORIS file; re-export it")
            raw = f.read(n)
    except OSError as e:
        raise _fail(path, f"cannot read the file ({e.strerror or e})", "check the path and permissions") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(path, f"the safetensors header is not valid JSON ({e})",
                    "the file is damaged or not a safetensors file; re-export it") from None
    if not isinstance(header, dict):
        raise _fail(path, "the safetensors header is not a JSON object", "re-export the file")
    data_start = 8 + n
    data_size = size - data_start
    meta_raw = header.pop("__metadata__", None) or {}
    if not isinstance(meta_raw, dict):
        raise _fail(path, "key '__metadata__' is not a JSON object", "re-export the file")
    for k, v in meta_raw.items():
        if not isinstance(v, str):  # safetensors itself refuses such a file: say which key
            raise _fail(path, f"metadata key '{k}' holds a {type(v).__name__}, not a string",
                        "re-save the file with string metadata values (json.dumps them)")
    metadata = dict(meta_raw)
    infos: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        if not isinstance(entry, dict):
            raise _fail(path, f"header entry for key '{key}' is not an object", "re-export the file")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise _fail(path, f"key '{key}' has unknown dtype {_short(dtype)}",
                        "re-export the file with a standard dtype (F32/F16/BF16)")
        if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
            raise _fail(path, f"key '{key}' has an invalid shape {_short(shape)}", "re-export the file")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise _fail(path, f"key '{key}' has invalid data_offsets {_short(offsets)}", "re-export the file")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise _fail(path, f"key '{key}' data_offsets [{begin}, {end}] fall outside the {data_size} data bytes",
                        "the file is truncated; download or copy it again")
        expect = math.prod(shape) * _DTYPES[dtype][1]
        if end - begin != expect:
            raise _fail(path, f"key '{key}' holds {end - begin} bytes but {dtype}{shape} needs {expect}",
                        "the file is damaged; re-export it")
        infos[key] = TensorInfo(dtype, tuple(shape), begin, end)
    # safetensors stores tensors back to back and covers the whole data buffer; check it here to name the key.
    pos = 0
    for key, info in sorted(infos.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if info.begin != pos:
            raise _fail(path, f"key '{key}' data starts at byte {info.begin} of the data buffer, but the previous "
                              f"tensor ends at byte {pos} (overlapping or gapped tensors)",
                        "the file is damaged or hand-edited; re-export it")
        pos = info.end
    if pos != data_size:
        raise _fail(path, f"the tensors cover {pos} of the {data_size} data bytes (trailing data)",
                    "the file is damaged or was appended to; re-export it")
    return metadata, infos, data_start


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v, limit: int = 80) -> str:
    """repr(v), cut to `limit` characters (header values come from untrusted files)."""
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def read_metadata_only(path: str) -> dict[str, str]:
    """The file's `__metadata__` (str -> str) from the validated header, without reading tensor data."""
    return read_header(path)[0]


def _parse_config(path: str, metadata: dict[str, str], warnings: list[str]) -> tuple[dict | None, str]:
    text = metadata.get(CONFIG_KEY)
    if text is not None:
        try:
            config = json.loads(text)
            if isinstance(config, dict):
                return config, "metadata"
            warnings.append(f"{path}: metadata '{CONFIG_KEY}' is JSON but not an object; ignored")
        except ValueError as e:
            warnings.append(f"{path}: metadata '{CONFIG_KEY}' is not valid JSON ({e}); ignored")
    sidecar = os.path.join(os.path.dirname(os.path.abspath(path)), SIDECAR_NAME)
    if os.path.isfile(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as f:
                config = json.load(f)
            if isinstance(config, dict):
                return config, f"sidecar:{sidecar}"
            warnings.append(f"{sidecar}: not a JSON object; ignored")
        except (OSError, ValueError) as e:
            warnings.append(f"{sidecar}: unreadable or not valid JSON ({e}); ignored")
    return None, "none"


def _load_tensors(path: str, infos: dict, progress) -> dict[str, torch.Tensor]:
    if progress is None:
        return safetensors.torch.load_file(path, device="cpu")
    total = sum(info.end - info.begin for info in infos.values()) or 1
    done, tensors = 0, {}
    with safetensors.safe_open(path, framework="pt", device="cpu") as f:
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
            done += infos[key].end - infos[key].begin
            progress(done, total)
    return tensors


def read_lycoris_file(path: str, progress=None) -> LycorisFile:
    """Read a LyCORIS .safetensors file: validated header, CPU tensors in the file dtype, metadata, config.

    `progress(done_bytes, total_bytes)`, if given, is called after each tensor (for big files)."""
    path = os.fspath(path)
    metadata, infos, data_start = read_header(path)
    for key, info in infos.items():
        if getattr(torch, _DTYPES[info.dtype][0], None) is None:
            raise _fail(path, f"key '{key}' has dtype {info.dtype}, which this torch cannot hold",
                        "re-export the file as F32/F16/BF16")
    try:
        tensors = _load_tensors(path, infos, progress)
    except Exception as e:  # the header passed our checks; safetensors found something else wrong
        raise _fail(path, f"safetensors could not load the tensors ({e})", "the file is damaged; re-export it") \
            from None
    warnings: list[str] = []
    config, source = _parse_config(path, metadata, warnings)
    for w in warnings:
        log.warning(w)
    return LycorisFile(path=path, tensors=tensors, metadata=metadata, config=config, config_source=source,
                       warnings=warnings)
