// SPDX-License-Identifier: GPL-3.0-or-later
// "LyCORIS Strength": show what the node did at the last run (its ui text) on the node.
import { app } from "../../scripts/app.js";
import { STRENGTH, addPanel, setLines, uiText } from "./lycoris.shared.js";

app.registerExtension({
  name: "lycoris.report",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== STRENGTH) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.lycorisReport = addPanel(this, { minHeight: 36 });
      setLines(this.lycorisReport.el, [["run the prompt to see the strength used", "lyco-dim"]]);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      if (this.lycorisReport) setLines(this.lycorisReport.el, uiText(message).split("\n"));
      return r;
    };
  },
});
