/**
 * What the Runs and Run pages share about one run: its badge, its numbers, and the actions
 * that change it (each confirmed where it cannot be undone or starts a process).
 *
 *   badge(state) -> <span class="badge">; progressBar(fraction, state) -> <div class="progress">
 *   summary(run) -> {step, total, fraction, tokens, totalTokens, loss, elapsed, eta, checkpoint}
 *       from a GET /api/runs or /api/runs/<run_id> record (missing figures are null)
 *   resumeRun(run) -> Promise<boolean>: explains what Resume will do, then POSTs
 *       {"confirm": true} only if the person confirms. A run that ended before its first
 *       checkpoint (`restartable`) has nothing to resume from: the dialog offers "Start
 *       again from step 0" instead (POST /restart, confirmed the same way)
 *   stopRun(run), deleteRun(run) -> Promise<boolean> (delete is confirmed)
 *   isActive(state), canResume(run)
 *   diskFull(run) -> null, or {short, facts} for a run that failed for lack of space (from
 *       its `disk_full` {path, needed_bytes, free_bytes}): a line for the runs list and the
 *       [label, value] pairs the run page shows
 */
import { h, fmt, toEpoch } from "./dom.js";
import { api, reportError, runUrl } from "./api.js";
import { confirmDialog } from "./dialog.js";
import { toast } from "./toast.js";

export const ACTIVE = new Set(["starting", "running", "stopping"]);
export const RESUMABLE = new Set(["stopped", "interrupted", "failed", "diverged"]);
export const isActive = (state) => ACTIVE.has(state);

export function badge(state) {
  return h("span", { class: "badge", dataset: { state: state || "created" }, text: state || "unknown" });
}

export function progressBar(fraction, state) {
  const bar = h("span");
  bar.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
  return h(
    "div",
    {
      class: "progress",
      role: "progressbar",
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": String(Math.round((fraction || 0) * 100)),
      dataset: { state: state || "" },
    },
    bar
  );
}

export function diskFull(run) {
  const d = run && run.disk_full;
  if (!d) return null;
  const free = typeof d.free_bytes === "number" ? fmt.bytes(d.free_bytes) : "?";
  const needed = typeof d.needed_bytes === "number" ? fmt.bytes(d.needed_bytes) : null;
  return {
    short: `disk full: ${free} free` + (needed ? `, ~${needed} needed` : ""),
    facts: [
      ["Folder", d.path || "the run folder"],
      ["Space left", typeof d.free_bytes === "number" ? `${free} (${fmt.int(d.free_bytes)} bytes)` : "unknown"],
      ["Space needed", needed ? `about ${needed} (${fmt.int(d.needed_bytes)} bytes)` : "more than was left: not even the final status fitted"],
      ["Next", run.resumable === false ? "free some space on that disk, then start it again: no checkpoint was saved" : "free some space on that disk, then Resume: the last checkpoint is intact"],
    ],
  };
}

const pick = (...xs) => xs.find((x) => typeof x === "number" && Number.isFinite(x)) ?? null;

export function summary(run) {
  const last = run.last || run.metrics || {};
  const train = last.train || {};
  const start = last.run_start || {};
  const step = pick(run.step, train.step);
  const total = pick(run.total_steps, start.total_steps);
  const tokens = pick(run.trained_tokens, run.tokens, train.trained_tokens);
  const totalTokens = pick(run.total_tokens, start.total_tokens);
  const started = toEpoch(run.started) ?? toEpoch(run.created);
  const ended = toEpoch(run.ended) ?? toEpoch(run.last_event_time);
  // A run that is over: the trainer's own count of training seconds (across resumes);
  // one that trains: the clock since this attempt started.
  const elapsed = isActive(run.state)
    ? pick(run.elapsed, started && Date.now() / 1000 - started)
    : pick(run.elapsed, run.elapsed_seconds, started && ended ? ended - started : null);
  let eta = pick(run.eta, run.eta_seconds);
  if (eta === null && isActive(run.state) && step && total && elapsed) {
    const base = pick(run.start_step) || 0;
    const rate = (step - base) / Math.max(1, elapsed);
    eta = rate > 0 ? (total - step) / rate : null;
  }
  const ckptStep = pick(run.latest_checkpoint_step, (run.last_checkpoint || {}).step);
  const ckpt = ckptStep !== null ? { step: ckptStep, ...(run.last_checkpoint || {}) } : null;
  return {
    step,
    total,
    fraction: step !== null && total ? step / total : null,
    tokens,
    totalTokens,
    loss: pick(run.train_loss, run.loss, train.train_loss),
    valLoss: pick(run.val_loss, (last.eval || {}).val_loss),
    elapsed,
    eta,
    checkpoint: ckpt,
  };
}

/** The server says on a detailed record: `resumable` (a resumable state and a checkpoint)
 * or `restartable` (a resumable state, no checkpoint: it can start again from step 0). */
export function canResume(run) {
  if (typeof run.resumable === "boolean") return run.resumable || run.restartable === true;
  return RESUMABLE.has(run.state);
}

async function latestCheckpoint(run) {
  try {
    const { checkpoints } = await api.get(runUrl(run.run_id, "/checkpoints"));
    return checkpoints.find((c) => c.is_latest) || checkpoints[checkpoints.length - 1] || null;
  } catch {
    return summary(run).checkpoint;
  }
}

async function describeResume(run) {
  const s = summary(run);
  const ckpt = await latestCheckpoint(run);
  const name = run.name || run.run_id;
  const lines = [];
  if (ckpt && typeof ckpt.step === "number") {
    const when = toEpoch(ckpt.time);
    lines.push(
      `The trainer starts again in the same run folder, from the checkpoint at step ${fmt.int(ckpt.step)}` +
        (when ? ` (saved ${fmt.dateTime(when)}).` : ".")
    );
    if (s.step !== null && s.step > ckpt.step) {
      lines.push(`Steps ${fmt.int(ckpt.step + 1)}–${fmt.int(s.step)}, logged after that checkpoint, are trained again.`);
    }
  } else {
    lines.push("The trainer starts again in the same run folder, from its latest checkpoint.");
  }
  lines.push(
    `Training continues towards ${s.total ? `step ${fmt.int(s.total)}` : "its budget"} with the same settings; ` +
      "its metrics and log are appended to, nothing already written is changed."
  );
  return { title: `Resume “${name}”?`, lines };
}

export async function resumeRun(run) {
  if (run.restartable === true && !run.resumable) return restartRun(run);
  const { title, lines } = await describeResume(run);
  const ok = await confirmDialog({ title, body: lines, confirmLabel: "Resume training" });
  if (!ok) return false;
  try {
    await api.post(runUrl(run.run_id, "/resume"), { confirm: true });
    toast(`${run.name || run.run_id} is resuming.`, { kind: "success", timeout: 4000 });
    return true;
  } catch (err) {
    reportError(err, "Cannot resume");
    return false;
  }
}

async function restartRun(run) {
  const s = summary(run);
  const name = run.name || run.run_id;
  const ok = await confirmDialog({
    title: `Start “${name}” again from step 0?`,
    body: [
      "Its trainer ended before it wrote a first checkpoint, so there is nothing to resume from.",
      "It can start again from step 0 in the same run folder, with the same settings" +
        (s.total ? `, towards step ${fmt.int(s.total)}.` : "."),
      "What the earlier attempt wrote is cleared: its metrics" +
        (s.step ? ` (up to step ${fmt.int(s.step)})` : "") +
        ", data report and unfinished checkpoints. The settings, the log and the run's history are kept.",
    ],
    confirmLabel: "Start again from step 0",
  });
  if (!ok) return false;
  try {
    await api.post(runUrl(run.run_id, "/restart"), { confirm: true });
    toast(`${name} is starting again from step 0.`, { kind: "success", timeout: 4000 });
    return true;
  } catch (err) {
    reportError(err, "Cannot start again");
    return false;
  }
}

export async function stopRun(run) {
  try {
    await api.post(runUrl(run.run_id, "/stop"), {});
    toast("Stopping: the trainer finishes its step and writes a checkpoint.", { timeout: 5000 });
    return true;
  } catch (err) {
    reportError(err, "Cannot stop");
    return false;
  }
}

export async function deleteRun(run) {
  const name = run.name || run.run_id;
  const ok = await confirmDialog({
    title: `Delete “${name}”?`,
    body: [
      "This removes the run's folder: its checkpoints, final model, metrics and log.",
      "It cannot be undone. Exported models outside the run folder are kept.",
    ],
    confirmLabel: "Delete run",
    danger: true,
  });
  if (!ok) return false;
  try {
    await api.del(runUrl(run.run_id), { confirm: true });
    toast(`${name} deleted.`, { timeout: 4000 });
    return true;
  } catch (err) {
    reportError(err, "Cannot delete");
    return false;
  }
}
