// The Settings page: theme, chart defaults and notifications, saved as they change.
import { h, $, replace } from "./dom.js";
import { api } from "./api.js";
import { settings } from "./settings.js";
import { permission, requestPermission } from "./notify.js";
import { toast } from "./toast.js";
import { confirmDialog } from "./dialog.js";

const form = $("#settings-form");

function load() {
  const s = settings.all();
  for (const el of form.elements) {
    if (!el.name || !(el.name in s)) continue;
    if (el.type === "radio") el.checked = el.value === String(s[el.name]);
    else if (el.type === "checkbox") el.checked = Boolean(s[el.name]);
    else el.value = String(s[el.name]);
  }
  $("#set-smoothing-value").textContent = Number(s.smoothing).toFixed(2);
  showPermission();
}

function save(el) {
  if (!el.name) return;
  let value = el.type === "checkbox" ? el.checked : el.value;
  if (el.type === "range" || el.tagName === "SELECT") value = Number(value);
  settings.set(el.name, value);
  if (el.name === "smoothing") $("#set-smoothing-value").textContent = Number(value).toFixed(2);
  if (el.name === "browserNotifications" && value && permission() === "default") askPermission();
}

function showPermission() {
  const p = permission();
  const text = {
    granted: "Allowed by this browser.",
    denied: "Blocked in this browser's site settings.",
    default: "Not asked yet.",
    unsupported: "This browser has no notifications.",
  }[p];
  $("#permission").textContent = text;
  $("#ask-permission").hidden = p !== "default";
}

async function askPermission() {
  const result = await requestPermission();
  showPermission();
  if (result === "granted") toast("Browser notifications are on.", { kind: "success" });
}

form.addEventListener("input", (e) => save(e.target));
form.addEventListener("change", (e) => save(e.target));
form.addEventListener("submit", (e) => e.preventDefault());
$("#ask-permission").addEventListener("click", askPermission);
$("#reset-settings").addEventListener("click", async () => {
  const ok = await confirmDialog({ title: "Reset settings?", body: "Theme, chart defaults and notification choices go back to their defaults.", confirmLabel: "Reset" });
  if (!ok) return;
  settings.reset();
  load();
  toast("Settings reset.", { timeout: 3000 });
});
settings.onChange(() => load());
load();

(async () => {
  const rows = [];
  try {
    const health = await api.get("/api/health");
    rows.push(["Version", health.version], ["Server mode", health.async_mode]);
    const sys = await api.get("/api/system");
    rows.push(["Workspace", sys.workspace], ["MLX device", sys.mlx && sys.mlx.device], ["Python", sys.platform && sys.platform.python]);
  } catch (err) {
    rows.push(["Status", err.message]);
  }
  replace($("#about"), rows.map(([k, v]) => [h("dt", { text: k }), h("dd", { class: k === "Workspace" ? "mono" : "", text: v ?? "–" })]));
})();
