// The Runs page: every run with its state and progress (live), interrupted-run cards with
// Resume (confirmed) and Dismiss, the queue, and the machine's gauges.
import { h, $, replace, fmt, toEpoch, debounce } from "./dom.js";
import { api, reportError, runUrl } from "./api.js";
import { onAnyStatus, onConnection } from "./live.js";
import { noteRunState } from "./notify.js";
import { badge, progressBar, summary, isActive, resumeRun, diskFull } from "./run_actions.js";

const DISMISSED_KEY = "cpt.dismissedInterrupted";
const state = { runs: [], queue: null, details: new Map(), system: null, timer: 0 };
window.cpt = { state };

function dismissed() {
  try {
    return new Set(JSON.parse(localStorage.getItem(DISMISSED_KEY) || "[]"));
  } catch {
    return new Set();
  }
}

async function refresh() {
  clearTimeout(state.timer);
  try {
    const res = await api.get("/api/runs/summary");
    state.runs = res.runs || [];
    state.queue = res.queue || null;
    for (const run of state.runs) noteRunState(run);
    renderRuns();
    renderQueue();
    await renderInterrupted();
  } catch (err) {
    if (err.status !== 401) reportError(err, "Cannot list the runs");
  }
  // Progress moves between state changes: poll while something runs, slowly otherwise.
  const busy = state.runs.some((r) => isActive(r.state));
  state.timer = setTimeout(refresh, busy ? 1500 : 6000);
}

// -- the runs table --------------------------------------------------------------------------

function renderRuns() {
  const runs = state.runs;
  $("#runs-count").textContent = runs.length ? `${runs.length}` : "";
  $("#runs-empty").hidden = runs.length > 0;
  $("#runs-table").hidden = runs.length === 0;
  replace($("#runs-body"), runs.map(runRow));
}

function runRow(run) {
  const s = summary(run);
  const href = `/runs/${encodeURIComponent(run.run_id)}`;
  return h(
    "tr",
    { dataset: { runId: run.run_id, state: run.state } },
    h(
      "td",
      null,
      h("a", { class: "run-link", href, text: run.name || run.run_id, title: run.name || run.run_id }),
      h("span", { class: "run-id", text: [run.run_id, run.model].filter(Boolean).join(" · ") })
    ),
    // An unreadable run says which file is damaged on hover.
    h("td", { title: run.state === "unreadable" ? run.reason || "" : "" }, badge(run.state), stateNote(run)),
    h(
      "td",
      null,
      h(
        "div",
        { class: "progress-cell" },
        h("span", { class: "num muted", text: s.total ? `${fmt.int(s.step)} / ${fmt.int(s.total)}` : fmt.int(s.step) }),
        progressBar(s.fraction, run.state)
      )
    ),
    h("td", { class: "right num", text: fmt.compact(s.tokens) }),
    h("td", { class: "right num", text: fmt.loss(s.loss) }),
    h("td", { class: "right num", text: fmt.duration(s.elapsed) }),
    h("td", { class: "right num", text: isActive(run.state) ? fmt.duration(s.eta) : "–" }),
    h("td", { class: "right muted", text: fmt.ago(toEpoch(run.created)), title: fmt.dateTime(toEpoch(run.created)) })
  );
}

/** Under the badge: why a run failed for lack of space, with the numbers (the reason in full
 * on hover). */
function stateNote(run) {
  const disk = diskFull(run);
  return disk ? h("span", { class: "run-id state-note", text: disk.short, title: run.reason || "" }) : null;
}

// -- interrupted runs ------------------------------------------------------------------------

async function renderInterrupted() {
  const hidden = dismissed();
  const runs = state.runs.filter((r) => r.state === "interrupted" && !hidden.has(r.run_id));
  const cards = [];
  for (const run of runs) {
    let detail = state.details.get(run.run_id);
    if (!detail || detail.last_seq !== run.last_seq) {
      try {
        detail = (await api.get(runUrl(run.run_id))).run;
        state.details.set(run.run_id, detail);
      } catch {
        detail = run;
      }
    }
    cards.push(interruptedCard(detail));
  }
  replace($("#interrupted"), cards);
}

function interruptedCard(run) {
  const last = run.last || {};
  const heard = Math.max(toEpoch((last.train || {}).time) || 0, toEpoch((last.status || {}).time) || 0, toEpoch((last.eval || {}).time) || 0);
  const facts = [
    ["Last step", run.total_steps ? `${fmt.int(run.step)} of ${fmt.int(run.total_steps)}` : fmt.int(run.step)],
    ["Last checkpoint", run.latest_checkpoint_step != null ? `step ${fmt.int(run.latest_checkpoint_step)}` : "none: it can only start again from step 0"],
    ["Last heard from", heard ? `${fmt.dateTime(heard)} (${fmt.ago(heard)})` : "never reported"],
    ["Found", run.reason || "the trainer process is gone and never reported a final status"],
  ];
  const resume = h("button", {
    class: "btn btn-primary",
    type: "button",
    text: "Resume…",
    disabled: !run.resumable && !run.restartable,
    title: run.resumable ? "" : run.restartable ? "No checkpoint: it can start again from step 0" : "No checkpoint to resume from",
    on: {
      click: async () => {
        if (await resumeRun(run)) refresh();
      },
    },
  });
  const dismiss = h("button", {
    class: "btn",
    type: "button",
    text: "Dismiss",
    on: {
      click: () => {
        const set = dismissed();
        set.add(run.run_id);
        localStorage.setItem(DISMISSED_KEY, JSON.stringify([...set]));
        refresh();
      },
    },
  });
  return h(
    "section",
    { class: "card card-warn interrupted-card", dataset: { runId: run.run_id }, "aria-label": `Interrupted run ${run.name || run.run_id}` },
    h(
      "div",
      { class: "card-head" },
      badge("interrupted"),
      h("a", { class: "card-title run-link", href: `/runs/${encodeURIComponent(run.run_id)}`, text: run.name || run.run_id }),
      h("span", { class: "spacer" }),
      resume,
      dismiss
    ),
    h(
      "div",
      { class: "card-body stack" },
      h("p", { text: "This run stopped without finishing and nothing is running it now. Nothing resumes on its own: resume it, or dismiss this note (the run stays listed)." }),
      h("dl", { class: "kv" }, facts.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]))
    )
  );
}

// -- the queue -------------------------------------------------------------------------------

function renderQueue() {
  const q = state.queue;
  const ids = (q && q.run_ids) || [];
  const byId = new Map(state.runs.map((r) => [r.run_id, r]));
  const status = $("#queue-state");
  status.dataset.state = !ids.length ? "created" : q.paused ? "interrupted" : "running";
  status.textContent = !ids.length ? "empty" : q.paused ? "paused" : "running";
  status.title = (q && q.pause_reason) || "";
  const toggle = $("#queue-toggle");
  toggle.hidden = !ids.length;
  toggle.textContent = q && q.paused ? "Start queue" : "Pause queue";
  $("#queue-empty").hidden = ids.length > 0;
  replace(
    $("#queue-list"),
    ids.map((id, i) => {
      const run = byId.get(id) || { run_id: id };
      return h(
        "li",
        { dataset: { runId: id } },
        h("span", { class: "faint num", text: `${i + 1}.` }),
        h("a", { class: "grow run-link", href: `/runs/${encodeURIComponent(id)}`, text: run.name || id }),
        h("button", { class: "btn btn-ghost btn-sm btn-icon", type: "button", text: "↑", "aria-label": `Move ${run.name || id} up`, disabled: i === 0, on: { click: () => move(ids, i, -1) } }),
        h("button", { class: "btn btn-ghost btn-sm btn-icon", type: "button", text: "↓", "aria-label": `Move ${run.name || id} down`, disabled: i === ids.length - 1, on: { click: () => move(ids, i, 1) } }),
        h("button", { class: "btn btn-ghost btn-sm", type: "button", text: "Remove", "aria-label": `Remove ${run.name || id} from the queue`, on: { click: () => queueCall("/api/queue/remove", { run_id: id }) } })
      );
    })
  );
}

function move(ids, i, delta) {
  const next = [...ids];
  [next[i], next[i + delta]] = [next[i + delta], next[i]];
  queueCall("/api/queue/reorder", { run_ids: next });
}

async function queueCall(path, body = {}) {
  try {
    const res = await api.post(path, body);
    state.queue = res.queue;
  } catch (err) {
    reportError(err, "Queue");
  }
  refresh();
}

// -- system gauges ---------------------------------------------------------------------------

async function refreshSystem() {
  try {
    state.system = await api.get("/api/system");
    renderSystem();
  } catch (err) {
    if (err.status !== 401) $("#gauges").textContent = `System figures unavailable: ${err.message}`;
  }
  setTimeout(refreshSystem, 3000);
}

function level(pct) {
  return pct >= 92 ? "critical" : pct >= 80 ? "high" : "ok";
}

function gauge(label, pct, detail) {
  return h(
    "div",
    { class: "gauge", dataset: { level: level(pct ?? 0) } },
    h("div", { class: "gauge-head" }, h("span", { text: label }), h("span", { class: "num", text: detail })),
    progressBar((pct ?? 0) / 100, "")
  );
}

function renderSystem() {
  const s = state.system;
  const mem = s.memory || {};
  const swap = s.swap || {};
  const disk = s.disk || {};
  const cpu = s.cpu || {};
  $("#system-platform").textContent = [s.platform && s.platform.machine, s.mlx && s.mlx.device].filter(Boolean).join(" · ");
  replace(
    $("#gauges"),
    gauge("Memory", mem.percent, `${fmt.bytes(mem.used)} / ${fmt.bytes(mem.total)}`),
    gauge("Swap", swap.total ? swap.percent : 0, swap.total ? `${fmt.bytes(swap.used)} / ${fmt.bytes(swap.total)}` : "none"),
    gauge("CPU", cpu.percent, `${fmt.pct(cpu.percent)} of ${cpu.count || "?"} cores`),
    gauge("Disk", disk.percent, disk.error ? disk.error : `${fmt.bytes(disk.free)} free`)
  );
  // Pressure threatens a run when memory is nearly full or swapping has begun in earnest.
  const training = state.runs.some((r) => isActive(r.state));
  const pressured = mem.percent >= 90 || (swap.total && swap.percent >= 50 && mem.percent >= 80);
  const warn = $("#memory-warning");
  warn.hidden = !(pressured && training);
  if (!warn.hidden) {
    warn.textContent =
      `Memory pressure: ${fmt.pct(mem.percent)} of memory in use` +
      (swap.total ? `, ${fmt.pct(swap.percent)} of swap` : "") +
      ". A training run may slow down sharply or be killed by the system; close other programs or lower batch_size / max_seq_length.";
  }
}

// -- live ------------------------------------------------------------------------------------

const refreshSoon = debounce(refresh, 150);
onAnyStatus(refreshSoon);
onConnection((online) => {
  if (online) refreshSoon();
});
$("#queue-toggle").addEventListener("click", () => queueCall(state.queue && state.queue.paused ? "/api/queue/start" : "/api/queue/pause"));
refresh();
refreshSystem();
