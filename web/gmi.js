// GMI Cloud video nodes: frontend touches (take starts at "fixed"; the API key's settings panel).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
/* global LiteGraph */

const PAID_NODES = { GMIKlingV3TextToVideo: "kling-v3-text-to-video" };
let prices = null;
api.fetchApi("/gmi_cloud/prices").then((r) => r.json()).then((table) => { prices = table; }).catch(() => {});

// "≈ $1.26 for 5 s with sound" just above the node's title, left (the frontend's source badge sits on the right),
// from its current widgets: the price before you pay.
function estimate(node) {
  const rate = prices?.[PAID_NODES[node.comfyClass]]?.per_second;
  const value = (name) => node.widgets?.find((w) => w.name === name)?.value;
  if (!rate) return "";
  if (value("rehearse")) return "rehearsal: free";
  const seconds = Number(value("duration") ?? 5);
  const sound = value("sound") !== false;
  const dollars = seconds * (sound ? rate.on : rate.off);
  return `≈ $${dollars.toFixed(2)} for ${seconds} s${sound ? " with sound" : ""} (estimate)`;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.className = "p-button p-component p-button-sm p-button-secondary";
  b.style.marginLeft = "6px";
  b.addEventListener("click", onClick);
  return b;
}

// The key is posted once to the pack's own route, which stores it owner-only in ComfyUI's user folder and never
// sends it back. It is never a setting value: settings are saved in plain text and sent to every browser.
function keyPanel() {
  const root = document.createElement("div");
  root.style.display = "flex";
  root.style.flexWrap = "wrap";
  root.style.alignItems = "center";
  root.style.gap = "4px";
  const input = document.createElement("input");
  input.type = "password";
  input.autocomplete = "off";
  input.placeholder = "paste your GMI Cloud API key";
  input.className = "p-inputtext p-component";
  input.style.minWidth = "16em";
  const status = document.createElement("span");
  status.style.marginLeft = "8px";
  status.style.opacity = "0.8";

  async function show(resp) {
    let body = {};
    try {
      body = await resp.json();
    } catch {
      status.textContent = `the server answered ${resp.status} without details: is the pack loaded? (see the ComfyUI log)`;
      return false;
    }
    if (!resp.ok) {
      status.textContent = body.error ?? `error ${resp.status}`;
    } else if ("ok" in body) {
      status.textContent = body.ok ? "the key works" : body.error;
    } else {
      status.textContent = body.set
        ? `set${body.source === "environment" ? " (from GMI_API_KEY, which wins)" : ""}, ending …${body.last4 ?? "****"}`
        : "not set";
    }
    return resp.ok;
  }
  const post = (path, payload) =>
    api.fetchApi(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload ?? {}) });

  root.append(
    input,
    button("Save", async () => {
      if (await show(await post("/gmi_cloud/key", { key: input.value }))) input.value = "";
    }),
    button("Test", async () => {
      status.textContent = "testing…";
      await show(await post("/gmi_cloud/key/test"));
    }),
    button("Forget", async () => show(await api.fetchApi("/gmi_cloud/key", { method: "DELETE" }))),
    status,
  );
  api.fetchApi("/gmi_cloud/key").then(show);
  return root;
}

app.registerExtension({
  name: "gmi.cloud.video",
  settings: [
    {
      id: "GMICloud.APIKey",
      category: ["GMI Cloud", "Account", "API key"],
      name: "GMI Cloud API key",
      tooltip: "Stored on the ComfyUI server, readable by its user only; never saved in workflows or settings.",
      type: () => keyPanel(),
      defaultValue: "",
    },
  ],
  // The frontend starts every control_after_generate widget at "randomize": on a paid node that would buy a new
  // video on every queue. A fresh node starts at "fixed"; a loaded workflow's saved value still wins.
  async nodeCreated(node) {
    if (!(node.comfyClass in PAID_NODES)) return;
    for (const widget of node.widgets ?? []) {
      if (widget.name === "control_after_generate") widget.value = "fixed";
    }
    const draw = node.onDrawForeground;
    node.onDrawForeground = function (ctx) {
      draw?.apply(this, arguments);
      const text = estimate(this);
      if (!text || this.flags?.collapsed) return;
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#8fd18f";
      ctx.textAlign = "left";
      ctx.fillText(text, 4, -LiteGraph.NODE_TITLE_HEIGHT - 6);
      ctx.restore();
    };
  },
});
