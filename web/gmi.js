// GMI Cloud video nodes: frontend touches (the price estimate on the node; take starts at "fixed"; the API key's
// settings panel).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
/* global LiteGraph */

const PAID_NODES = {
  GMIKlingV3TextToVideo: "kling-v3-text-to-video",
  GMIKlingV3ImageToVideo: "kling-v3-image-to-video",
  GMIKlingV3OmniStoryboard: "kling-v3-omni",
};

// A storyboard's length: the seconds of its "seconds | prompt" lines (notes and blank lines skipped).
function storyboardSeconds(text) {
  return String(text ?? "")
    .split("\n")
    .filter((line) => line.trim() && !line.trim().startsWith("#"))
    .reduce((sum, line) => sum + Number(line.split("|")[0]), 0);
}

// The rates the estimate is made from (GET /gmi_cloud/prices: per model, per_second {on, off} and a `source`).
// Loading starts at once; `init` waits for it (at most a few seconds), so nodes of the first workflow already
// have it: the Vue renderer (Nodes 2.0) recomputes a badge only when a widget it read changes, not when this arrives.
let prices = null;
const pricesLoaded = api
  .fetchApi("/gmi_cloud/prices")
  .then((r) => (r.ok ? r.json() : null))
  .then((table) => {
    prices = table;
  })
  .catch(() => {});

// "≈ $1.26 · estimate from reported rates", from the node's current widgets: the price before you pay. Short, so
// that it fits the badge row of a 420-px node under Nodes 2.0 next to the source badge; the sum behind it is the
// badge's tooltip there. GMI's own rate, when it states one, replaces the estimate at submit (the node's text says).
function estimate(node) {
  const value = (name) => node.widgets?.find((w) => w.name === name)?.value;
  // Read every widget first: the Vue renderer tracks what a badge read, and re-evaluates it when one of them changes.
  const rehearse = value("rehearse");
  const board = value("storyboard");
  const mode = value("mode");
  const seconds = board !== undefined ? storyboardSeconds(board) : Number(value("duration") ?? 5);
  const sound = value("sound") !== false;
  if (rehearse) return { text: "rehearsal: free", detail: "a free local stand-in; nothing is sent to GMI" };
  const entry = prices?.[PAID_NODES[node.comfyClass]];
  const rates = (mode && entry?.by_mode?.[mode]) || entry?.per_second;
  const rate = rates?.[sound ? "on" : "off"];
  if (!rate || !Number.isFinite(seconds)) return { text: "", detail: "" };
  const source = entry.source || "estimate";
  const from = /estimate/i.test(source) ? source : `estimate, ${source}`;
  const dollars = seconds * rate;
  return {
    text: `≈ $${dollars.toFixed(2)} · ${from}`,
    detail: `${seconds} s × $${rate.toFixed(3)}/s ${sound ? "with" : "without"} sound = $${dollars.toFixed(2)} (${source})`,
  };
}

const BADGE_COLORS = { fgColor: "#b5e8b5", bgColor: "#1d3a1d" };

// The price as a node badge: a function the frontend calls again on every frame (classic canvas: drawn above the
// title, after the source badge) and whenever a widget it read changes (Nodes 2.0: the badge row at the node's foot).
// Badges are the one surface both renderers show; the Vue renderer never calls onDrawForeground.
function addPriceBadge(node) {
  const Badge = globalThis.LGraphBadge ?? globalThis.LiteGraph?.LGraphBadge;
  if (!Badge || !Array.isArray(node.badges)) return false;
  let text = null;
  let badge = null;
  const priceBadge = () => {
    const now = node.flags?.collapsed ? { text: "", detail: "" } : estimate(node);
    if (now.text !== text || badge.title !== now.detail) {
      text = now.text;
      badge = new Badge({ text, ...BADGE_COLORS });
      badge.title = now.detail; // Nodes 2.0 passes it on to the badge's element: a hover tooltip
    }
    return badge;
  };
  node.badges.push(priceBadge);
  // The Vue renderer skips the first badge (the frontend's own "#id source" one, pushed by its nodeCreated before
  // ours). Should ours ever come first, keep it out of that place.
  queueMicrotask(() => {
    if (node.badges.indexOf(priceBadge) !== 0) return;
    if (node.badges.length > 1) {
      node.badges.splice(0, 1);
      node.badges.push(priceBadge);
    } else {
      node.badges.unshift(new Badge({ text: "" }));
    }
  });
  return true;
}

// Frontends without node badges: draw the same text just above the title, left (the source badge sits right).
function drawPriceOnCanvas(node) {
  const draw = node.onDrawForeground;
  node.onDrawForeground = function (ctx) {
    draw?.apply(this, arguments);
    const { text } = estimate(this);
    if (!text || this.flags?.collapsed) return;
    ctx.save();
    ctx.font = "12px sans-serif";
    ctx.fillStyle = BADGE_COLORS.fgColor;
    ctx.textAlign = "left";
    ctx.fillText(text, 4, -LiteGraph.NODE_TITLE_HEIGHT - 6);
    ctx.restore();
  };
}

// Styled with ComfyUI's own colour variables (set by every palette, on old and new frontends alike): the newest
// frontend no longer styles PrimeVue's button classes.
function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  Object.assign(b.style, {
    marginLeft: "4px",
    padding: "3px 10px",
    borderRadius: "6px",
    border: "1px solid var(--border-color, #4e4e4e)",
    background: "var(--comfy-input-bg, #222)",
    color: "var(--input-text, #ddd)",
    font: "inherit",
    fontSize: "0.9em",
    cursor: "pointer",
  });
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
  status.style.fontSize = "0.9em";

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
      if (await show(await post("/gmi_cloud/key/test")) && status.textContent === "the key works") {
        const saved = status.textContent;
        await show(await api.fetchApi("/gmi_cloud/key"));
        status.textContent = `${saved}: ${status.textContent}`;
      }
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
  async init() {
    await Promise.race([pricesLoaded, new Promise((resolve) => setTimeout(resolve, 3000))]);
    if (!prices) {
      // Late: the canvas redraws by itself; Vue nodes catch up at their next widget change.
      pricesLoaded.then(() => app.graph?.setDirtyCanvas?.(true, true));
    }
  },
  // The frontend starts every control_after_generate widget at "randomize": on a paid node that would buy a new
  // video on every queue. A fresh node starts at "fixed"; a loaded workflow's saved value still wins.
  async nodeCreated(node) {
    if (!(node.comfyClass in PAID_NODES)) return;
    for (const widget of node.widgets ?? []) {
      if (widget.name === "control_after_generate") widget.value = "fixed";
    }
    if (!addPriceBadge(node)) drawPriceOnCanvas(node);
  },
});
