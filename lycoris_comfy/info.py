# SPDX-License-Identifier: GPL-3.0-or-later
"""A plain-text description of a LyCORIS file: what `LycorisInfo` shows."""
from __future__ import annotations

import json
import os
from collections import Counter

from ..lycoris_core.tlora_schedule import tlora_params_from_config
from .file_cache import load_parsed
from .keymaps import guess_family

_METADATA_KEYS = ("modelspec.architecture", "modelspec.title", "global_step", "modelspec.resolution",
                  "modelspec.implementation")


def describe_file(path: str) -> str:
    """Algorithms, ranks, module count, likely model family, metadata and T-LoRA schedule of the file at `path`."""
    parsed = load_parsed(path)
    adapters = parsed.adapters.values()
    algos = Counter(a.algo for a in adapters)
    ranks = Counter(a.rank for a in adapters if a.rank is not None)
    lines = [
        f"file: {os.path.basename(path)} ({os.path.getsize(path) / 2**20:.1f} MiB, {len(parsed.file.tensors)} tensors)",
        f"modules: {len(parsed.adapters)}",
        "algorithms: " + ", ".join(f"{a} x{n}" for a, n in sorted(algos.items())),
    ]
    if ranks:
        lines.append("ranks: " + ", ".join(f"{r} x{n}" for r, n in sorted(ranks.items())))
    lines.append(f"looks like: {guess_family(parsed.adapters.keys()) or 'unknown family'}")
    for key in _METADATA_KEYS:
        if key in parsed.file.metadata:
            lines.append(f"{key}: {parsed.file.metadata[key]}")
    if parsed.file.config is not None:
        lines.append(f"lycoris_config ({parsed.file.config_source}): {json.dumps(parsed.file.config, sort_keys=True)}")
    if "tlora" in algos:
        params = tlora_params_from_config(parsed.file.config)
        lines.append("T-LoRA schedule: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    return "\n".join(lines)
