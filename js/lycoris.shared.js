// SPDX-License-Identifier: GPL-3.0-or-later
// Helpers shared by the LyCORIS page extensions (presentation only: nothing here changes what a prompt does).
// ComfyUI imports every .js in this folder; this one registers nothing by itself.
import { api } from "../../scripts/api.js";

export const LOADER = "LycorisLoader";
export const INFO = "LycorisInfo";
export const STRENGTH = "LycorisStrength";
export const TLORA = "TLoraSamplerWrapper";
export const PANEL = "lycoris_panel";
/** "info" events: a node learnt a file's facts (the T-LoRA plot listens to re-read its loader). */
export const events = new EventTarget();

const STYLE_ID = "lycoris-panel-style";

function ensureStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = `
.lycoris-panel { box-sizing: border-box; width: 100%; height: 100%; overflow: auto; margin: 0;
  padding: 4px 6px; border-radius: 6px; background: var(--comfy-input-bg, #222);
  color: var(--input-text, #ddd); font: 11px/1.35 ui-monospace, Menlo, Consolas, monospace;
  white-space: pre-wrap; word-break: break-word; }
.lycoris-panel .lyco-dim { color: var(--descrip-text, #999); }
.lycoris-panel .lyco-warn { color: #e6a23c; }
.lycoris-panel .lyco-head { color: var(--descrip-text, #999); font-weight: bold; }
.lycoris-panel canvas { display: block; width: 100%; height: 92px; }
`;
  document.head.appendChild(style);
}

/** A read-only DOM panel under the node's widgets. It is neither saved in the workflow nor sent with the
 *  prompt (serialize false on the widget and in its options). */
export function addPanel(node, { minHeight = 70, maxHeight } = {}) {
  ensureStyle();
  const el = document.createElement("div");
  el.className = "lycoris-panel";
  el.dataset.lycoris = node.comfyClass || node.type || "";
  const widget = node.addDOMWidget(PANEL, "lycoris_panel", el, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => el.textContent,
    setValue: () => {},
    getMinHeight: () => minHeight,
    getMaxHeight: maxHeight ? () => maxHeight : undefined,
  });
  widget.serialize = false;
  if (widget.options) widget.options.serialize = false;
  return { el, widget };
}

/** Replace a panel's content with lines of [text, className?] or plain strings. */
export function setLines(el, lines) {
  el.replaceChildren();
  lines.forEach((line, i) => {
    const [text, cls] = Array.isArray(line) ? line : [line, ""];
    const span = document.createElement("span");
    if (cls) span.className = cls;
    span.textContent = text + (i < lines.length - 1 ? "\n" : "");
    el.appendChild(span);
  });
}

export function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

/** Call fn() when the named widget changes (the user picks a value), and after the node is configured
 *  (a workflow loads) or created. */
export function onWidgetChange(node, name, fn) {
  const w = widget(node, name);
  if (w) {
    const cb = w.callback;
    w.callback = function () {
      const r = cb?.apply(this, arguments);
      fn();
      return r;
    };
  }
  const onConfigure = node.onConfigure;
  node.onConfigure = function () {
    const r = onConfigure?.apply(this, arguments);
    fn();
    return r;
  };
  setTimeout(fn, 0);
}

const infoCache = new Map();

/** GET /lycoris/api/info?name=... (header facts of a file in models/loras), cached per name for a while. */
export async function fetchInfo(name) {
  const hit = infoCache.get(name);
  if (hit && Date.now() - hit.at < 10000) return hit.promise;
  const promise = api
    .fetchApi(`/lycoris/api/info?name=${encodeURIComponent(name)}`)
    .then((r) => r.json())
    .catch((e) => ({ found: false, error: `info request failed: ${e?.message || e}` }));
  infoCache.set(name, { at: Date.now(), promise });
  return promise;
}

function counts(obj, suffix = "") {
  return Object.entries(obj || {})
    .map(([k, n]) => `${k}${suffix} ×${n}`)
    .join(", ");
}

/** The file facts as panel lines. */
export function infoLines(info) {
  if (!info) return [["…", "lyco-dim"]];
  if (info.found === false || info.error) return [[info.error || "not found", "lyco-warn"]];
  const lines = [];
  const algos = counts(info.algorithms);
  lines.push(algos || "no LyCORIS modules recognised");
  const ranks = counts(info.ranks);
  if (ranks) lines.push(`rank ${ranks}`);
  const factors = counts(info.lokr_factors);
  if (factors) lines.push(`LoKr w1 ${factors}` + (info.lokr_full_matrix_modules ? " (full matrix)" : ""));
  if (info.dora_modules) lines.push(`DoRA on ${info.dora_modules} modules`);
  lines.push(`${info.modules} modules · ${info.size_mib} MiB · ${Object.keys(info.dtypes || {}).join("/")}`);
  const base = info.metadata?.["modelspec.architecture"];
  if (base) lines.push(`base model: ${base}`);
  else if (info.family_guess) lines.push(`looks like: ${info.family_guess}`);
  if (info.tlora) {
    const t = info.tlora;
    lines.push(`T-LoRA: rank ${t.min_rank}…${t.max_rank ?? "?"}, alpha ${t.alpha}`);
  }
  if (info.unknown_modules?.length) lines.push([`unknown modules: ${info.unknown_modules.join(", ")}`, "lyco-warn"]);
  return lines;
}

/** The text of a node's ui output ({"text": [...]}) after a run. */
export function uiText(message) {
  const t = message?.text;
  if (Array.isArray(t)) return t.join("\n");
  return typeof t === "string" ? t : "";
}
