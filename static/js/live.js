/**
 * Live updates over Socket.IO (DESIGN.md "Live updates"), shared by every page.
 *
 *   getSocket() -> the page's single Socket.IO connection, opened on first use. It
 *       authenticates with the console's HttpOnly cookie on the handshake.
 *   followRun(run_id, {afterSeq, onRows(rows), onStatus(msg)}) -> {stop(), lastSeq}
 *       Emits `join_run {run_id, after_seq}` now and after every reconnect, always with the
 *       last seq delivered, and drops any row whose seq was already delivered: a dropped
 *       connection or a reload resumes with no gap and no duplicate.
 *   onConnection(fn(online: boolean)) -> unsubscribe; called at once with the current state.
 *   onAnyStatus(fn(msg)) -> unsubscribe: every `run_status` event this page receives.
 *   followedRuns() -> {run_id: n}: the runs this page follows now, and how many times.
 *   followJob(job_id, {onEvent(name, msg), events?}) -> {stop()}: an evaluation job's
 *       events (eval_started ... eval_result | eval_error), rejoined after a reconnect with
 *       the last seq, each once and in order, until the job ends.
 *
 * While the socket is down, base.html's #offline-banner ("Offline, reconnecting") is shown and
 * the top bar's connection dot turns red; both clear on reconnect.
 */
import { io } from "../vendor/socket.io-4.8.4.esm.min.js";

let socket = null;
let online = false;
// run_id -> how many followRun() calls follow it now (for pages' checks and tests).
const following = new Map();
const connectionListeners = new Set();
const statusListeners = new Set();

export function getSocket() {
  if (socket) return socket;
  socket = io({
    withCredentials: true,
    reconnectionDelay: 500,
    reconnectionDelayMax: 4000,
  });
  socket.on("connect", () => setOnline(true));
  socket.on("disconnect", () => setOnline(false));
  socket.on("connect_error", () => setOnline(false));
  socket.on("run_status", (msg) => {
    for (const fn of statusListeners) fn(msg);
  });
  window.cptSocket = socket; // for tests and the curious (the page's one connection)
  return socket;
}

function setOnline(value) {
  online = value;
  const banner = document.getElementById("offline-banner");
  if (banner) banner.hidden = value;
  const dot = document.getElementById("conn");
  if (dot) {
    dot.dataset.state = value ? "online" : "offline";
    const label = dot.querySelector(".conn-label");
    if (label) label.textContent = value ? "Live" : "Offline";
  }
  for (const fn of connectionListeners) fn(value);
}

export function onConnection(fn) {
  connectionListeners.add(fn);
  fn(online);
  return () => connectionListeners.delete(fn);
}

export function onAnyStatus(fn) {
  getSocket();
  statusListeners.add(fn);
  return () => statusListeners.delete(fn);
}

/** {run_id: number of live followRun() calls}: a page following a run twice is a leak. */
export function followedRuns() {
  return Object.fromEntries(following);
}

export function followRun(runId, { afterSeq = 0, onRows = () => {}, onStatus = () => {} } = {}) {
  const s = getSocket();
  let lastSeq = Number(afterSeq) || 0;
  let stopped = false;

  const join = () => {
    if (!stopped) s.emit("join_run", { run_id: runId, after_seq: lastSeq });
  };
  const handleRows = (msg) => {
    if (stopped || !msg || msg.run_id !== runId || !Array.isArray(msg.rows)) return;
    const fresh = [];
    for (const row of msg.rows) {
      if (typeof row.seq === "number" && row.seq > lastSeq) {
        fresh.push(row);
        lastSeq = row.seq;
      }
    }
    if (fresh.length) onRows(fresh);
  };
  const handleStatus = (msg) => {
    if (!stopped && msg && msg.run_id === runId) onStatus(msg);
  };

  s.on("connect", join);
  s.on("run_metrics", handleRows);
  s.on("run_status", handleStatus);
  if (s.connected) join();
  following.set(runId, (following.get(runId) || 0) + 1);

  return {
    get lastSeq() {
      return lastSeq;
    },
    stop() {
      if (stopped) return;
      stopped = true;
      const left = (following.get(runId) || 1) - 1;
      if (left) following.set(runId, left);
      else following.delete(runId);
      s.off("connect", join);
      s.off("run_metrics", handleRows);
      s.off("run_status", handleStatus);
      if (s.connected) s.emit("leave_run", { run_id: runId });
    },
  };
}

/** Every event an evaluation worker's job sends (training/eval_worker.py, web/evaluation.py). */
export const JOB_EVENTS = ["eval_started", "eval_progress", "eval_lane", "eval_token", "eval_lane_end", "eval_result", "eval_error"];
const FINAL_JOB_EVENTS = new Set(["eval_result", "eval_error"]);

/**
 * Follow one evaluation job: `join_eval {job_id, after_seq}` now and after every reconnect
 * (with the last seq handled), each event handed to onEvent(name, msg) once and in order,
 * until its result or error. While a join is in flight, events are held and sorted: live
 * ones may overtake the replay of what was missed. Returns {stop()}.
 */
export function followJob(jobId, { onEvent, events = JOB_EVENTS } = {}) {
  const socket = getSocket();
  const wanted = new Set(events);
  let lastSeq = 0;
  let done = false;
  let held = null; // events received while a join is in flight
  const handle = (name, msg) => {
    if (done || msg.seq <= lastSeq) return;
    lastSeq = msg.seq;
    if (FINAL_JOB_EVENTS.has(name)) done = true;
    if (wanted.has(name)) onEvent(name, msg);
    if (done) stop();
  };
  const join = () => {
    if (done) return;
    held = [];
    socket.emit("join_eval", { job_id: jobId, after_seq: lastSeq }, () => {
      // The replay came before this answer: hand everything on in seq order.
      const pending = (held || []).sort((a, b) => a[1].seq - b[1].seq);
      held = null;
      for (const [name, msg] of pending) handle(name, msg);
    });
  };
  const handlers = JOB_EVENTS.map((name) => [
    name,
    (msg) => {
      if (!msg || msg.job_id !== jobId || typeof msg.seq !== "number") return;
      if (held) held.push([name, msg]);
      else handle(name, msg);
    },
  ]);
  const stop = () => {
    done = true;
    socket.off("connect", join);
    for (const [name, fn] of handlers) socket.off(name, fn);
    socket.emit("leave_eval", { job_id: jobId });
  };
  for (const [name, fn] of handlers) socket.on(name, fn);
  socket.on("connect", join);
  if (socket.connected) join();
  return { stop };
}
