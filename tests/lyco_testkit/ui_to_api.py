# SPDX-License-Identifier: GPL-3.0-or-later
"""UI-format workflows (what the ComfyUI page saves and loads) against ``/object_info``: check, convert to the
API format (what ``POST /prompt`` takes), and build one from an API prompt.

comfyui-host.md §7.4: a UI workflow holds ``nodes`` (``id``, ``type``, ``inputs [{name, type, link, widget?}]``,
``outputs [{name, type, links}]``, positional ``widgets_values``) and ``links``
(``[id, from_node, from_slot, to_node, to_slot, type]``). Widget values are positional, so the conversion needs
the node definitions: the widget inputs in ``input_order`` (required, then optional), and after an INT whose
spec says ``control_after_generate`` (or, without that key, one named ``seed``/``noise_seed``) one extra
UI-only value ("fixed", "randomize", ...) that the frontend keeps in the workflow but never sends (frontend
1.32 ``useIntWidget`` / ``migrateWidgetsValues``). That is what the frontend's own ``graphToPrompt`` does; the
browser test checks both agree on the shipped workflows.

Stdlib only: usable from the pytest process, the demo and the browser test without torch or ComfyUI.
"""
from __future__ import annotations

import copy
import json
import uuid

#: frontend-only node types: never sent to the server
VIRTUAL_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4


class WorkflowFormatError(ValueError):
    """The workflow cannot be converted (unknown node, bad link, too few widget values, ...)."""


# ------------------------------------------------------------------------------------------- node definitions
def ordered_inputs(node_def: dict) -> list[tuple[str, list, bool]]:
    """``(name, spec, required)`` for every input of an ``/object_info`` entry, in the frontend's order."""
    out = []
    for section in ("required", "optional"):
        specs = (node_def.get("input") or {}).get(section) or {}
        order = (node_def.get("input_order") or {}).get(section) or list(specs)
        out += [(name, specs[name], section == "required") for name in order if name in specs]
    return out


def input_type(spec) -> str:
    """``"COMBO"`` for V1 ``[[choices], {...}]`` and V3 ``["COMBO", {...}]`` inputs, else the type name."""
    t = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return "COMBO" if isinstance(t, list) else str(t)


def input_options(spec) -> dict:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def combo_choices(spec) -> list:
    t = spec[0] if isinstance(spec, (list, tuple)) and spec else None
    return list(t) if isinstance(t, list) else list(input_options(spec).get("options") or [])


def is_widget(spec) -> bool:
    """Whether the frontend makes a widget for this input (a socket-only input otherwise)."""
    return input_type(spec) in WIDGET_TYPES and not input_options(spec).get("forceInput")


def has_control_widget(name: str, spec) -> bool:
    """Whether a "control after generate" value follows this widget's value in ``widgets_values``."""
    opts = input_options(spec)
    if input_type(spec) == "INT":
        flag = opts.get("control_after_generate")
        return bool(flag) if flag is not None else name in ("seed", "noise_seed")
    return input_type(spec) == "COMBO" and bool(opts.get("control_after_generate"))


def widget_layout(node_def: dict) -> list[tuple[str | None, list | None]]:
    """The ``widgets_values`` slots of a node: ``(input name, spec)``, or ``(None, None)`` for a control value."""
    slots = []
    for name, spec, _ in ordered_inputs(node_def):
        if is_widget(spec):
            slots.append((name, spec))
            if has_control_widget(name, spec):
                slots.append((None, None))
    return slots


# ---------------------------------------------------------------------------------------------- UI -> API
def _links(workflow: dict) -> dict[int, tuple]:
    out = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):  # newer serialisation (version 1 / subgraphs)
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type")]
        out[int(link[0])] = tuple(link)
    return out


def _widget_values(node: dict, node_def: dict) -> dict:
    """Input name -> widget value of a UI node (control values dropped)."""
    values = node.get("widgets_values")
    if values is None:
        return {}
    if isinstance(values, dict):  # some custom nodes serialise by name
        return {k: v for k, v in values.items() if k in {n for n, _, _ in ordered_inputs(node_def)}}
    out = {}
    for (name, _), value in zip(widget_layout(node_def), values):
        if name is not None:
            out[name] = value
    return out


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt the frontend would queue for ``workflow`` (its ``graphToPrompt``).

    Virtual nodes (notes, reroutes, primitives) are resolved away, muted nodes (mode 2) dropped. Bypassed nodes
    (mode 4) and subgraphs are not supported (WorkflowFormatError). ``_meta.title`` is the node's title, or the
    node definition's display name.
    """
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise WorkflowFormatError("subgraphs are not supported by this converter")
    nodes = {int(n["id"]): n for n in workflow.get("nodes") or []}
    links = _links(workflow)

    def source(link_id):
        """(node id, slot) feeding ``link_id`` through reroutes, or ('value', v) from a primitive, or None."""
        seen = set()
        while link_id is not None and link_id not in seen:
            seen.add(link_id)
            link = links.get(int(link_id))
            if link is None:
                raise WorkflowFormatError(f"link {link_id} is not in the links table")
            origin = nodes.get(int(link[1]))
            if origin is None:
                raise WorkflowFormatError(f"link {link_id} comes from missing node {link[1]}")
            if origin["type"] == "Reroute":
                link_id = (origin.get("inputs") or [{}])[0].get("link")
                continue
            if origin["type"] == "PrimitiveNode":
                return ("value", (origin.get("widgets_values") or [None])[0])
            if origin.get("mode", MODE_ALWAYS) == MODE_NEVER:
                return None
            return (int(link[1]), int(link[2]))
        return None

    prompt: dict = {}
    for nid, node in sorted(nodes.items()):
        ctype = node["type"]
        if ctype in VIRTUAL_TYPES or node.get("mode", MODE_ALWAYS) == MODE_NEVER:
            continue
        if node.get("mode", MODE_ALWAYS) == MODE_BYPASS:
            raise WorkflowFormatError(f"node {nid} ({ctype}) is bypassed; not supported by this converter")
        node_def = object_info.get(ctype)
        if node_def is None:
            raise WorkflowFormatError(f"node {nid}: unknown node type {ctype!r} (not in /object_info)")
        inputs = dict(_widget_values(node, node_def))
        for slot in node.get("inputs") or []:
            if slot.get("link") is None:
                continue
            src = source(slot["link"])
            if src is None:
                inputs.pop(slot["name"], None)
            elif src[0] == "value":
                inputs[slot["name"]] = src[1]
            else:
                inputs[slot["name"]] = [str(src[0]), src[1]]
        prompt[str(nid)] = {"inputs": inputs, "class_type": ctype,
                            "_meta": {"title": node.get("title") or node_def.get("display_name") or ctype}}
    for entry in prompt.values():  # links from dropped nodes go (graphToPrompt does the same)
        for k, v in list(entry["inputs"].items()):
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) and v[0] not in prompt:
                del entry["inputs"][k]
    return prompt


# -------------------------------------------------------------------------------------------- validation
def _is_model_file(value) -> bool:
    return isinstance(value, str) and value.lower().endswith(MODEL_FILE_SUFFIXES)


def check_widget_value(name: str, spec, value, allow_missing_files: bool = True) -> str | None:
    """A problem with ``value`` for widget input ``name``, or None. Combos accept values missing from the list
    only when ``allow_missing_files`` and the value is a model file name (the tests substitute those)."""
    t, opts = input_type(spec), input_options(spec)
    if t == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}: {value!r} is not a boolean"
    if t in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}: {value!r} is not a number"
        if t == "INT" and not float(value).is_integer():
            return f"{name}: {value!r} is not an integer"
        lo, hi = opts.get("min"), opts.get("max")
        if lo is not None and value < lo or hi is not None and value > hi:
            return f"{name}: {value!r} is outside [{lo}, {hi}]"
        return None
    if t == "STRING":
        return None if isinstance(value, str) else f"{name}: {value!r} is not a string"
    if t == "COMBO":
        choices = combo_choices(spec)
        if value in choices or allow_missing_files and _is_model_file(value):
            return None
        shown = choices if len(choices) <= 12 else choices[:12] + ["..."]
        return f"{name}: {value!r} is not one of {shown}"
    return None


def types_compatible(out_type: str, in_type: str) -> bool:
    a, b = str(out_type), str(in_type)
    return a == b or "*" in (a, b) or b in a.split(",") or a in b.split(",")


def validate_ui(workflow: dict, object_info: dict, allow_missing_files: bool = True) -> list[str]:
    """Problems of a UI-format workflow against ``/object_info`` (empty list: fine). Checks node types, input
    names, the links table against the nodes' sockets and the definitions' types, required inputs, the number
    of widget values and every widget value (see :func:`check_widget_value`)."""
    problems: list[str] = []
    nodes = {int(n["id"]): n for n in workflow.get("nodes") or []}
    links = _links(workflow)
    for key in ("nodes", "links", "version"):
        if key not in workflow:
            problems.append(f"top level: no {key!r}")
    for lid, (link_id, src, src_slot, dst, dst_slot, ltype) in links.items():
        where = f"link {lid}"
        if src not in nodes or dst not in nodes:
            problems.append(f"{where}: joins missing node(s) {src} -> {dst}")
            continue
        outs, ins = nodes[src].get("outputs") or [], nodes[dst].get("inputs") or []
        if src_slot >= len(outs) or lid not in (outs[src_slot].get("links") or []):
            problems.append(f"{where}: not listed in node {src} output {src_slot}")
        if dst_slot >= len(ins) or ins[dst_slot].get("link") != lid:
            problems.append(f"{where}: not the link of node {dst} input {dst_slot}")
        elif src_slot < len(outs) and not types_compatible(outs[src_slot].get("type"), ins[dst_slot].get("type")):
            problems.append(f"{where}: {outs[src_slot].get('type')} into {ins[dst_slot].get('type')}")
    for nid, node in sorted(nodes.items()):
        ctype = node.get("type")
        where = f"node {nid} ({ctype})"
        if ctype in VIRTUAL_TYPES:
            continue
        node_def = object_info.get(ctype)
        if node_def is None:
            problems.append(f"{where}: unknown node type (not in /object_info)")
            continue
        specs = {name: (spec, req) for name, spec, req in ordered_inputs(node_def)}
        linked = set()
        for slot in node.get("inputs") or []:
            name = slot.get("name")
            if name not in specs:
                problems.append(f"{where}: input {name!r} is not an input of {ctype} ({sorted(specs)})")
                continue
            if slot.get("link") is not None:
                linked.add(name)
                if not types_compatible(slot.get("type"), input_type(specs[name][0])):
                    problems.append(f"{where}: input {name!r} has type {slot.get('type')} but {ctype} takes "
                                    f"{input_type(specs[name][0])}")
        def_outputs = node_def.get("output") or []
        if len(node.get("outputs") or []) != len(def_outputs):
            problems.append(f"{where}: {len(node.get('outputs') or [])} outputs, but {ctype} has {len(def_outputs)} "
                            f"{def_outputs} (a stale workflow? re-save it or re-run workflows/make_examples.py)")
        for i, slot in enumerate(node.get("outputs") or []):
            if i >= len(def_outputs):
                problems.append(f"{where}: output {i} ({slot.get('name')}) does not exist")
            elif not types_compatible(def_outputs[i], slot.get("type")):
                problems.append(f"{where}: output {i} is {slot.get('type')} but {ctype} gives {def_outputs[i]}")
        layout = widget_layout(node_def)
        values = node.get("widgets_values")
        if isinstance(values, list) and len(values) != len(layout):
            names = [n or "(control)" for n, _ in layout]
            problems.append(f"{where}: {len(values)} widget values for {len(layout)} widgets {names}")
        wvals = _widget_values(node, node_def)
        for name, (spec, required) in specs.items():
            if name in linked:
                continue
            if name in wvals:
                p = check_widget_value(name, spec, wvals[name], allow_missing_files)
                if p:
                    problems.append(f"{where}: {p}")
            elif required:
                problems.append(f"{where}: required input {name!r} has neither a link nor a widget value")
    return problems


# ---------------------------------------------------------------------------------------------- API -> UI
def _node_size(ctype: str, node_def: dict, n_links: int, n_outputs: int, widgets: list, extra_height=0) -> list:
    multiline = sum(1 for name, spec in widgets if spec is not None and input_options(spec).get("multiline"))
    rows = max(n_links, n_outputs)
    h = 8 + 22 * rows + 24 * sum(1 for name, _ in widgets) + 110 * multiline + extra_height
    w = 420 if multiline else 320
    return [w, max(h, 60)]


def api_to_ui(prompt: dict, object_info: dict, positions: dict | None = None, sizes: dict | None = None,
              notes: list[dict] | None = None, groups: list[dict] | None = None,
              control_value: str = "fixed") -> dict:
    """A UI-format workflow (frontend 1.32 style, version 0.4) for an API prompt.

    positions / sizes: node id -> [x, y] / [w, h] (missing: :func:`auto_layout`, sizes estimated).
    notes: ``{"text", "pos", "size"?, "title"?}`` -> MarkdownNote nodes. groups: ``{"title", "bounding"}``.
    Seeds get the control value ``control_value`` ("fixed" keeps the shipped seed reproducible).
    """
    positions, sizes = dict(positions or {}), dict(sizes or {})
    ids = sorted(prompt, key=lambda k: int(k))
    for nid in ids:
        if prompt[nid]["class_type"] not in object_info:
            raise WorkflowFormatError(f"node {nid}: unknown node type {prompt[nid]['class_type']!r}")

    def deps(nid):
        return [v[0] for v in prompt[nid]["inputs"].values()
                if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int)]

    depth: dict = {}

    def get_depth(nid, stack=()):
        if nid not in depth:
            if nid in stack:
                raise WorkflowFormatError(f"cycle through node {nid}")
            depth[nid] = 1 + max((get_depth(d, stack + (nid,)) for d in deps(nid)), default=-1)
        return depth[nid]

    order = sorted(ids, key=lambda n: (get_depth(n), int(n)))
    links, nodes = [], []
    out_links: dict = {}
    link_id = 0
    ui_inputs: dict = {}
    for nid in ids:
        node_def = object_info[prompt[nid]["class_type"]]
        entries = []
        for name, spec, _ in ordered_inputs(node_def):
            value = prompt[nid]["inputs"].get(name)
            is_link = isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)
            if not is_widget(spec) and not is_link and name not in prompt[nid]["inputs"]:
                if not (node_def.get("input") or {}).get("required", {}).get(name):
                    continue  # an unconnected optional socket: the frontend lists it, but keep files small
            entry = {"name": name, "type": input_type(spec), "link": None}
            if is_widget(spec):
                entry["widget"] = {"name": name}
            if is_link:
                link_id += 1
                src, slot = str(value[0]), int(value[1])
                ltype = object_info[prompt[src]["class_type"]]["output"][slot]
                links.append([link_id, int(src), slot, int(nid), len(entries), ltype])
                out_links.setdefault((src, slot), []).append(link_id)
                entry["link"] = link_id
            entries.append(entry)
        ui_inputs[nid] = entries
    widget_vals, out_slots, all_sizes = {}, {}, {}
    for nid in ids:
        api = prompt[nid]
        node_def = object_info[api["class_type"]]
        wvals = []
        layout = widget_layout(node_def)
        for name, spec in layout:
            if name is None:
                wvals.append(control_value)
            else:
                v = api["inputs"].get(name, input_options(spec).get("default"))
                if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):  # linked widget input
                    v = input_options(spec).get("default")
                wvals.append(v)
        widget_vals[nid] = wvals
        outputs = []
        for slot, (otype, oname) in enumerate(zip(node_def.get("output") or [],
                                                  node_def.get("output_name") or node_def.get("output") or [])):
            outputs.append({"name": oname, "type": otype, "links": out_links.get((nid, slot), [])})
        out_slots[nid] = outputs
        n_links = sum(1 for e in ui_inputs[nid] if "widget" not in e)
        all_sizes[nid] = list(sizes.get(nid) or _node_size(api["class_type"], node_def, n_links, len(outputs),
                                                           [(n, s) for n, s in layout if n]))
    for nid, pos in auto_layout(prompt, all_sizes).items():
        positions.setdefault(nid, pos)
    for rank, nid in enumerate(order):
        api = prompt[nid]
        node_def = object_info[api["class_type"]]
        wvals, outputs, size = widget_vals[nid], out_slots[nid], all_sizes[nid]
        node = {"id": int(nid), "type": api["class_type"], "pos": list(positions[nid]), "size": list(size),
                "flags": {}, "order": rank, "mode": MODE_ALWAYS, "inputs": ui_inputs[nid], "outputs": outputs,
                "properties": {"Node name for S&R": api["class_type"]}, "widgets_values": wvals}
        title = (api.get("_meta") or {}).get("title")
        if title and title != node_def.get("display_name"):
            node["title"] = title
        nodes.append(node)
    next_id = max([int(n) for n in ids] + [0])
    for note in notes or []:
        next_id += 1
        node = {"id": next_id, "type": "MarkdownNote", "pos": list(note["pos"]),
                "size": list(note.get("size", [380, 220])), "flags": {}, "order": len(nodes), "mode": MODE_ALWAYS,
                "inputs": [], "outputs": [], "properties": {}, "widgets_values": [note["text"]],
                "color": "#432", "bgcolor": "#653"}
        if note.get("title"):
            node["title"] = note["title"]
        nodes.append(node)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(prompt, sort_keys=True))),
        "revision": 0, "last_node_id": next_id, "last_link_id": link_id,
        "nodes": sorted(nodes, key=lambda n: n["id"]), "links": links,
        "groups": [{"id": i + 1, "title": g["title"], "bounding": list(g["bounding"]),
                    "color": g.get("color", "#3f789e"), "font_size": 24, "flags": {}}
                   for i, g in enumerate(groups or [])],
        "config": {}, "extra": {"ds": fit_view(nodes)}, "version": 0.4,
    }


def _links_of(prompt: dict, nid: str) -> list[str]:
    return [str(v[0]) for v in prompt[nid]["inputs"].values()
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) and str(v[0]) in prompt]


def auto_layout(prompt: dict, sizes: dict, origin=(40, 60), gap_x: int = 50, gap_y: int = 40) -> dict:
    """Node id -> [x, y]: left-to-right columns. A node's column is one past its furthest input; a node with no
    inputs sits just left of its first consumer (so noise/sampler/latent nodes sit by their sampler, not far
    left). Column widths follow the widest node; within a column nodes are ordered by where their links go."""
    ids = list(prompt)
    users: dict = {n: [] for n in ids}
    for nid in ids:
        for src in _links_of(prompt, nid):
            users[src].append(nid)
    col: dict = {}

    def forward(nid, stack=()):
        if nid not in col:
            if nid in stack:
                raise WorkflowFormatError(f"cycle through node {nid}")
            col[nid] = 1 + max((forward(d, stack + (nid,)) for d in _links_of(prompt, nid)), default=-1)
        return col[nid]

    for nid in ids:
        forward(nid)
    for nid in ids:  # sources as late as possible
        if not _links_of(prompt, nid) and users[nid]:
            col[nid] = max(0, min(col[u] for u in users[nid]) - 1)
    columns: dict = {}
    for nid in sorted(ids, key=lambda n: int(n) if str(n).isdigit() else 0):
        columns.setdefault(col[nid], []).append(nid)
    pos: dict = {}
    x = origin[0]
    rank: dict = {}
    for c in sorted(columns):
        members = columns[c]

        def key(nid):
            ins = [rank[s] for s in _links_of(prompt, nid) if s in rank]
            if ins:
                return (sum(ins) / len(ins), int(nid) if str(nid).isdigit() else 0)
            outs = [col[u] for u in users[nid]]
            return (-1.0 + 0.001 * (min(outs) if outs else 0), int(nid) if str(nid).isdigit() else 0)

        members.sort(key=key)
        y = origin[1]
        for i, nid in enumerate(members):
            pos[nid] = [x, y]
            rank[nid] = y
            y += sizes[nid][1] + gap_y + 30  # + the title bar
        x += max(sizes[n][0] for n in members) + gap_x
    return pos


def fit_view(nodes: list[dict], view=(1400, 900), margins=(70, 110, 20, 20), max_scale: float = 1.0) -> dict:
    """``extra.ds`` (canvas scale and offset) showing every node in a ``view``-sized page, inside ``margins``
    (left, top, right, bottom: the page's side bar and top bar). Screen = (graph + offset) * scale."""
    x0 = min(n["pos"][0] for n in nodes)
    y0 = min(n["pos"][1] for n in nodes) - 30  # title bar
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes)
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes)
    left, top, right, bottom = margins
    scale = min(max_scale, (view[0] - left - right) / (x1 - x0), (view[1] - top - bottom) / (y1 - y0))
    scale = round(scale, 3)
    return {"scale": scale, "offset": [round(left / scale - x0, 1), round(top / scale - y0, 1)]}


def strip_meta(prompt: dict) -> dict:
    """``{id: {"class_type", "inputs"}}`` without ``_meta``, for comparisons."""
    return {k: {"class_type": v["class_type"], "inputs": copy.deepcopy(v.get("inputs", {}))}
            for k, v in prompt.items()}


__all__ = ["VIRTUAL_TYPES", "WorkflowFormatError", "ordered_inputs", "widget_layout", "ui_to_api", "validate_ui",
           "check_widget_value", "api_to_ui", "strip_meta"]
