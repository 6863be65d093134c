# SPDX-License-Identifier: GPL-3.0-or-later
"""Tier 3 smoke: a real ComfyUI server boots with the pack and the test pack, lists their nodes, runs the
stock tiny-SD2 workflow (comfyui-host.md §9.7) and rejects a bad model name with a 400."""
from __future__ import annotations

import copy

import pytest

from lyco_testkit.server import PACK_FOLDER, TEST_PACK_FOLDER, png_size
from lyco_testkit.server_models import TINY_SD2, TINY_TAESD4

pytestmark = pytest.mark.server

SD2_PROMPT = {
    "1": {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_SD2, "weight_dtype": "default"}},
    "3": {"class_type": "LotusConditioning", "inputs": {}},
    "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 7, "steps": 3, "cfg": 1.5,
                                               "sampler_name": "euler", "scheduler": "normal",
                                               "positive": ["3", 0], "negative": ["4", 0],
                                               "latent_image": ["5", 0], "denoise": 1.0}},
    "7": {"class_type": "VAELoader", "inputs": {"vae_name": TINY_TAESD4}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "smoke_sd2"}},
}


def test_boot_and_object_info(comfy_server):
    print(f"\nComfyUI boot: {comfy_server.boot_seconds:.2f} s (port {comfy_server.port})")
    info = comfy_server.object_info()
    for stock in ("KSampler", "UNETLoader", "VAELoader", "LotusConditioning", "SaveImage", "LoraLoaderModelOnly"):
        assert stock in info, stock
    assert TINY_SD2 in info["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert TINY_TAESD4 in info["VAELoader"]["input"]["required"]["vae_name"][0]

    test_nodes = {k: v for k, v in info.items() if v.get("python_module") == f"custom_nodes.{TEST_PACK_FOLDER}"}
    assert {"LycoTestTinyModel", "LycoTestConditioning"} <= set(test_nodes), comfy_server.log_tail()

    pack_nodes = sorted(k for k, v in info.items() if v.get("python_module") == f"custom_nodes.{PACK_FOLDER}")
    print(f"pack nodes: {pack_nodes or 'none registered yet'}")
    if pack_nodes:
        one = comfy_server.object_info(pack_nodes[0])
        assert one[pack_nodes[0]]["python_module"] == f"custom_nodes.{PACK_FOLDER}"


def test_stock_sd2_workflow_png(comfy_server):
    entry = comfy_server.queue(copy.deepcopy(SD2_PROMPT), timeout=120)
    assert entry["status"]["status_str"] == "success"
    print(f"\nstock tiny SD2 workflow: {entry['wall_seconds']:.2f} s")
    refs = comfy_server.image_refs(entry)
    assert len(refs) == 1 and refs[0]["filename"].startswith("smoke_sd2_")
    png = comfy_server.image(entry)
    assert png_size(png) == (64, 64)


def test_bad_unet_name_is_400(comfy_server):
    prompt = copy.deepcopy(SD2_PROMPT)
    prompt["1"]["inputs"]["unet_name"] = "does_not_exist.safetensors"
    err = comfy_server.queue_expect_error(prompt)
    assert err["stage"] == "validation" and err["http_status"] == 400
    assert err["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"


def test_runtime_error_reports_node(comfy_server):
    """A shape mismatch at run time: /prompt accepts it, the history says error with the failing node."""
    prompt = copy.deepcopy(SD2_PROMPT)
    prompt["7"]["inputs"]["vae_name"] = "tiny_taesd16.safetensors"  # 4-channel latent into a 16-channel VAE
    err = comfy_server.queue_expect_error(prompt)
    assert err["stage"] == "execution"
    assert err["error"]["node_type"] == "VAEDecode"


def test_test_pack_conditioning_drives_sd2(comfy_server):
    """LycoTestConditioning (shape taken from the connected model) replaces a text encoder."""
    prompt = copy.deepcopy(SD2_PROMPT)
    prompt["3"] = {"class_type": "LycoTestConditioning",
                   "inputs": {"tokens": 4, "dim": 1, "pooled_dim": 0, "seed": 1, "scale": 1.0, "model": ["1", 0]}}
    prompt["9"]["inputs"]["filename_prefix"] = "smoke_testcond"
    entry = comfy_server.queue(prompt)
    assert png_size(comfy_server.image(entry)) == (64, 64)



LATENT_FOR_FAMILY = {  # (empty-latent node, tiny TAESD with the family's latent channels)
    "flux2": ("EmptyFlux2LatentImage", "tiny_taesd128.safetensors"),
    "flux1": ("EmptySD3LatentImage", "tiny_taesd16.safetensors"),
    "sdxl": ("EmptyLatentImage", TINY_TAESD4),
    "sd15": ("EmptyLatentImage", TINY_TAESD4),
}


def test_test_pack_families_match_twins():
    """The test pack's family combo mirrors lyco_testkit.twins.FAMILIES (read without importing torch)."""
    import ast
    from pathlib import Path

    from lyco_testkit import host

    twins = host.TESTS_DIR / "lyco_testkit" / "twins.py"
    if not twins.exists():
        pytest.skip("lyco_testkit/twins.py not written yet")
    tree = ast.parse(twins.read_text())
    fams = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and any(getattr(t, "id", None) == "FAMILIES" for t in n.targets))
    pack = ast.parse((host.TEST_PACK_DIR / "__init__.py").read_text())
    ours = next(ast.literal_eval(n.value) for n in pack.body if isinstance(n, ast.Assign)
                and any(getattr(t, "id", None) == "FAMILIES" for t in n.targets))
    assert set(ours) == set(fams)
    assert set(LATENT_FOR_FAMILY) == set(fams)
    assert Path(twins).is_file()


@pytest.mark.parametrize("family", list(LATENT_FOR_FAMILY))
def test_tiny_twin_model_samples(comfy_server, family):
    """LycoTestTinyModel (a twin ComfyUI cannot auto-detect) + LycoTestConditioning run through KSampler."""
    latent_node, vae = LATENT_FOR_FAMILY[family]
    prompt = {
        "1": {"class_type": "LycoTestTinyModel", "inputs": {"family": family, "seed": 0}},
        "2": {"class_type": "LycoTestConditioning",
              "inputs": {"tokens": 8, "dim": 1, "pooled_dim": 0, "seed": 3, "scale": 1.0, "model": ["1", 0]}},
        "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
        "4": {"class_type": latent_node, "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 2, "cfg": 2.0,
                                                   "sampler_name": "euler", "scheduler": "simple",
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": f"twin_{family}"}},
    }
    entry = comfy_server.queue(prompt, timeout=180)
    print(f"\n{family} twin workflow: {entry['wall_seconds']:.2f} s")
    w, h = png_size(comfy_server.image(entry))
    assert w == h and w in (32, 64)  # Flux 2: 128-ch latent at /16, TAESD decodes x8


def test_pack_import_did_not_fail(comfy_server):
    """The pack may register no nodes yet, but ComfyUI must not report ``(IMPORT FAILED)`` for it."""
    if comfy_server.pack_dir is None or not (comfy_server.pack_dir / "__init__.py").is_file():
        pytest.skip("the pack has no __init__.py (absent)")
    failed = [line for line in comfy_server.log_text().splitlines()
              if "IMPORT FAILED" in line and line.rstrip().endswith(PACK_FOLDER)]
    if failed:
        log = comfy_server.log_text()
        start = log.find("Traceback")
        pytest.fail(f"ComfyUI could not import the pack: {failed[0]}\n{log[start:start + 4000]}")
