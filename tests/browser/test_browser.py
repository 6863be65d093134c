# SPDX-License-Identifier: GPL-3.0-or-later
"""The real ComfyUI page in headless Chromium, with the pack (one scenario, screenshots in output/browser/):

1. the page loads and our four scripts register, with no console error or exception from them;
2. a shipped workflow opens from the template list (``/api/workflow_templates``): every node is there, our
   nodes render their widgets and the file facts from ``/lycoris/api/info``, and the page's own
   ``graphToPrompt`` gives exactly the workflow's API twin;
3. the T-LoRA template draws its rank plot, and the page's formula equals ``lycoris_core.tlora_schedule``;
4. the T-LoRA workflow on tiny models (``scripts/demo.py``'s substitution) is queued with the page's Run button:
   the image appears in the Save Image node and the load report on the loader.

The LyCORIS files are tiny ones (``lyco_testkit.lycoris_files``) saved under the real names the templates use,
so the templates show true facts. ``LYCORIS_UPDATE_SCREENSHOT=1`` also writes ``docs/screenshot.png``.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from lyco_testkit import host
from lyco_testkit.server import PACK_FOLDER
from lyco_testkit.ui_to_api import api_to_ui

from browser_kit import Browser

pytestmark = pytest.mark.server

REPO = host.REPO_ROOT
APP = "window.comfyAPI.app.app"
OUR_SCRIPTS = ("lycoris.shared.js", "lycoris.info.js", "lycoris.report.js", "lycoris.tlora.js")
OUR_EXTENSIONS = ("lycoris.info", "lycoris.report", "lycoris.tlora")
KLEIN = "flux2_klein_lokr_bypass"
TLORA = "sdxl_tlora_sampler_wrapper"
REAL_FILES = (("flux2", "flux2-klein-9b-lokr.safetensors"), ("sdxl", "sdxl-tlora.safetensors"))
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}
README_SCREENSHOT = REPO / "docs" / "screenshot.png"
README_MAX_BYTES = 200_000


def load_demo():
    if "lyco_demo" not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location("lyco_demo", REPO / "scripts" / "demo.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["lyco_demo"] = module
        spec.loader.exec_module(module)
    return sys.modules["lyco_demo"]


def ours(entry: dict) -> bool:
    """Whether a console / exception / log entry comes from this pack's scripts or route."""
    where = " ".join([entry.get("url") or "", *(entry.get("stack") or [])])
    return f"/extensions/{PACK_FOLDER}/" in where or "/lycoris/api/" in where \
        or "lycoris." in (entry.get("text") or "") and "/extensions/" in (entry.get("text") or "")


def node_report_js(type_name: str) -> str:
    """JS: [{id, widgets: [names], values: {name: value}, panel: text, panelVisible}] of nodes of a type."""
    return f"""(() => {APP}.graph.nodes.filter(n => n.type === {json.dumps(type_name)}).map(n => {{
        const panel = n.widgets?.find(w => w.name === 'lycoris_panel');
        const el = panel?.element;
        const box = el?.getBoundingClientRect();
        return {{id: n.id, widgets: (n.widgets || []).map(w => w.name),
                 values: Object.fromEntries((n.widgets || []).filter(w => w.name !== 'lycoris_panel')
                                            .map(w => [w.name, w.value])),
                 panel: el ? el.textContent : null,
                 panelVisible: !!(el && el.isConnected && box.height > 20 && box.width > 50)}};
    }}))()"""


async def load_workflow(b: Browser, workflow: dict, name: str) -> None:
    await b.evaluate(f"{APP}.loadGraphData({json.dumps(workflow)}, true, true, {json.dumps(name)})")
    await b.wait_for(f"{APP}.graph.nodes.length === {len(workflow['nodes'])}", 30)


async def scenario(server, tiny_prompt: dict, object_info: dict, shots: Path) -> dict:
    """Drive the page; returns facts for the assertions (each step also asserts as it goes)."""
    facts: dict = {"timings": {}}
    t0 = time.monotonic()
    async with Browser(width=1400, height=900) as b:
        await b.send("Page.addScriptToEvaluateOnNewDocument",
                     source="try { localStorage.setItem('vueNodesBannerDismissed', 'true') } catch (e) {}\n"
                            "performance.setResourceTimingBufferSize(10000);")
        await b.navigate(server.url)
        await b.wait_for(f"window.comfyAPI?.app?.app?.graph != null && "
                         f"!!window.LiteGraph?.registered_node_types?.LycorisLoader", 120)
        # 1. our scripts loaded and registered
        loaded = await b.wait_for(
            "(() => { const r = performance.getEntriesByType('resource').map(e => e.name)"
            f".filter(u => u.includes('/extensions/{PACK_FOLDER}/'));"
            f" return r.length >= {len(OUR_SCRIPTS)} && r; }})()",
            30)
        facts["scripts"] = sorted(u.rsplit("/", 1)[-1] for u in loaded)
        facts["extensions"] = await b.evaluate(
            f"(() => {{ const list = {APP}.extensions || window.comfyAPI?.extensionService?.extensions || [];"
            "return Array.from(list).map(e => e.name).filter(n => n.startsWith('lycoris')); })()")
        facts["timings"]["page"] = time.monotonic() - t0
        await b.screenshot(shots / "01_page_loaded.png")

        # 2. a shipped workflow from the template list
        templates = await b.evaluate("fetch('/api/workflow_templates').then(r => r.json())")
        facts["templates"] = templates.get(PACK_FOLDER, [])
        assert KLEIN in facts["templates"], templates
        klein = await b.evaluate(f"fetch('/api/workflow_templates/{PACK_FOLDER}/{KLEIN}.json').then(r => r.json())")
        await load_workflow(b, klein, KLEIN)
        await b.wait_for(f"(() => {{ const r = {node_report_js('LycorisLoader')}; "
                         "return r.length && r.every(n => n.panel && n.panel.includes('modules')); })()", 30)
        await b.wait_for(f"(() => {{ const r = {node_report_js('LycorisInfo')}; "
                         "return r.length && r.every(n => n.panel && n.panel.includes('modules')); })()", 30)
        facts["klein_loader"] = await b.evaluate(node_report_js("LycorisLoader"))
        facts["klein_info"] = await b.evaluate(node_report_js("LycorisInfo"))
        facts["klein_types"] = await b.evaluate(f"{APP}.graph.nodes.map(n => n.type)")
        facts["klein_prompt"] = await b.evaluate(f"{APP}.graphToPrompt().then(r => r.output)")
        await asyncio.sleep(0.5)
        await b.screenshot(shots / "02_template_flux2_klein.png")

        # 3. the T-LoRA template: plot + formula
        tlora = await b.evaluate(f"fetch('/api/workflow_templates/{PACK_FOLDER}/{TLORA}.json').then(r => r.json())")
        await load_workflow(b, tlora, TLORA)
        await b.wait_for(f"(() => {{ const r = {node_report_js('TLoraSamplerWrapper')}; "
                         "return r.length && r[0].panel && r[0].panel.includes('rank 1→8'); })()", 30)
        facts["tlora_wrapper"] = await b.evaluate(node_report_js("TLoraSamplerWrapper"))
        facts["plot_pixels"] = await b.evaluate(
            f"(() => {{ const n = {APP}.graph.nodes.find(n => n.type === 'TLoraSamplerWrapper');"
            "const c = n.widgets.find(w => w.name === 'lycoris_panel').element.querySelector('canvas');"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let k = 0;"
            "for (let i = 3; i < d.length; i += 4) if (d[i] > 0) k++; return k; })()")
        facts["js_ranks"] = await b.evaluate(
            f"import('/extensions/{PACK_FOLDER}/lycoris.tlora.js').then(m => [m.rankPerStep(30, 8, 1, 1.0), "
            "m.rankPerStep(25, 16, 4, 2.5), m.rankPerStep(10, 8, 1, 1.0, false)])")
        facts["tlora_prompt"] = await b.evaluate(f"{APP}.graphToPrompt().then(r => r.output)")
        await asyncio.sleep(0.5)
        await b.screenshot(shots / "03_template_tlora.png")

        # 4. the tiny runnable version, queued with the page's Run button
        run_wf = run_workflow(tiny_prompt, object_info)
        await load_workflow(b, run_wf, "lycoris_tiny_run")
        await b.wait_for(f"(() => {{ const r = {node_report_js('LycorisLoader')}; "
                         "return r.length && r[0].panel && r[0].panel.includes('tlora'); })()", 30)
        before = await b.evaluate("fetch('/api/history?max_items=200').then(r => r.json()).then(h => Object.keys(h))")
        t1 = time.monotonic()
        await b.click_selector('[data-testid="queue-button"]')
        save_id = next(n["id"] for n in run_wf["nodes"] if n["type"] == "SaveImage")
        outcome = await b.wait_for(
            f"(async () => {{ const n = {APP}.graph.getNodeById({save_id});"
            " if (n && n.imgs && n.imgs.length && n.imgs[0].complete && n.imgs[0].naturalWidth > 0) return 'image';"
            " const h = await (await fetch('/api/history?max_items=20')).json();"
            f" const before = {json.dumps(before)};"
            " for (const [k, v] of Object.entries(h)) { if (before.includes(k) || v.status?.status_str !== 'error')"
            " continue; const e = (v.status.messages || []).find(m => m[0] === 'execution_error');"
            " return 'error: ' + JSON.stringify(e ? [e[1].node_type, e[1].exception_type, e[1].exception_message]"
            " : v.status); } return null; })()", 300, interval=0.5)
        if outcome != "image":
            await b.screenshot(shots / "04_run_failed.png")
            raise AssertionError(f"the run queued from the page failed: {outcome}")
        facts["timings"]["run"] = time.monotonic() - t1
        await b.wait_for(f"(() => {{ const r = {node_report_js('LycorisLoader')}; "
                         "return r.length && r[0].panel.includes('last run'); })()", 30)
        facts["run_loader"] = await b.evaluate(node_report_js("LycorisLoader"))
        facts["run_wrapper"] = await b.evaluate(node_report_js("TLoraSamplerWrapper"))
        facts["run_image"] = await b.evaluate(
            f"(() => {{ const n = {APP}.graph.getNodeById({save_id}); return [n.imgs[0].naturalWidth, "
            "n.imgs[0].naturalHeight, n.imgs[0].src]; })()")
        after = await b.evaluate("fetch('/api/history?max_items=200').then(r => r.json())")
        facts["new_history"] = {k: v["status"] for k, v in after.items() if k not in before}
        await asyncio.sleep(1.0)
        facts["run_screenshot"] = await b.screenshot(shots / "04_run_tlora_tiny.png")
        facts["errors"] = b.errors()
        facts["our_errors"] = [e for e in b.errors() if ours(e)]
        facts["our_warnings"] = [c for c in b.console if c["type"] == "warning" and ours(c)]
    facts["timings"]["total"] = time.monotonic() - t0
    return facts


# positions of the runnable graph: two tidy rows, readable at 100 %
RUN_LAYOUT = {
    "LycoTestTinyModel": ([20, 130], [300, 110]), "LycorisLoader": ([350, 130], [370, 300]),
    "TLoraSamplerWrapper": ([750, 130], [350, 320]), "KSampler": ([1130, 130], [270, 300]),
    "VAELoader": ([20, 560], [300, 70]), "EmptyLatentImage": ([350, 560], [370, 110]),
    "SaveImage": ([750, 520], [350, 300]), "VAEDecode": ([1130, 520], [270, 60]),
}
RUN_TITLES = {"LycoTestTinyModel": "Tiny SDXL (test stand-in for the checkpoint)",
              "LycoTestConditioning": "Random conditioning (stand-in for CLIP)"}


def run_workflow(tiny_prompt: dict, object_info: dict) -> dict:
    """The tiny T-LoRA prompt as a UI workflow, laid out for the screenshot."""
    prompt = json.loads(json.dumps(tiny_prompt))
    positions, sizes = {}, {}
    conds = 0
    for nid, node in sorted(prompt.items(), key=lambda kv: int(kv[0])):
        ct = node["class_type"]
        if ct in RUN_TITLES:
            node.setdefault("_meta", {})["title"] = RUN_TITLES[ct]
        if ct in RUN_LAYOUT:
            positions[nid], sizes[nid] = RUN_LAYOUT[ct]
        elif ct == "LycoTestConditioning":
            positions[nid], sizes[nid] = [20, 300 + 70 * conds], [300, 60]
            conds += 1
    wf = api_to_ui(prompt, object_info, positions=positions, sizes=sizes)
    for n in wf["nodes"]:  # the stand-ins take little room: fold them
        if n["type"] == "LycoTestConditioning":
            n["flags"] = {"collapsed": True}
    wf["extra"]["ds"] = {"scale": 0.88, "offset": [45, 20]}
    return wf


def write_readme_screenshot(src: Path, dst: Path) -> int:
    """A palette-quantised copy of the run screenshot (well under 200 KB)."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    img = img.crop((56, 84, min(img.width, 1400), min(img.height, 800)))
    for colors in (128, 64, 32):
        buf = io.BytesIO()
        img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
        if buf.tell() < README_MAX_BYTES:
            break
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buf.getvalue())
    return buf.tell()


@pytest.fixture(scope="module")
def page_server(comfy_server_factory):
    """A server of its own (its loras folder and page settings change), with tiny LyCORIS files under the
    templates' real names and quiet page settings (no tutorial, no minimap)."""
    server = comfy_server_factory("browser_server", extra_args=["--disable-api-nodes"])
    demo = load_demo()
    loras = server.models_dir / "loras"
    make = demo.adapter_maker(loras, host)
    for family, real in REAL_FILES:
        shutil.copyfile(loras / make(family, real), loras / real)
    status, _ = server.post("/settings", SETTINGS)
    assert status == 200
    return server


def test_page_loads_workflows_render_and_run(page_server, artifacts_dir):
    demo = load_demo()
    from lyco_testkit import server_models as sm
    from lycoris_core.tlora_schedule import active_rank

    tiny = {"unet:sd2": sm.TINY_SD2, "vae:sd2": sm.TINY_TAESD4, "vae:sd15": sm.TINY_TAESD4,
            "vae:sdxl": sm.TINY_TAESD4, "vae:flux1": sm.TINY_TAESD16, "vae:flux2": sm.TINY_TAESD128}
    api_dir = REPO / "workflows" / "api"
    tlora_api = json.loads((api_dir / f"{TLORA}.json").read_text())
    real_names = {real for _, real in REAL_FILES}

    def keep_real_name(family, real):  # the file exists under its real name already (page_server)
        assert real in real_names, real
        return real

    tiny_prompt, _ = demo.substitute_tiny_models(tlora_api, tiny, keep_real_name)
    object_info = page_server.object_info()
    shots = artifacts_dir
    for old in shots.glob("*.png"):
        old.unlink()
    facts = asyncio.run(scenario(page_server, tiny_prompt, object_info, shots))
    (shots / "facts.json").write_text(json.dumps(facts, indent=1, default=str))
    print(f"\nbrowser timings: { {k: round(v, 1) for k, v in facts['timings'].items()} }; screenshots in {shots}")

    # 1. scripts and extensions, no errors from them
    assert set(OUR_SCRIPTS) <= set(facts["scripts"]), facts["scripts"]
    if facts["extensions"]:  # the frontend exposes its extension list (1.32 does)
        assert set(OUR_EXTENSIONS) <= set(facts["extensions"]), facts["extensions"]
    assert not facts["our_errors"], json.dumps(facts["our_errors"], indent=1)
    assert not facts["our_warnings"], json.dumps(facts["our_warnings"], indent=1)

    # 2. the shipped Klein workflow
    klein_ui = json.loads((REPO / "example_workflows" / f"{KLEIN}.json").read_text())
    assert sorted(facts["klein_types"]) == sorted(n["type"] for n in klein_ui["nodes"])
    [loader] = facts["klein_loader"]
    assert loader["widgets"][:3] == ["lycoris_name", "strength", "mode"] and "lycoris_panel" in loader["widgets"]
    assert {k: loader["values"][k] for k in ("lycoris_name", "strength", "mode")} == {
        "lycoris_name": "flux2-klein-9b-lokr.safetensors", "strength": 1, "mode": "bypass"}
    assert loader["panelVisible"], loader
    for text in ("lokr ×", "LoKr w1", "modules", "looks like: flux2"):
        assert text in loader["panel"], (text, loader["panel"])
    [info] = facts["klein_info"]
    assert info["panelVisible"] and "lokr ×" in info["panel"]
    assert facts["klein_prompt"] == json.loads((api_dir / f"{KLEIN}.json").read_text()), \
        "the page's graphToPrompt differs from workflows/api/" + KLEIN

    # 3. T-LoRA plot and formula
    [wrapper] = facts["tlora_wrapper"]
    assert wrapper["panelVisible"] and "rank 1→8, alpha 1 over 30 steps" in wrapper["panel"], wrapper
    assert facts["plot_pixels"] > 500, "the rank plot drew nothing"
    expect = [[active_rank(1000 * (1 - i / 30), 8, 1, 1.0) for i in range(30)],
              [active_rank(1000 * (1 - i / 25), 16, 4, 2.5) for i in range(25)], [8] * 10]
    assert facts["js_ranks"] == expect
    assert facts["tlora_prompt"] == tlora_api

    # 4. the run from the page
    assert list(facts["new_history"].values()) and all(
        s["status_str"] == "success" for s in facts["new_history"].values()), facts["new_history"]
    width, height, src = facts["run_image"]
    assert (width, height) == (64, 64) and "/view?" in src
    [run_loader] = facts["run_loader"]
    assert "last run" in run_loader["panel"] and "tlora" in run_loader["panel"], run_loader["panel"]
    [run_wrapper] = facts["run_wrapper"]
    assert "last run" in run_wrapper["panel"], run_wrapper["panel"]

    size = write_readme_screenshot(Path(facts["run_screenshot"]), shots / "readme_screenshot.png")
    assert size < README_MAX_BYTES
    if os.environ.get("LYCORIS_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shots / "readme_screenshot.png", README_SCREENSHOT)
