// The Settings page: theme, chart defaults and notifications, saved as they change; the
// workspace's tokenization caches, listed and cleared (with a confirmation).
import { h, $, replace, fmt } from "./dom.js";
import { api, reportError } from "./api.js";
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

// -- tokenization caches --

function cacheLabel(c) {
  if (!c.corpus) return c.name;
  return c.files > 1 ? `${c.corpus} and ${fmt.int(c.files - 1)} more` : c.corpus;
}

async function clearCaches(names, label) {
  const ok = await confirmDialog({
    title: names ? "Delete this cache?" : "Clear all caches?",
    body: [
      names ? `The tokenized ${label} is deleted.` : `Every tokenized corpus (${label}) is deleted.`,
      "Runs, checkpoints and exports are not touched; the next run on a deleted corpus tokenizes it again.",
    ],
    confirmLabel: names ? "Delete" : "Clear all",
    danger: true,
  });
  if (!ok) return;
  try {
    const { removed } = await api.del("/api/caches", names ? { confirm: true, names } : { confirm: true });
    toast(`Removed ${removed.length} cache${removed.length === 1 ? "" : "s"}.`, { kind: "success", timeout: 4000 });
  } catch (err) {
    reportError(err, "Could not clear the caches");
  }
  $("#clear-caches").addEventListener("click", (e) => clearCaches(null, e.currentTarget.dataset.total));
loadCaches();
}

async function loadCaches() {
  let data;
  try {
    data = await api.get("/api/caches");
  } catch (err) {
    reportError(err, "Could not list the caches");
    return;
  }
  const caches = data.caches || [];
  $("#caches-total").textContent = caches.length ? `${fmt.int(caches.length)} · ${fmt.bytes(data.total_size)}` : "";
  $("#caches-empty").hidden = caches.length > 0;
  $("#caches-table").hidden = caches.length === 0;
  const clearAll = $("#clear-caches");
  clearAll.disabled = caches.length === 0;
  clearAll.dataset.total = fmt.bytes(data.total_size);
  replace(
    $("#caches-body"),
    caches.map((c) =>
      h(
        "tr",
        { dataset: { cache: c.name } },
        h("td", null, h("div", { class: "mono", text: cacheLabel(c) }), h("div", { class: "faint mono", text: c.name.slice(0, 16), title: c.name })),
        h("td", { class: "right num", text: fmt.int(c.documents) }),
        h("td", { class: "right num", text: fmt.bytes(c.size) }),
        h("td", { class: "right", text: fmt.ago(c.modified) }),
        h(
          "td",
          { class: "right" },
          h("button", {
            class: "btn btn-sm",
            type: "button",
            text: "Delete…",
            "aria-label": `Delete the cache of ${cacheLabel(c)}`,
            on: { click: () => clearCaches([c.name], `${cacheLabel(c)} (${fmt.bytes(c.size)})`) },
          })
        )
      )
    )
  );
}
$("#clear-caches").addEventListener("click", (e) => clearCaches(null, e.currentTarget.dataset.total));
loadCaches();
