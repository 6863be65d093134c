# SPDX-License-Identifier: GPL-3.0-or-later
"""API-format prompts on the tiny test models, and reading their outputs exactly (SaveLatent files, not PNGs).

Every prompt: ``LycoTestTinyModel`` (flux2 twin, seed 0) -> zero or more ``LycorisLoader`` -> optional
``LycorisStrength`` / ``TLoraSamplerWrapper`` -> ``KSampler`` (few steps, a tiny latent) -> ``SaveLatent``. The
saved latent is read back from the server's output folder, so two runs compare bit for bit. Stdlib + torch +
safetensors only (used by the pytest tests and by ``bench/endurance.py``).
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

FAMILY = "flux2"
LATENT_NODE = {"flux2": "EmptyFlux2LatentImage", "flux1": "EmptySD3LatentImage", "sdxl": "EmptyLatentImage",
               "sd15": "EmptyLatentImage"}
_counter = itertools.count()


def graph(loras=(), *, family: str = FAMILY, seed: int = 1, steps: int = 1, size: int = 32,
          strength_node: float | None = None, tlora: dict | None = None, prefix: str = "rel") -> dict:
    """The prompt. ``loras``: ``[(lycoris_name, strength, mode), ...]`` stacked in order; ``strength_node``: a
    LycorisStrength after them; ``tlora``: TLoraSamplerWrapper inputs (min_rank, tlora_alpha, enabled).
    Node ids: model "1", loaders "10".., strength "30", T-LoRA "31", KSampler "5", SaveLatent "6"."""
    p: dict = {
        "1": {"class_type": "LycoTestTinyModel", "inputs": {"family": family, "seed": 0}},
        "2": {"class_type": "LycoTestConditioning",
              "inputs": {"tokens": 4, "dim": 1, "pooled_dim": 0, "seed": 3, "scale": 1.0, "model": ["1", 0]}},
        "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
        "4": {"class_type": LATENT_NODE[family], "inputs": {"width": size, "height": size, "batch_size": 1}},
    }
    model = ["1", 0]
    for i, (name, strength, mode) in enumerate(loras):
        nid = str(10 + i)
        p[nid] = {"class_type": "LycorisLoader",
                  "inputs": {"model": model, "lycoris_name": name, "strength": strength, "mode": mode}}
        model = [nid, 0]
    if strength_node is not None:
        p["30"] = {"class_type": "LycorisStrength", "inputs": {"model": model, "strength": strength_node}}
        model = ["30", 0]
    if tlora is not None:
        p["31"] = {"class_type": "TLoraSamplerWrapper",
                   "inputs": {"model": model, "min_rank": -1, "tlora_alpha": 0.0, "enabled": True, **tlora}}
        model = ["31", 0]
    p["5"] = {"class_type": "KSampler", "inputs": {"model": model, "seed": seed, "steps": steps, "cfg": 2.0,
                                                    "sampler_name": "euler", "scheduler": "simple",
                                                    "positive": ["2", 0], "negative": ["3", 0],
                                                    "latent_image": ["4", 0], "denoise": 1.0}}
    p["6"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"rel/{prefix}"}}
    return p


def latent_path(server, entry: dict, node_id: str = "6") -> Path:
    ref = entry["outputs"][node_id]["latents"][0]
    return Path(server.output_dir) / ref.get("subfolder", "") / ref["filename"]


def read_latent(server, entry: dict, node_id: str = "6", remove: bool = True):
    """The saved latent tensor of a history entry (the file is deleted afterwards unless ``remove=False``)."""
    from safetensors.torch import load_file

    path = latent_path(server, entry, node_id)
    t = load_file(str(path))["latent_tensor"].clone()
    if remove:
        try:
            os.unlink(path)
        except OSError:
            pass
    return t


def run_latent(server, prompt: dict, timeout: float = 120.0):
    """Queue ``prompt`` and return (latent, history entry)."""
    entry = server.queue(prompt, timeout=timeout)
    return read_latent(server, entry), entry


def free(server) -> None:
    """ComfyUI's POST /free (unload models, reset the execution cache): the next prompt runs from scratch."""
    status, _ = server.post("/free", {"unload_models": True, "free_memory": True})
    assert status == 200, status


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def unique_seed() -> int:
    """Seeds for good-prompt checks (an unseen seed makes ComfyUI execute the sampler again)."""
    return 1000 + next(_counter)
