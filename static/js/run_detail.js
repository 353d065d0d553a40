// One run's page: live charts (history from /metrics?max_points=, then socket rows after the
// last seq), progress and ETA, the reason it ended, stdout tail, checkpoints, and actions.
import { h, $, replace, fmt } from "./dom.js";
import { api, reportError, runUrl } from "./api.js";
import { followRun, onConnection } from "./live.js";
import { RunData, MetricChart, seriesColor, liveIngest } from "./chart.js";
import { settings } from "./settings.js";
import { toast } from "./toast.js";
import { noteRunState } from "./notify.js";
import { forgetting, signed } from "./forgetting.js";
import { summary, canResume, isActive, resumeRun, stopRun, deleteRun, diskFull } from "./run_actions.js";
import { renderRanks } from "./ranks.js";

const runId = document.body.dataset.runId;
const run = new RunData({ smoothing: settings.get("smoothing") });
// samples: step -> Map(prompt -> text) of the sample events (a resume's rewrite wins).
const page = { record: null, charts: {}, follower: null, info: {}, logTimer: 0, refreshPending: false, samples: new Map(), samplesDirty: false, sampleSteps: [] };
// For tests and the curious: window.cpt.run holds the chart columns.
window.cpt = { run, page };

async function main() {
  try {
    page.record = (await api.get(runUrl(runId))).run;
  } catch (err) {
    replace($("#main"), h("div", { class: "empty" }, h("h2", { text: err.status === 404 ? "No such run" : "Cannot load this run" }), h("p", { text: err.message }), h("a", { class: "btn", href: "/", text: "Back to runs" })));
    return;
  }
  buildCharts();
  wireToolbar();
  wireActions();
  renderRecord();
  await loadHistory();
  // Live rows at full resolution; past 4x the history's points, the history is fetched
  // again downsampled and the run rebuilt from it (memory and redraws stay bounded).
  const ingest = liveIngest(run, { maxPoints: () => settings.get("maxPoints"), fetchHistory });
  page.follower = followRun(runId, {
    afterSeq: run.lastSeq,
    onRows: (rows) => {
      ingest(rows);
      noteRows(rows, true);
      renderLive();
    },
    onStatus: () => refreshRecordSoon(),
  });
  onConnection((online) => {
    if (online) refreshRecordSoon();
  });
  loadLog();
  loadConfig();
  setInterval(tick, 1000);
}

// -- data ------------------------------------------------------------------------------------

function fetchHistory() {
  return api.get(runUrl(runId, `/metrics?max_points=${settings.get("maxPoints")}`));
}

async function loadHistory() {
  try {
    const res = await fetchHistory();
    const rows = res.rows || [];
    run.ingest(rows);
    if (typeof res.last_seq === "number" && res.last_seq > run.lastSeq) run.lastSeq = res.last_seq;
    noteRows(rows, false);
  } catch (err) {
    reportError(err, "Cannot load the metrics");
  }
  renderLive();
}

/** Keep what the page shows besides the charts: plan, status, warnings. (Checkpoints are
 * the evaluation panel's: static/js/evaluation.js.) */
function noteRows(rows, live) {
  for (const row of rows) {
    if (row.event === "run_start") {
      page.info.start = row;
      page.info.attemptStart = { step: row.step ?? 0, time: row.time, tokens: row.trained_tokens };
    } else if (row.event === "status") {
      page.info.status = row;
      if (live) refreshRecordSoon();
    } else if (row.event === "warning" && live) {
      toast(row.message || row.kind, { kind: "warning", title: `Warning: ${row.kind || "training"}` });
    } else if (row.event === "train") {
      page.info.lastTrain = row;
    } else if (row.event === "tokenization") {
      page.info.tokenization = row;
    } else if (row.event === "sample") {
      noteSample(row);
    }
  }
  if (page.samplesDirty) renderSamples(live);
}

// -- samples: what the model wrote at each evaluation (sample_prompts) -----------------------

function noteSample(row) {
  if (typeof row.step !== "number" || typeof row.prompt !== "string") return;
  if (!page.samples.has(row.step)) page.samples.set(row.step, new Map());
  page.samples.get(row.step).set(row.prompt, String(row.text ?? ""));
  page.samplesDirty = true;
}

/** A slider over the evaluated steps; the newest step is shown unless the reader moved
 * the slider back (then new steps only extend its range). */
function renderSamples(live) {
  page.samplesDirty = false;
  const steps = [...page.samples.keys()].sort((a, b) => a - b);
  const card = $("#samples");
  card.hidden = !steps.length;
  if (!steps.length) return;
  const slider = $("#sample-step");
  const atEnd = !live || Number(slider.value) >= Number(slider.max);
  slider.max = String(steps.length - 1);
  if (atEnd) slider.value = slider.max;
  page.sampleSteps = steps;
  showSampleStep();
}

function showSampleStep() {
  const steps = page.sampleSteps || [];
  const i = Math.min(Number($("#sample-step").value) || 0, steps.length - 1);
  const step = steps[i];
  $("#sample-step-label").textContent = `step ${fmt.int(step)} (${i + 1} of ${steps.length})`;
  const texts = page.samples.get(step) || new Map();
  replace(
    $("#sample-texts"),
    [...texts].map(([prompt, text]) =>
      h("div", { class: "sample", dataset: { step: String(step) } }, h("pre", { class: "codeblock" }, h("strong", { text: prompt }), h("span", { class: "sample-text", text })))
    )
  );
}

/** One refresh for a burst of triggers: a status row arrives as a row and as run_status
 * (from the trainer's report and from the stream), within a few hundred milliseconds. */
let refreshTimer = 0;
function refreshRecordSoon() {
  clearTimeout(refreshTimer);
  page.refreshPending = true;
  refreshTimer = setTimeout(() => {
    page.refreshPending = false;
    refreshRecord();
  }, 300);
}

async function refreshRecord() {
  try {
    page.record = (await api.get(runUrl(runId))).run;
    renderRecord();
    // Ended: read the log's last lines once more. Running again (a resume): follow it.
    if (!isActive(page.record.state) || !page.logTimer) loadLog();
  } catch (err) {
    if (err.status !== 0) reportError(err, "Cannot refresh the run");
  }
}

// -- rendering -------------------------------------------------------------------------------

function renderRecord() {
  const r = page.record;
  noteRunState(r);
  $("#run-name").textContent = r.name || r.run_id;
  document.title = `${r.name || r.run_id} · MLX CPT Console`;
  const b = $("#run-state");
  b.dataset.state = r.state;
  b.textContent = r.state;
  $("#act-start").hidden = r.state !== "created";
  $("#act-stop").hidden = !["starting", "running"].includes(r.state);
  $("#act-resume").hidden = !canResume(r);
  $("#act-continue").hidden = !["finished", "stopped"].includes(r.state);
  renderLineage(r.initialized_from);
  $("#act-delete").disabled = isActive(r.state);
  const reason = r.reason || r.state_reason || r.message || (r.exit && r.exit.reason);
  const box = $("#run-reason");
  // An unreadable run's reason names the damaged file: always shown.
  const ended = ["stopped", "finished", "failed", "diverged", "interrupted", "unreadable"].includes(r.state);
  box.hidden = !reason || (!ended && r.state !== "queued");
  const tone = { failed: "callout-bad", diverged: "callout-bad", unreadable: "callout-bad", interrupted: "callout-warn", finished: "callout-ok" };
  box.className = `callout ${tone[r.state] || ""}`;
  const exitBits = r.exit ? [r.exit.code != null ? `exit code ${r.exit.code}` : null, r.exit.signal].filter(Boolean).join(", ") : "";
  // A run that failed for lack of space says where, and by how much, under its reason.
  const disk = diskFull(r);
  const facts = disk ? h("dl", { class: "kv disk-full" }, disk.facts.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })])) : null;
  replace(box, h("div", { class: "stack" }, h("div", null, h("strong", { text: `${cap(r.state)}: ` }), reason || "", exitBits ? h("span", { class: "muted", text: ` (${exitBits})` }) : null), facts));
  renderRanks(r, page.info.lastTrain || (r.last && r.last.train));
  renderProgress();
}

/** Which run (and checkpoint) this one started from: init_from's lineage in run.json. */
function renderLineage(from) {
  const el = $("#run-lineage");
  el.hidden = !from;
  if (!from) return replace(el, null);
  const where = [from.checkpoint, from.step != null ? `step ${from.step}` : null].filter(Boolean).join(", ");
  const source = from.run_id ? h("a", { href: `/runs/${encodeURIComponent(from.run_id)}`, text: from.run_id }) : h("code", { text: from.path });
  replace(el, h("span", null, "Initialized from ", source, where ? ` (${where})` : "", from.val_loss != null ? ` · its validation loss ${fmt.loss(from.val_loss)}` : ""));
}

function renderLive() {
  const s = run.last("train", "smooth");
  $("#s-loss").textContent = fmt.loss(s);
  $("#s-loss-sub").textContent = `raw ${fmt.loss(run.last("train", "train_loss"))} · smoothed`;
  const val = run.last("eval", "val_loss");
  $("#s-val").textContent = fmt.loss(val);
  $("#s-val-sub").textContent = `best ${fmt.loss(minOf(run.eval, "val_loss"))}`;
  $("#s-tps").textContent = fmt.compact(run.last("train", "tokens_per_second"));
  $("#s-mem").textContent = fmt.gb(run.last("train", "peak_memory"));
  if (page.record) renderRanks(page.record, page.info.lastTrain || (page.record.last && page.record.last.train));
  renderForgetting();
  renderTokenization();
  if (run.evalSets.length !== page.knownSets) {
    page.knownSets = run.evalSets.length;
    page.charts.loss.setSeries(lossSeries());
  }
  renderProgress();
}

function renderProgress() {
  const r = page.record;
  if (!r) return;
  const s = summary(r);
  const start = page.info.start || {};
  const step = Math.max(s.step ?? 0, run.last("train", "step") || 0);
  const total = s.total ?? start.total_steps ?? null;
  const tokens = Math.max(s.tokens ?? 0, run.last("train", "tokens") || 0);
  const totalTokens = s.totalTokens ?? start.total_tokens ?? null;
  $("#p-steps").textContent = `${fmt.int(step)} / ${fmt.int(total)}`;
  $("#p-tokens").textContent = `${fmt.compact(tokens)} / ${fmt.compact(totalTokens)}`;
  setBar("#bar-steps", total ? step / total : 0, r.state);
  setBar("#bar-tokens", totalTokens ? tokens / totalTokens : 0, r.state);
  $("#p-elapsed").textContent = fmt.duration(s.elapsed);
  $("#p-eta").textContent = isActive(r.state) ? fmt.duration(eta(step, total) ?? s.eta) : r.state === "finished" ? "done" : "–";
}

/** Forgetting (the general set's loss change) beside the domain gain (the validation
 * loss's fall), both since the first evaluation. */
function renderForgetting() {
  const f = forgetting(run);
  $("#forgetting").hidden = !(f && f.rise !== null);
  $("#domain-gain").hidden = !(f && f.rise !== null && f.gain !== null);
  if (!f || f.rise === null) return;
  $("#s-forget").textContent = signed(f.rise);
  $("#s-forget-sub").textContent = `${f.set} loss since step ${fmt.int(f.since)}`;
  $("#s-gain").textContent = signed(f.gain);
}

/** Tokenization still going on (training started after the first shards): its progress. */
function renderTokenization() {
  const start = page.info.start?.data?.tokenization;
  const last = page.info.tokenization || start;
  const box = $("#tokenization");
  if (!last || (last === start && last.done)) {
    box.hidden = true;
    return;
  }
  const corpora = Object.values(last.corpora || {});
  const shards = corpora.reduce((a, c) => a + (c.shards || 0), 0);
  const done = corpora.reduce((a, c) => a + (c.shards_done || 0), 0);
  const chars = corpora.reduce((a, c) => a + (c.chars || 0), 0);
  const charsDone = corpora.reduce((a, c) => a + (c.chars_done || 0), 0);
  const rate = `${fmt.compact(last.tokens_per_second)} tokens/s`;
  box.hidden = false;
  box.dataset.done = String(Boolean(last.done));
  box.className = `callout ${last.done ? "callout-ok" : ""}`;
  box.textContent = last.done
    ? `Tokenized ${fmt.compact(last.tokens)} tokens in ${fmt.duration(last.seconds)} (${rate}), while training ran; cached for later runs.`
    : `Tokenizing the corpus while training runs: ${chars ? Math.floor((100 * charsDone) / chars) : 0}% (${fmt.int(done)} / ${fmt.int(shards)} shards, ${rate}).`;
}

/** Remaining seconds at the pace of this attempt's last train rows (a resume restarts the clock). */
function eta(step, total) {
  const t = run.train;
  if (!total || t.n < 2) return null;
  const steps = t.col("step");
  const times = t.col("time");
  const since = page.info.attemptStart?.time ?? -Infinity;
  let first = Math.max(0, t.n - 20);
  while (first < t.n - 1 && !(times[first] >= since)) first++;
  const dt = times[t.n - 1] - times[first];
  const ds = steps[t.n - 1] - steps[first];
  if (!(dt > 0 && ds > 0)) return null;
  return ((total - step) * dt) / ds;
}

function tick() {
  if (page.record && isActive(page.record.state)) renderProgress();
}

function setBar(sel, fraction, state) {
  const el = $(sel);
  el.dataset.state = state;
  el.firstElementChild.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  el.setAttribute("role", "progressbar");
  el.setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
}

function minOf(table, key) {
  const col = table.col(key);
  let m = NaN;
  for (let i = 0; i < table.n; i++) if (col[i] === col[i] && !(col[i] >= m)) m = col[i];
  return m;
}

const cap = (s) => (s ? s[0].toUpperCase() + s.slice(1) : "");

// -- charts ----------------------------------------------------------------------------------

function lossSeries() {
  const c = seriesColor(0);
  return [
    { source: run, table: "train", key: "train_loss", label: "train (raw)", color: c, width: 1, alpha: 0.3 },
    { source: run, table: "train", key: "smooth", label: "train", color: c, width: 2 },
    { source: run, table: "eval", key: "val_loss", label: "validation", color: seriesColor(1), width: 2, points: true },
    ...run.evalSets.map((name, i) => ({
      source: run,
      table: "eval",
      key: `${name}_loss`,
      label: name,
      color: seriesColor(i + 2),
      width: 1.5,
      dash: [6, 4],
      points: true,
    })),
  ];
}

function buildCharts() {
  const x = settings.get("xAxis");
  const logY = settings.get("logScale");
  page.knownSets = run.evalSets.length;
  page.charts.loss = new MetricChart($("#chart-loss"), { series: lossSeries(), x, logY, height: 300, yFormat: (v) => (v == null ? "–" : v.toFixed(3)) });
  page.charts.lr = new MetricChart($("#chart-lr"), {
    series: [{ source: run, table: "train", key: "learning_rate", label: "lr", color: seriesColor(2), width: 1.5 }],
    x,
    height: 160,
    yFormat: (v) => fmt.lr(v),
  });
  page.charts.tps = new MetricChart($("#chart-tps"), {
    series: [{ source: run, table: "train", key: "tokens_per_second", label: "tok/s", color: seriesColor(3), width: 1.5 }],
    x,
    height: 160,
    yFormat: (v) => fmt.compact(v),
  });
  page.charts.mem = new MetricChart($("#chart-mem"), {
    series: [{ source: run, table: "train", key: "peak_memory", label: "GB", color: seriesColor(4), width: 1.5 }],
    x,
    height: 160,
    yFormat: (v) => (v == null ? "–" : Number(v.toPrecision(3)).toString()),
  });
  page.charts.gnorm = new MetricChart($("#chart-gnorm"), {
    series: [{ source: run, table: "train", key: "grad_norm", label: "grad norm", color: seriesColor(5), width: 1.5 }],
    x,
    height: 160,
    yFormat: (v) => fmt.num(v),
  });
}

function wireToolbar() {
  $("#sample-step").addEventListener("input", showSampleStep);
  const slider = $("#smoothing");
  const out = $("#smoothing-value");
  slider.value = String(run.smoothing);
  out.textContent = run.smoothing.toFixed(2);
  slider.addEventListener("input", () => {
    out.textContent = Number(slider.value).toFixed(2);
    run.setSmoothing(Number(slider.value));
  });
  slider.addEventListener("change", () => settings.set("smoothing", Number(slider.value)));
  const log = $("#log-scale");
  log.checked = settings.get("logScale");
  log.addEventListener("change", () => page.charts.loss.setLogY(log.checked));
  for (const radio of document.querySelectorAll('input[name="x-axis"]')) {
    radio.checked = radio.value === settings.get("xAxis");
    radio.addEventListener("change", () => {
      for (const c of Object.values(page.charts)) c.setX(radio.value);
    });
  }
  $("#reset-zoom").addEventListener("click", () => {
    for (const c of Object.values(page.charts)) c.resetZoom();
  });
}

// -- actions ---------------------------------------------------------------------------------

function wireActions() {
  $("#act-stop").addEventListener("click", async () => {
    $("#act-stop").disabled = true;
    if (await stopRun(page.record)) await refreshRecord();
    $("#act-stop").disabled = false;
  });
  $("#act-start").addEventListener("click", async () => {
    $("#act-start").disabled = true;
    try {
      await api.post(runUrl(runId, "/start"), {});
      await refreshRecord();
      loadLog();
    } catch (err) {
      reportError(err, "Cannot start");
    }
    $("#act-start").disabled = false;
  });
  $("#act-resume").addEventListener("click", async () => {
    if (await resumeRun(page.record)) await refreshRecord();
  });
  $("#act-delete").addEventListener("click", async () => {
    if (await deleteRun(page.record)) location.assign("/");
  });
}

// -- log, config ----------------------------------------------------------------------------

async function loadLog() {
  clearTimeout(page.logTimer);
  page.logTimer = 0;
  try {
    const res = await api.get(runUrl(runId, `/logs?tail=${settings.get("logLines")}`));
    const lines = Array.isArray(res.lines) ? res.lines : String(res.text ?? res.log ?? "").split("\n");
    const pre = $("#log");
    const text = lines.join("\n");
    if (pre.textContent !== text) {
      pre.textContent = text || "(no output yet)";
      if ($("#follow-log").checked) pre.scrollTop = pre.scrollHeight;
    }
  } catch (err) {
    if (err.status !== 404) $("#log").textContent = `Cannot read the log: ${err.message}`;
  }
  if (page.record && (isActive(page.record.state) || page.record.state === "queued")) {
    page.logTimer = setTimeout(loadLog, 1500);
  }
}

async function loadConfig() {
  const r = page.record;
  let text = r.config_yaml;
  if (!text) {
    try {
      const res = await api.get(runUrl(runId, "/config"));
      text = res.yaml;
    } catch {
      text = null;
    }
  }
  $("#run-config").textContent = text || "(not available)";
}

main();
