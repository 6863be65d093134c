# SPDX-License-Identifier: GPL-3.0-or-later
"""Tier 3: a T-LoRA workflow through the HTTP API (issue 5): tiny Flux 2 twin -> Load LyCORIS (auto) ->
T-LoRA Sampler Wrapper (sigmas from BasicScheduler for its schedule picture) -> KSampler -> SaveLatent.

The wrapper's text says which parameters were used and where from; its IMAGE output is saved; the SVD bases go to
the server's user-dir cache; the loader alone (default schedule) renders the same latent as the wrapper with the
file's parameters; enabled=False and a min_rank override change the result.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lyco_testkit.server import png_size

pytestmark = pytest.mark.server

TLORA = "flux2_tlora_server_test.safetensors"


@pytest.fixture(scope="module")
def server(comfy_server):
    pytest.importorskip("diffusers")
    pytest.importorskip("lycoris")
    from lyco_testkit.lycoris_files import config_for, make_lycoris
    from lyco_testkit.twins import build_diffusers_model

    path = comfy_server.models_dir / "loras" / TLORA
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Rank 6, which no other test uses: SVD bases are keyed by (base weight, rank), so this server computes
        # its own instead of reusing bases an earlier test left in the shared server's memory.
        config = config_for("tlora", "flux2", linear_dim=6, linear_alpha=3)
        make_lycoris(build_diffusers_model("flux2", 0), path, config, seed=6, family="flux2")
    return comfy_server


def prompt(tag: str, wrapper: dict | None) -> dict:
    model_from = ["11", 0] if wrapper is not None else ["10", 0]
    p = {
        "1": {"class_type": "LycoTestTinyModel", "inputs": {"family": "flux2", "seed": 0}},
        "2": {"class_type": "LycoTestConditioning",
              "inputs": {"tokens": 8, "dim": 1, "pooled_dim": 0, "seed": 3, "scale": 1.0, "model": ["1", 0]}},
        "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
        "4": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": model_from, "seed": 1, "steps": 4, "cfg": 2.0,
                                                   "sampler_name": "euler", "scheduler": "simple",
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"tlora_{tag}"}},
        "10": {"class_type": "LycorisLoader", "inputs": {"model": ["1", 0], "lycoris_name": TLORA,
                                                         "strength": 1.0, "mode": "auto"}},
    }
    if wrapper is not None:
        p["11"] = {"class_type": "TLoraSamplerWrapper",
                   "inputs": {"model": ["10", 0], "sigmas": ["12", 0], **wrapper}}
        p["12"] = {"class_type": "BasicScheduler", "inputs": {"model": ["10", 0], "scheduler": "simple",
                                                             "steps": 4, "denoise": 1.0}}
        p["13"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 1], "filename_prefix": f"tlora_{tag}"}}
    return p


FILE_PARAMS = {"min_rank": -1, "tlora_alpha": 0.0, "enabled": True}


def latent_of(server, entry, node="6"):
    ref = entry["outputs"][node]["latents"][0]
    return load_file(str(server.output_dir / ref["subfolder"] / ref["filename"]))["latent_tensor"].float()


def test_tlora_workflow_through_http(server):
    mark = server.log_mark()
    entry = server.queue(prompt("wrapper", FILE_PARAMS), timeout=180)
    assert entry["status"]["status_str"] == "success"
    report = entry["outputs"]["10"]["text"][0]
    assert "mode bypass" in report and "tlora x28" in report and "T-LoRA mask" in report, report
    text = entry["outputs"]["11"]["text"][0]
    assert "T-LoRA mask on" in text and "the file's lycoris_config metadata" in text, text
    png = server.image(entry, "13")
    width, height = png_size(png)
    assert width >= 256 and height >= 100
    log = server.log_text(since=mark)
    assert re.search(r"LyCORIS T-LoRA bases: \d+ computed, \d+ from disk cache", log), log[-3000:]
    cache = Path(os.environ.get("LYCORIS_TLORA_CACHE_DIR") or server.base_dir / "user" / "lycoris_cache" / "tlora_svd")
    assert len(list(cache.glob("*.safetensors"))) >= 28
    with_wrapper = latent_of(server, entry)

    # The loader alone installs the same (file) schedule: same latent.
    alone = latent_of(server, server.queue(prompt("loader_only", None), timeout=180))
    assert float((alone - with_wrapper).abs().max()) <= 1e-6

    # The mask acts: off, or another min_rank, renders something else.
    off = latent_of(server, server.queue(prompt("off", dict(FILE_PARAMS, enabled=False)), timeout=180))
    more = latent_of(server, server.queue(prompt("min4", dict(FILE_PARAMS, min_rank=4)), timeout=180))
    d_off = float((off - with_wrapper).abs().max())
    d_more = float((more - with_wrapper).abs().max())
    print(f"\nserver T-LoRA: |off - masked| {d_off:.3e}, |min_rank 4 - masked| {d_more:.3e}, "
          f"first run {entry['wall_seconds']:.2f}s")
    assert d_off > 1e-3 and d_more > 1e-4


def test_wrapper_without_tlora_is_a_clear_error(server):
    p = copy.deepcopy(prompt("no_tlora", FILE_PARAMS))
    p["11"]["inputs"]["model"] = ["1", 0]
    err = server.queue_expect_error(p)
    assert err["stage"] == "execution" and err["error"]["node_type"] == "TLoraSamplerWrapper"
    assert "No T-LoRA on this model" in err["error"]["exception_message"]
