// SPDX-License-Identifier: GPL-3.0-or-later
// "T-LoRA Sampler Wrapper": a small plot of the active rank per sampling step, computed here from SimpleTuner's
// schedule r(t) = min(floor(((1000 - t) / 1000)^alpha * (R - R_min)) + R_min, R) (lycoris_core/tlora_schedule.py),
// with R, R_min and alpha from the upstream "Load LyCORIS" file (GET /lycoris/api/info) unless the widgets
// override them. Steps are spread uniformly over t (the sampler's schedule decides the real timesteps).
import { app } from "../../scripts/app.js";
import { LOADER, TLORA, addPanel, events, fetchInfo, setLines, uiText, widget } from "./lycoris.shared.js";

export function activeRank(t, maxRank, minRank, alpha) {
  const tt = Math.min(Math.max(t, 0), 1000);
  const r = Math.floor(Math.pow((1000 - tt) / 1000, alpha) * (maxRank - minRank)) + minRank;
  return Math.min(r, maxRank);
}

export function rankPerStep(steps, maxRank, minRank, alpha, enabled = true) {
  return Array.from({ length: steps }, (_, i) =>
    enabled ? activeRank(1000 * (1 - i / steps), maxRank, minRank, alpha) : maxRank);
}

function upstreamLoaders(node) {
  const found = [];
  const seen = new Set();
  const stack = [node];
  while (stack.length) {
    const cur = stack.pop();
    if (!cur || seen.has(cur.id)) continue;
    seen.add(cur.id);
    (cur.inputs || []).forEach((input, slot) => {
      if (input.type !== "MODEL" || input.link == null) return;
      const up = cur.getInputNode?.(slot);
      if (!up) return;
      if (up.comfyClass === LOADER) found.push(up);
      stack.push(up);
    });
  }
  return found;
}

function downstreamSteps(node) {
  const graph = node.graph;
  const seen = new Set();
  let frontier = [node];
  for (let hop = 0; hop < 4 && frontier.length; hop++) {
    const next = [];
    for (const cur of frontier) {
      for (const out of cur.outputs || []) {
        for (const id of out.links || []) {
          const link = graph?.links?.get ? graph.links.get(id) : graph?.links?.[id];
          const target = link && graph.getNodeById(link.target_id);
          if (!target || seen.has(target.id)) continue;
          seen.add(target.id);
          const steps = widget(target, "steps")?.value;
          if (Number.isInteger(steps) && steps > 0) return steps;
          next.push(target);
        }
      }
    }
    frontier = next;
  }
  return null;
}

function draw(node) {
  const s = node.lycorisTlora;
  const canvas = s.canvas;
  const w = Math.max(120, s.panel.el.clientWidth - 12);
  const h = 92;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const ranks = s.ranks || [];
  const maxRank = Math.max(1, s.maxRank || 1);
  const left = 22, bottom = h - 14, top = 6, right = w - 4;
  ctx.strokeStyle = "#666";
  ctx.beginPath();
  ctx.moveTo(left, top);
  ctx.lineTo(left, bottom);
  ctx.lineTo(right, bottom);
  ctx.stroke();
  ctx.fillStyle = "#999";
  ctx.font = "10px sans-serif";
  ctx.textBaseline = "middle";
  ctx.fillText(String(maxRank), 2, top + 4);
  ctx.fillText("0", 10, bottom);
  ctx.textBaseline = "alphabetic";
  ctx.fillText("step 1", left, h - 2);
  const lastLabel = `${ranks.length}`;
  ctx.fillText(lastLabel, right - ctx.measureText(lastLabel).width, h - 2);
  if (!ranks.length) return;
  const bw = (right - left - 2) / ranks.length;
  ctx.fillStyle = s.enabled ? "#4e9ad6" : "#888";
  ranks.forEach((r, i) => {
    const bh = ((bottom - top) * r) / maxRank;
    ctx.fillRect(left + 1 + i * bw, bottom - bh, Math.max(1, bw - 1), bh);
  });
}

async function refresh(node) {
  const s = node.lycorisTlora;
  const seq = ++s.seq;
  const minW = widget(node, "min_rank")?.value ?? -1;
  const alphaW = widget(node, "tlora_alpha")?.value ?? 0;
  const enabled = widget(node, "enabled")?.value ?? true;
  let tl = null;
  for (const loader of upstreamLoaders(node)) {
    const name = widget(loader, "lycoris_name")?.value;
    if (!name) continue;
    const info = await fetchInfo(name);
    if (info?.tlora) {
      tl = info.tlora;
      break;
    }
  }
  if (seq !== s.seq) return;
  const maxRank = tl?.max_rank || 16;
  const minRank = Math.min(maxRank, minW >= 0 ? minW : tl?.min_rank ?? 1);
  const alpha = alphaW > 0 ? alphaW : tl?.alpha ?? 1.0;
  const steps = downstreamSteps(node) || 20;
  Object.assign(s, { maxRank, enabled, ranks: rankPerStep(steps, maxRank, minRank, alpha, enabled) });
  const lines = [
    [enabled
      ? `rank ${minRank}→${maxRank}, alpha ${alpha} over ${steps} steps`
      : `mask off: all ${maxRank} ranks at every step`, ""],
  ];
  if (!tl) lines.push(["no T-LoRA file upstream: R assumed 16", "lyco-warn"]);
  if (s.report) lines.push(["— last run —", "lyco-head"], ...s.report.split("\n"));
  setLines(s.caption, lines);
  draw(node);
  node.setDirtyCanvas?.(true, false);
}

events.addEventListener("info", () => {
  for (const node of app.graph?.nodes || []) if (node.lycorisTlora) refresh(node);
});

app.registerExtension({
  name: "lycoris.tlora",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== TLORA) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const panel = addPanel(this, { minHeight: 140 });
      const canvas = document.createElement("canvas");
      const caption = document.createElement("div");
      panel.el.append(canvas, caption);
      this.lycorisTlora = { panel, canvas, caption, seq: 0, ranks: [], maxRank: 1, enabled: true, report: "" };
      const again = () => refresh(this);
      for (const name of ["min_rank", "tlora_alpha", "enabled"]) {
        const w = widget(this, name);
        if (!w) continue;
        const cb = w.callback;
        w.callback = function () {
          const res = cb?.apply(this, arguments);
          again();
          return res;
        };
      }
      const onConfigure = this.onConfigure;
      this.onConfigure = function () {
        const res = onConfigure?.apply(this, arguments);
        setTimeout(again, 0);
        return res;
      };
      const onConnectionsChange = this.onConnectionsChange;
      this.onConnectionsChange = function () {
        const res = onConnectionsChange?.apply(this, arguments);
        setTimeout(again, 0);
        return res;
      };
      if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => draw(this)).observe(panel.el);
      setTimeout(again, 0);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      if (this.lycorisTlora) {
        this.lycorisTlora.report = uiText(message);
        refresh(this);
      }
      return r;
    };
  },
});
