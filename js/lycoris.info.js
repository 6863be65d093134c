// SPDX-License-Identifier: GPL-3.0-or-later
// "Load LyCORIS" and "LyCORIS Info": show the picked file's facts (algorithm, rank / LoKr factor, module count,
// base model, T-LoRA schedule) from GET /lycoris/api/info, which reads only the file's header; after a run, the
// node's own report (modules placed, mode, unmatched keys / the full description) below them.
import { app } from "../../scripts/app.js";
import { INFO, LOADER, addPanel, events, fetchInfo, infoLines, onWidgetChange, setLines, uiText, widget } from "./lycoris.shared.js";

function render(node) {
  const s = node.lycoris;
  const lines = [...infoLines(s.info)];
  if (s.report) {
    lines.push(["— last run —", "lyco-head"]);
    for (const line of s.report.split("\n")) {
      lines.push(/unmatched|not loaded|skipped|warning/i.test(line) ? [line, "lyco-warn"] : line);
    }
  }
  setLines(s.panel.el, lines);
}

async function refresh(node) {
  const s = node.lycoris;
  const name = widget(node, "lycoris_name")?.value;
  if (!name) {
    setLines(s.panel.el, [["no file: put LyCORIS .safetensors files in models/loras and refresh", "lyco-warn"]]);
    return;
  }
  if (name === s.name) return;
  s.name = name;
  s.report = "";
  s.info = null;
  render(node);
  const info = await fetchInfo(name);
  if (s.name !== name) return; // a newer pick won
  s.info = info;
  render(node);
  events.dispatchEvent(new Event("info"));
  node.setDirtyCanvas?.(true, false);
}

app.registerExtension({
  name: "lycoris.info",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== LOADER && nodeData.name !== INFO) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.lycoris = { panel: addPanel(this, { minHeight: 96 }), info: null, name: null, report: "" };
      onWidgetChange(this, "lycoris_name", () => refresh(this));
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      if (this.lycoris) {
        this.lycoris.report = uiText(message);
        render(this);
      }
      return r;
    };
  },
});
