// The Compare page: overlay one metric of several runs (by step or by tokens), live, and a
// table of how their configs differ. The picked runs live in the URL (?runs=a,b) to share.
import { h, $, replace, fmt } from "./dom.js";
import { api, reportError, runUrl } from "./api.js";
import { followRun, followedRuns } from "./live.js";
import { RunData, MetricChart, seriesColor, liveIngest } from "./chart.js";
import { settings } from "./settings.js";
import { badge, isActive } from "./run_actions.js";
import { forgetting, signed } from "./forgetting.js";

const MAX_RUNS = 8;
const METRIC_TABLE = { val_loss: "eval" };
const state = { runs: [], picked: [], data: new Map(), configs: new Map(), chart: null, loading: 0 };
window.cpt = { state, followedRuns };

async function main() {
  try {
    state.runs = (await api.get("/api/runs")).runs || [];
  } catch (err) {
    return reportError(err, "Cannot list the runs");
  }
  const fromUrl = (new URLSearchParams(location.search).get("runs") || "").split(",").filter(Boolean);
  const known = new Set(state.runs.map((r) => r.run_id));
  state.picked = fromUrl.filter((id) => known.has(id)).slice(0, MAX_RUNS);
  if (!state.picked.length) state.picked = state.runs.slice(0, 2).map((r) => r.run_id);
  wireControls();
  renderPicker();
  await update();
}

function renderPicker() {
  if (!state.runs.length) {
    replace($("#run-picker"), h("li", { class: "faint", text: "No runs yet." }));
    return;
  }
  replace(
    $("#run-picker"),
    state.runs.map((run) => {
      const i = state.picked.indexOf(run.run_id);
      const sw = h("span", { class: "swatch" });
      sw.style.background = i >= 0 ? seriesColor(i) : "transparent";
      const box = h("input", {
        type: "checkbox",
        checked: i >= 0,
        disabled: i < 0 && state.picked.length >= MAX_RUNS,
        on: { change: () => toggle(run.run_id) },
      });
      return h(
        "li",
        { dataset: { runId: run.run_id } },
        h("label", { class: "pick" }, box, sw, h("span", { class: "grow", text: run.name || run.run_id, title: run.run_id })),
        badge(run.state)
      );
    })
  );
  $("#compare-count").textContent = state.picked.length ? `${state.picked.length} selected` : "";
}

async function toggle(runId) {
  const i = state.picked.indexOf(runId);
  if (i >= 0) state.picked.splice(i, 1);
  else state.picked.push(runId);
  const url = new URL(location.href);
  url.searchParams.set("runs", state.picked.join(","));
  history.replaceState(null, "", url);
  renderPicker();
  await update();
}

async function update() {
  await Promise.all(state.picked.map(load));
  // Runs no longer picked stop following.
  for (const [id, entry] of state.data) {
    if (!state.picked.includes(id)) {
      if (entry.follower) entry.follower.stop();
      state.data.delete(id);
    }
  }
  renderChart();
  renderTradeoff();
  renderDiff();
}

async function load(runId) {
  if (state.data.has(runId)) return;
  const run = new RunData({ smoothing: Number($("#smoothing").value) });
  const entry = { run, follower: null };
  state.data.set(runId, entry);
  state.loading += 1;
  try {
    const [metrics, config] = await Promise.all([
      api.get(runUrl(runId, `/metrics?max_points=${settings.get("maxPoints")}`)),
      api.get(runUrl(runId, "/config")),
    ]);
    // Unticked while loading (and maybe ticked again: a new entry): this load is stale,
    // and a follower started now would never be stopped.
    if (state.data.get(runId) !== entry) return;
    run.ingest(metrics.rows || []);
    run.lastSeq = Math.max(run.lastSeq, metrics.last_seq || 0);
    state.configs.set(runId, config.config || {});
    const meta = state.runs.find((r) => r.run_id === runId);
    if (meta && isActive(meta.state)) {
      const fetchHistory = () => api.get(runUrl(runId, `/metrics?max_points=${settings.get("maxPoints")}`));
      const onRows = liveIngest(run, { maxPoints: () => settings.get("maxPoints"), fetchHistory });
      entry.follower = followRun(runId, { afterSeq: run.lastSeq, onRows });
    }
  } catch (err) {
    reportError(err, `Cannot load ${runId}`);
  } finally {
    state.loading -= 1;
  }
}

function series() {
  const key = $("#metric").value;
  const table = METRIC_TABLE[key] || "train";
  return state.picked
    .filter((id) => state.data.has(id))
    .map((id, i) => {
      const meta = state.runs.find((r) => r.run_id === id) || {};
      return {
        source: state.data.get(id).run,
        table,
        key,
        label: meta.name || id,
        color: seriesColor(state.picked.indexOf(id)),
        width: 1.75,
        points: table === "eval",
      };
    });
}

function yFormat() {
  const key = $("#metric").value;
  if (key === "learning_rate") return (v) => fmt.lr(v);
  if (key === "tokens_per_second") return (v) => fmt.compact(v);
  return (v) => (v == null ? "–" : Number(v.toPrecision(4)).toString());
}

function renderChart() {
  const el = $("#chart-compare");
  const opts = { series: series(), x: xAxis(), logY: $("#log-scale").checked, height: 340, yFormat: yFormat() };
  if (state.chart) state.chart.destroy();
  state.chart = new MetricChart(el, opts);
}

const xAxis = () => (document.querySelector('input[name="x-axis"]:checked') || {}).value || "step";

// -- forgetting vs gain: one point per run ---------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  el.append(...children);
  return el;
}

/** x: domain gain (validation loss fall), y: general-loss rise; runs with less forgetting
 * for the same gain sit lower. */
function renderTradeoff() {
  const points = state.picked
    .filter((id) => state.data.has(id))
    .map((id) => ({ id, meta: state.runs.find((r) => r.run_id === id) || {}, f: forgetting(state.data.get(id).run) }))
    .filter((p) => p.f && p.f.rise !== null && p.f.gain !== null);
  const box = $("#tradeoff");
  if (!points.length) {
    replace(box, h("p", { class: "faint", text: "Pick runs with a general set (a replay source or an eval set) and two evaluations." }));
    return;
  }
  const W = 520, H = 260, P = 44;
  const xs = points.map((p) => p.f.gain), ys = points.map((p) => p.f.rise);
  const span = (v) => {
    let lo = Math.min(0, ...v), hi = Math.max(0, ...v);
    const pad = (hi - lo || 1) * 0.1;
    return [lo - pad, hi + pad];
  };
  const [x0, x1] = span(xs), [y0, y1] = span(ys);
  const X = (v) => P + ((v - x0) / (x1 - x0)) * (W - 2 * P);
  const Y = (v) => H - P - ((v - y0) / (y1 - y0)) * (H - 2 * P);
  const axis = "var(--border, #888)";
  const chart = svg(
    "svg",
    { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": "Forgetting against domain gain, one point per run", id: "tradeoff-chart" },
    svg("line", { x1: P, x2: W - P, y1: Y(0), y2: Y(0), stroke: axis }),
    svg("line", { x1: X(0), x2: X(0), y1: P / 2, y2: H - P, stroke: axis }),
    svg("text", { x: W - P, y: H - 8, "text-anchor": "end", fill: "currentColor", "font-size": 12 }, "domain gain (val loss fall) →"),
    svg("text", { x: 4, y: 14, fill: "currentColor", "font-size": 12 }, "↑ general-loss rise (forgetting)"),
    ...points.map((p) =>
      svg(
        "g",
        { "data-run-id": p.id, "data-gain": p.f.gain, "data-rise": p.f.rise },
        svg("circle", { cx: X(p.f.gain), cy: Y(p.f.rise), r: 6, fill: seriesColor(state.picked.indexOf(p.id)) }, svg("title", {}, `${p.meta.name || p.id}: gain ${signed(p.f.gain)}, forgetting ${signed(p.f.rise)}`)),
        svg("text", { x: X(p.f.gain) + 9, y: Y(p.f.rise) + 4, fill: "currentColor", "font-size": 12 }, p.meta.name || p.id)
      )
    )
  );
  const table = h(
    "table",
    { class: "table", id: "tradeoff-table" },
    h("thead", null, h("tr", null, h("th", { scope: "col", text: "Run" }), h("th", { scope: "col", text: "Domain gain" }), h("th", { scope: "col", text: "Forgetting" }), h("th", { scope: "col", text: "General set" }))),
    h("tbody", null, points.map((p) => h("tr", { dataset: { runId: p.id } }, h("td", { text: p.meta.name || p.id }), h("td", { class: "num", text: signed(p.f.gain) }), h("td", { class: "num", text: signed(p.f.rise) }), h("td", { text: p.f.set }))))
  );
  replace(box, chart, table);
}

// -- config diff -----------------------------------------------------------------------------

function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v) && key === "lora_parameters") flatten(v, key, out);
    else out[key] = v;
  }
  return out;
}

function show(v) {
  if (v === null || v === undefined) return "–";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

function renderDiff() {
  const ids = state.picked.filter((id) => state.configs.has(id));
  $("#diff-empty").hidden = ids.length >= 2;
  if (ids.length < 2) {
    replace($("#diff-head"));
    replace($("#diff-body"));
    return;
  }
  const flat = ids.map((id) => flatten(state.configs.get(id)));
  const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))];
  const only = $("#diff-only").checked;
  const rows = [];
  // Lineage first: which run (checkpoint, step) each one started from (init_from).
  const lineage = ids.map((id) => {
    const from = (state.runs.find((r) => r.run_id === id) || {}).initialized_from;
    if (!from) return "–";
    return `${from.run_id || from.path}${from.checkpoint ? ` @ ${from.checkpoint}` : ""}${from.step != null ? ` (step ${from.step})` : ""}`;
  });
  if (lineage.some((v) => v !== "–")) {
    rows.push(h("tr", { class: "lineage", dataset: { setting: "initialized_from" } }, h("td", { text: "initialized from" }), lineage.map((v) => h("td", { text: v }))));
  }
  for (const key of keys) {
    const values = flat.map((f) => show(f[key]));
    const differs = new Set(values).size > 1;
    if (only && !differs) continue;
    // Highlight only matters when identical rows are shown too.
    rows.push(h("tr", { class: differs && !only ? "diff-changed" : "", dataset: { setting: key } }, h("td", { text: key }), values.map((v) => h("td", { text: v }))));
  }
  const names = ids.map((id) => (state.runs.find((r) => r.run_id === id) || {}).name || id);
  replace($("#diff-head"), h("tr", null, h("th", { scope: "col", text: "Setting" }), names.map((n, i) => {
    const sw = h("span", { class: "swatch" });
    sw.style.background = seriesColor(state.picked.indexOf(ids[i]));
    return h("th", { scope: "col" }, sw, " ", n);
  })));
  replace($("#diff-body"), rows.length ? rows : h("tr", null, h("td", { colspan: ids.length + 1, class: "faint", text: "The configs are identical." })));
}

// -- controls --------------------------------------------------------------------------------

function wireControls() {
  const slider = $("#smoothing");
  slider.value = String(settings.get("smoothing"));
  $("#smoothing-value").textContent = Number(slider.value).toFixed(2);
  slider.addEventListener("input", () => {
    $("#smoothing-value").textContent = Number(slider.value).toFixed(2);
    for (const { run } of state.data.values()) run.setSmoothing(Number(slider.value));
  });
  $("#log-scale").checked = settings.get("logScale");
  $("#log-scale").addEventListener("change", () => state.chart && state.chart.setLogY($("#log-scale").checked));
  for (const radio of document.querySelectorAll('input[name="x-axis"]')) {
    radio.checked = radio.value === settings.get("xAxis");
    radio.addEventListener("change", () => state.chart && state.chart.setX(radio.value));
  }
  $("#metric").addEventListener("change", renderChart);
  $("#diff-only").addEventListener("change", renderDiff);
}

main();
