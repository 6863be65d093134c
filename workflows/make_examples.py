#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Write ``example_workflows/<name>.json`` (UI format, ComfyUI's template browser) from ``workflows/api/<name>.json``.

    .host/venv/bin/python workflows/make_examples.py [--object-info FILE] [--check]

The API prompts are the source; this adds the layout and a note per workflow (:data:`EXAMPLES`) and converts
with ``lyco_testkit.ui_to_api.api_to_ui`` against ``/object_info`` (a ComfyUI server with the pack is booted
for it unless ``--object-info`` gives a saved answer). A workflow edited in the page instead can be saved to
``example_workflows/`` directly, with its "Export (API)" into ``workflows/api/``: tests/server/test_workflows.py
checks that each pair agrees either way. ``--check`` writes nothing and exits 1 if a file would change.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
API_DIR = REPO / "workflows" / "api"
UI_DIR = REPO / "example_workflows"

MODELS_NOTE = ("Put the files in ComfyUI's `models/` folders under these names (or pick yours in the "
               "loaders). SimpleTuner saves `pytorch_lora_weights.safetensors`: rename it and put it in "
               "`models/loras/`, with its `lycoris_config.json` beside it if you have one.")

# name -> note text, note position, optional node positions {api id: [x, y]} and sizes
EXAMPLES: dict[str, dict] = {
    "flux2_klein_lokr_bypass": {
        "note": "## Flux 2 Klein 9B + SimpleTuner LoKr, bypass\n\n"
                "SimpleTuner's Klein 9B LoKr example (`full_matrix`, factor 4 on the feed-forwards, 2 on "
                "attention). **Bypass** adds the adapter in each layer's forward and leaves the base weights "
                "alone: what SimpleTuner's validation renders, and the right mode for fp8 / quantized bases.\n\n"
                "*LyCORIS Info* shows the file's algorithm, factors and module count.\n\n"
                "Models: `flux-2-klein-9b.safetensors` (diffusion_models), `qwen_3_8b.safetensors` "
                "(text_encoders), `flux2-vae.safetensors` (vae). Klein needs a ComfyUI that loads Klein; "
                "ComfyUI 0.3.75 loads Flux.2 [dev] only (swap in the dev model and its text encoder).\n\n"
                + MODELS_NOTE,
    },
    "flux1_lokr_merged": {
        "note": "## Flux.1 [dev] + SimpleTuner LoKr, merged\n\n"
                "SimpleTuner's Flux.1 LoKr (its LYCORIS.md inference example merges the LoKr into the "
                "transformer). **Merged** patches the weights through ComfyUI (lazily, restored exactly "
                "afterwards): the fastest per step, with SimpleTuner's maths at the given strength.\n\n"
                "Models: `flux1-dev.safetensors` (diffusion_models), `clip_l.safetensors` + "
                "`t5xxl_fp16.safetensors` (text_encoders), `ae.safetensors` (vae).\n\n" + MODELS_NOTE,
    },
    "sdxl_lokr_attention": {
        "note": "## SDXL + LoKr on attention only\n\n"
                "SimpleTuner's SDXL advice: a LoKr (factor 16) targeting the UNet's `Attention` modules only. "
                "*auto* mode merges it (a full-precision base) and would switch to bypass for fp8 bases.\n\n"
                "Model: `sd_xl_base_1.0.safetensors` (checkpoints).\n\n" + MODELS_NOTE,
    },
    "sdxl_tlora_sampler_wrapper": {
        "note": "## T-LoRA with the sampler wrapper\n\n"
                "A T-LoRA file loads in **bypass**, and its per-timestep rank mask runs at every model call: "
                "few ranks at the noisiest steps, all of them near the end, as SimpleTuner's validation did. "
                "*Load LyCORIS* installs the file's schedule already; *T-LoRA Sampler Wrapper* overrides "
                "`min_rank` / `tlora_alpha` (-1 / 0: from the file) or switches the mask off. The plot on the "
                "wrapper shows the active rank per step.\n\n"
                "Model: `sd_xl_base_1.0.safetensors` (checkpoints).\n\n" + MODELS_NOTE,
    },
    "sdxl_strength_sweep": {
        "note": "## Strength sweep\n\n"
                "One *Load LyCORIS*, then one *LyCORIS Strength* per value: the file is read and placed once, "
                "each branch only changes the multiplier (SimpleTuner's `validation_lycoris_strength`). In "
                "**bypass** a branch is just another scalar; in merged form each branch re-patches the weights. "
                "Same seed everywhere, so the images differ by the strength alone.\n\n"
                "Model: `sd_xl_base_1.0.safetensors` (checkpoints).\n\n" + MODELS_NOTE,
    },
    "flux1_stack_two_lycoris": {
        "note": "## Stacking two LyCORIS files\n\n"
                "Two *Load LyCORIS* in a row: a style LoKr merged into the weights, a character LoCon in "
                "bypass on top. *LyCORIS Strength* with a `lycoris_name` changes one of them (here the style, "
                "to 0.7) and leaves the other as loaded.\n\n"
                "Models: `flux1-dev.safetensors` (diffusion_models), `clip_l.safetensors` + "
                "`t5xxl_fp16.safetensors` (text_encoders), `ae.safetensors` (vae).\n\n" + MODELS_NOTE,
    },
}
# extra height for the nodes whose page extension adds a panel (js/lycoris.*.js)
PANEL_HEIGHT = {"LycorisLoader": 170, "LycorisInfo": 170, "TLoraSamplerWrapper": 150, "LycorisStrength": 60}


def object_info_from_server() -> dict:
    sys.path.append(str(REPO / "tests"))
    from lyco_testkit.server import ComfyServer

    with ComfyServer(extra_args=["--disable-api-nodes"]) as srv:
        return srv.object_info()


def build(name: str, prompt: dict, object_info: dict) -> dict:
    from lyco_testkit.ui_to_api import api_to_ui, ordered_inputs, widget_layout, _node_size, is_widget

    spec = EXAMPLES.get(name, {})
    sizes = {}
    for nid, node in prompt.items():
        ct = node["class_type"]
        node_def = object_info[ct]
        n_links = sum(1 for n, s, _ in ordered_inputs(node_def) if not is_widget(s) and n in node["inputs"])
        size = _node_size(ct, node_def, n_links, len(node_def.get("output") or []),
                          [(n, s) for n, s in widget_layout(node_def) if n])
        size[1] += PANEL_HEIGHT.get(ct, 0)
        if ct in PANEL_HEIGHT:
            size[0] = 360
        if ct == "SaveImage":
            size = [300, 330]
        sizes[nid] = size
    wf = api_to_ui(prompt, object_info, positions=spec.get("positions"), sizes=sizes)
    # the note goes under the right half of the graph (the loaders and LyCORIS nodes are top left)
    if spec.get("note"):
        right = max(n["pos"][0] + n["size"][0] for n in wf["nodes"])
        bottom = max(n["pos"][1] + n["size"][1] for n in wf["nodes"] if n["pos"][0] + n["size"][0] > right - 560)
        wf = api_to_ui(prompt, object_info, positions={str(n["id"]): n["pos"] for n in wf["nodes"]}, sizes=sizes,
                       notes=[{"text": spec["note"], "pos": [right - 540, bottom + 70], "size": [540, 330],
                               "title": "About this workflow"}])
    return wf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--object-info", type=Path, help="a saved GET /object_info answer (default: boot a server)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    ap.add_argument("names", nargs="*", help="only these workflows")
    args = ap.parse_args(argv)
    sys.path.append(str(REPO / "tests"))
    info = json.loads(args.object_info.read_text()) if args.object_info else object_info_from_server()
    UI_DIR.mkdir(exist_ok=True)
    changed = []
    for api_file in sorted(API_DIR.glob("*.json")):
        if args.names and api_file.stem not in args.names:
            continue
        text = json.dumps(build(api_file.stem, json.loads(api_file.read_text()), info), indent=2) + "\n"
        out = UI_DIR / api_file.name
        if not out.exists() or out.read_text() != text:
            changed.append(out.relative_to(REPO).as_posix())
            if not args.check:
                out.write_text(text)
    print(("would change: " if args.check else "wrote: ") + (", ".join(changed) or "nothing"))
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
