# SPDX-License-Identifier: GPL-3.0-or-later
"""Tier 3: the shipped workflows, the page's data and the info route on a real ComfyUI server.

- every API prompt in ``workflows/api/`` is queued (tiny models substituted by ``scripts/demo.py``'s
  ``substitute_tiny_models``) and completes with PNG images;
- every UI workflow in ``example_workflows/`` is valid against ``/object_info`` (node ids, input names, links,
  widget values) and converts (``lyco_testkit.ui_to_api``) to exactly its API twin; the pairs are complete;
- ComfyUI serves the templates, the page extension's scripts and the node help pages;
- ``GET /lycoris/api/info`` summarises a file from its header, only for names in the loras folders;
- every input of the pack's nodes has a tooltip, and the nodes sit under ``loaders/LyCORIS``.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
import urllib.parse
from pathlib import Path

import pytest

from lyco_testkit import host
from lyco_testkit.server import PACK_FOLDER, PNG_SIGNATURE
from lyco_testkit.ui_to_api import ordered_inputs, ui_to_api, validate_ui

pytestmark = pytest.mark.server

REPO = host.REPO_ROOT
API_DIR = REPO / "workflows" / "api"
UI_DIR = REPO / "example_workflows"
API_FILES = sorted(API_DIR.glob("*.json"))
UI_FILES = sorted(UI_DIR.glob("*.json"))
PACK_NODES = ("LycorisLoader", "LycorisInfo", "LycorisStrength", "TLoraSamplerWrapper")
JS_FILES = ("lycoris.shared.js", "lycoris.info.js", "lycoris.report.js", "lycoris.tlora.js")


def load_demo():
    """scripts/demo.py as a module (its substitution table and LyCORIS file maker)."""
    if "lyco_demo" not in sys.modules:
        spec = importlib.util.spec_from_file_location("lyco_demo", REPO / "scripts" / "demo.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["lyco_demo"] = module
        spec.loader.exec_module(module)
    return sys.modules["lyco_demo"]


def tiny_names() -> dict:
    from lyco_testkit import server_models as sm

    return {"unet:sd2": sm.TINY_SD2, "vae:sd2": sm.TINY_TAESD4, "vae:sd15": sm.TINY_TAESD4,
            "vae:sdxl": sm.TINY_TAESD4, "vae:flux1": sm.TINY_TAESD16, "vae:flux2": sm.TINY_TAESD128}


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


@pytest.fixture(scope="module")
def make_adapter(comfy_server):
    demo = load_demo()
    return demo.adapter_maker(comfy_server.models_dir / "loras", host)


def _ids(files):
    return [f.stem for f in files]


# ------------------------------------------------------------------------------------------------ the pairs
def test_workflow_pairs_complete():
    assert API_FILES, "no API workflows in workflows/api/"
    assert _ids(API_FILES) == _ids(UI_FILES), "every example_workflows/X.json needs workflows/api/X.json and back"
    assert not list((REPO / "workflows").glob("*.json")), \
        "UI workflows live in example_workflows/ (ComfyUI would list workflows/*.json as templates twice)"


@pytest.mark.parametrize("ui_file", UI_FILES, ids=_ids(UI_FILES))
def test_ui_workflow_valid_and_converts_to_api_twin(ui_file, object_info):
    ui = json.loads(ui_file.read_text())
    problems = validate_ui(ui, object_info)
    assert not problems, "\n".join(problems)
    api = json.loads((API_DIR / ui_file.name).read_text())
    converted = ui_to_api(ui, object_info)
    assert converted == api, (f"{ui_file.name} does not convert to workflows/api/{ui_file.name}:\n"
                              f"converted {json.dumps(converted, indent=1)[:3000]}")
    used = {n["type"] for n in ui["nodes"]}
    assert used & set(PACK_NODES), f"{ui_file.name} uses none of the pack's nodes"


def test_ui_validation_catches_mistakes(object_info):
    """The checker is not a rubber stamp: wrong ids, input names, widget values and counts are reported."""
    ui = json.loads((UI_DIR / "sdxl_tlora_sampler_wrapper.json").read_text())
    bad = copy.deepcopy(ui)
    by_type = {n["type"]: n for n in bad["nodes"]}
    by_type["LycorisLoader"]["widgets_values"][2] = "sideways"  # mode
    by_type["TLoraSamplerWrapper"]["widgets_values"][0] = -5  # min_rank < -1
    by_type["KSampler"]["widgets_values"] = by_type["KSampler"]["widgets_values"][:-1]
    by_type["VAEDecode"]["inputs"][0]["name"] = "latent"
    by_type["SaveImage"]["type"] = "SaveImageTypo"
    text = "\n".join(validate_ui(bad, object_info))
    for expected in ("'sideways' is not one of", "min_rank: -5 is outside", "KSampler): 6 widget values for 7",
                     "input 'latent' is not an input of VAEDecode", "unknown node type"):
        assert expected in text, f"{expected!r} not in:\n{text}"


# ---------------------------------------------------------------------------------------- API prompts run
@pytest.mark.parametrize("api_file", API_FILES, ids=_ids(API_FILES))
def test_api_workflow_completes_on_tiny_models(api_file, comfy_server, make_adapter):
    demo = load_demo()
    prompt = json.loads(api_file.read_text())
    try:
        tiny_prompt, notes = demo.substitute_tiny_models(prompt, tiny_names(), make_adapter)
    except demo.SkipWorkflow as e:
        pytest.fail(f"{api_file.name} cannot run on tiny models: {e}")
    pack = [n for n in tiny_prompt.values() if n["class_type"] in PACK_NODES]
    assert pack, "the substitution dropped the pack's nodes"
    entry = comfy_server.queue(tiny_prompt, timeout=600)
    assert entry["status"]["status_str"] == "success"
    saves = [k for k, n in tiny_prompt.items() if n["class_type"] == "SaveImage"]
    refs = comfy_server.image_refs(entry)
    assert len(refs) == len(saves), (refs, saves)
    for png in comfy_server.images(entry):
        assert png.startswith(PNG_SIGNATURE)
    outputs = entry.get("outputs") or {}
    for nid, node in tiny_prompt.items():  # the nodes' reports reach the page (ui text of output nodes)
        if node["class_type"] == "LycorisInfo":
            assert "modules:" in "".join(outputs[nid]["text"])
    print(f"\n{api_file.stem}: {entry.get('wall_seconds', 0):.2f} s ({'; '.join(notes)})")


# ------------------------------------------------------------------------------------- served to the page
def test_templates_listed_and_served(comfy_server):
    listing = comfy_server.get("/api/workflow_templates")
    assert sorted(listing.get(PACK_FOLDER, [])) == sorted(_ids(UI_FILES)), listing
    name = UI_FILES[0].name
    status, body = comfy_server.request("GET", f"/api/workflow_templates/{PACK_FOLDER}/{name}")
    assert status == 200 and json.loads(body) == json.loads(UI_FILES[0].read_text())


def test_page_extension_and_help_pages_served(comfy_server):
    listing = comfy_server.get("/extensions")
    for js in JS_FILES:
        assert f"/extensions/{PACK_FOLDER}/{js}" in listing, js
        status, body = comfy_server.request("GET", f"/extensions/{PACK_FOLDER}/{js}")
        assert status == 200 and b"SPDX-License-Identifier" in body
    assert not [u for u in listing if u.startswith(f"/extensions/{PACK_FOLDER}/docs/")], "docs must not be JS"
    for node in PACK_NODES:
        status, body = comfy_server.request("GET", f"/extensions/{PACK_FOLDER}/docs/{node}.md")
        assert status == 200 and body.startswith(b"# "), node


# -------------------------------------------------------------------------------------------- info route
def _info(comfy_server, name=None, prefix=""):
    query = "" if name is None else "?name=" + urllib.parse.quote(name)
    status, body = comfy_server.request("GET", f"{prefix}/lycoris/api/info{query}")
    return status, json.loads(body)


@pytest.mark.parametrize("real_name, family, algo", [
    ("flux2-klein-9b-lokr.safetensors", "flux2", "lokr"),
    ("sdxl-tlora.safetensors", "sdxl", "tlora"),
])
def test_info_route_summarises_header(comfy_server, make_adapter, real_name, family, algo):
    name = make_adapter(family, real_name)
    for prefix in ("", "/api"):
        status, info = _info(comfy_server, name, prefix)
        assert status == 200, info
        assert info["found"] is True and info["name"] == name
        assert set(info["algorithms"]) == {algo} and info["modules"] == info["algorithms"][algo] > 0
        assert info["family_guess"] == family
        assert info["lycoris_config"]["algo"] == algo
    if algo == "lokr":  # SimpleTuner's Klein config: full-matrix LoKr, factors 4 (feed-forward) and 2 (attention)
        assert set(info["lokr_factors"]) == {"2x2", "4x4"} and info["lokr_full_matrix_modules"] == info["modules"]
        assert info["tlora"] is None
    else:
        assert info["tlora"]["max_rank"] == 8 and info["tlora"]["min_rank"] == 1 and info["tlora"]["alpha"] == 1.0
        assert info["ranks"] == {"8": info["modules"]}


def test_info_route_only_reads_loras_names(comfy_server, make_adapter):
    make_adapter("flux2", "flux2-klein-9b-lokr.safetensors")
    outside = comfy_server.base_dir / "secret.safetensors"
    outside.write_bytes(b"not for the page")
    for name in ("missing.safetensors", "../secret.safetensors", str(outside), "../../comfyui.log"):
        status, info = _info(comfy_server, name)
        assert status == 200 and info["found"] is False, (name, info)
        assert "not a file in ComfyUI's models/loras" in info["error"]
    status, info = _info(comfy_server)
    assert status == 400 and "name" in info["error"]


def test_info_route_reports_bad_file(comfy_server):
    bad = comfy_server.models_dir / "loras" / "broken_header.safetensors"
    bad.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    status, info = _info(comfy_server, "broken_header.safetensors")
    assert status == 200 and info["found"] is False and "header length" in info["error"], info


# ---------------------------------------------------------------------------------------- node schemas
def test_pack_nodes_have_tooltips_categories_docs(object_info):
    for node in PACK_NODES:
        d = object_info[node]
        assert d["category"] == "loaders/LyCORIS", node
        assert d["display_name"] and d["display_name"] != node, node
        assert d["description"], node
        for name, spec, _ in ordered_inputs(d):
            assert (spec[1] if len(spec) > 1 else {}).get("tooltip"), f"{node}.{name} has no tooltip"
        assert (REPO / "js" / "docs" / f"{node}.md").is_file(), node
