# SPDX-License-Identifier: GPL-3.0-or-later
"""Tier 3: LycorisLoader, LycorisInfo and LycorisStrength in API prompts on the real server.

The merged and bypass renders of the same file agree (latents compared numerically) and differ from the base;
the loader's report and the info text come back in the history; a SimpleTuner config.json sets the strength.
"""
from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.server

LYCORIS = "flux2_klein_lokr_test.safetensors"


@pytest.fixture(scope="module")
def server(comfy_server):
    pytest.importorskip("diffusers")
    pytest.importorskip("lycoris")
    from lyco_testkit.lycoris_files import make_demo_lycoris

    path = comfy_server.models_dir / "loras" / LYCORIS
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_demo_lycoris("flux2", "simpletuner", path, seed=4)
    return comfy_server


def flux2_prompt(tag: str, lycoris: dict | None) -> dict:
    """Tiny Flux 2 twin -> [LyCORIS nodes] -> KSampler (3 steps, cfg 2) -> SaveLatent."""
    prompt = {
        "1": {"class_type": "LycoTestTinyModel", "inputs": {"family": "flux2", "seed": 0}},
        "2": {"class_type": "LycoTestConditioning",
              "inputs": {"tokens": 8, "dim": 1, "pooled_dim": 0, "seed": 3, "scale": 1.0, "model": ["1", 0]}},
        "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
        "4": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["10", 0] if lycoris else ["1", 0], "seed": 1,
                                                   "steps": 3, "cfg": 2.0, "sampler_name": "euler",
                                                   "scheduler": "simple", "positive": ["2", 0],
                                                   "negative": ["3", 0], "latent_image": ["4", 0],
                                                   "denoise": 1.0}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"loader_{tag}"}},
    }
    if lycoris:
        prompt.update(lycoris)
    return prompt


def latent_of(server, entry, node="6"):
    ref = entry["outputs"][node]["latents"][0]
    return load_file(str(server.output_dir / ref["subfolder"] / ref["filename"]))["latent_tensor"].float()


def loader(mode: str, strength: float = 1.0, model=("1", 0)) -> dict:
    return {"class_type": "LycorisLoader", "inputs": {"model": list(model), "lycoris_name": LYCORIS,
                                                     "strength": strength, "mode": mode}}


def test_merged_and_bypass_agree_and_differ_from_base(server):
    base = latent_of(server, server.queue(flux2_prompt("base", None)))
    out = {}
    for mode in ("merged", "bypass"):
        entry = server.queue(flux2_prompt(mode, {"10": loader(mode)}))
        out[mode] = latent_of(server, entry)
        report = entry["outputs"]["10"]["text"][0]
        assert f"mode {mode}" in report and "28/28 modules" in report and "lokr x28" in report, report
    effect = float((out["merged"] - base).abs().max())
    gap = float((out["merged"] - out["bypass"]).abs().max())
    print(f"\nserver flux2 LoKr: |merged - base| {effect:.3e}, |merged - bypass| {gap:.3e}")
    assert effect > 1e-3
    assert gap <= 1e-4 * max(1.0, effect)


def test_info_node_reports_file(server):
    prompt = {"1": {"class_type": "LycorisInfo", "inputs": {"lycoris_name": LYCORIS}}}
    text = server.queue(prompt)["outputs"]["1"]["text"][0]
    for fact in ("modules: 28", "lokr x28", "looks like: flux2", '"full_matrix": true'):
        assert fact in text, text


def test_strength_from_simpletuner_config(server):
    """A SimpleTuner config.json's validation_lycoris_strength drives the strength node; it equals the loader at
    that strength, and 0 means 1.0 as in SimpleTuner."""
    direct = latent_of(server, server.queue(flux2_prompt("direct", {"10": loader("bypass", 0.65)})))
    config = json.dumps({"--model_family": "flux2", "validation_lycoris_strength": 0.65})
    nodes = {"11": loader("bypass", 1.0),
             "10": {"class_type": "LycorisStrength", "inputs": {"model": ["11", 0], "strength": 1.0,
                                                                "simpletuner_config": config}}}
    entry = server.queue(flux2_prompt("config", nodes))
    assert "0.65" in entry["outputs"]["10"]["text"][0]
    assert float((latent_of(server, entry) - direct).abs().max()) <= 1e-5
    zero = json.dumps({"validation_lycoris_strength": 0})
    nodes["10"]["inputs"]["simpletuner_config"] = zero
    entry = server.queue(flux2_prompt("config0", nodes))
    assert "SimpleTuner then uses 1.0" in entry["outputs"]["10"]["text"][0]


def test_wrong_family_is_a_clear_error(server):
    prompt = flux2_prompt("wrong", {"10": loader("auto")})
    prompt["1"]["inputs"]["family"] = "sdxl"
    prompt["2"]["inputs"]["model"] = ["1", 0]
    prompt["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    err = server.queue_expect_error(prompt)
    assert err["stage"] == "execution" and err["error"]["node_type"] == "LycorisLoader"
    message = err["error"]["exception_message"]
    assert LYCORIS in message and "flux2" in message, message
    # the server survives and still renders
    assert server.queue(flux2_prompt("after_error", {"10": loader("bypass")}))["status"]["status_str"] == "success"
