// GMI Cloud video nodes: frontend touches.
import { app } from "../../scripts/app.js";

const PAID_NODES = new Set(["GMIKlingV3TextToVideo"]);

app.registerExtension({
  name: "gmi.cloud.video",
  // The frontend starts every control_after_generate widget at "randomize": on a paid node that would buy a new
  // video on every queue. A fresh node starts at "fixed"; a loaded workflow's saved value still wins.
  async nodeCreated(node) {
    if (!PAID_NODES.has(node.comfyClass)) return;
    for (const widget of node.widgets ?? []) {
      if (widget.name === "control_after_generate") widget.value = "fixed";
    }
  },
});
