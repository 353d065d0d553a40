/**
 * The Playground: continue a prompt with one model, or two side by side with the same seed,
 * streamed token by token over Socket.IO. Used on /playground and on each run's page.
 *
 *   mountPlayground(root, {runId?, checkpoint?}) -> {setModel(ref)}
 *       Builds the Playground inside `root`. `runId`/`checkpoint` preselect a run's model.
 *
 * The server side is web/evaluation.py. Socket.IO: emit `eval_generate {model, compare?,
 * prompt, max_tokens, temp, top_p, seed}` (ack {job_id} or {error, field}); then
 * live.js followJob follows that job (`eval_lane`, `eval_token`, `eval_lane_end`,
 * `eval_result`, `eval_error`; rejoined after a reconnect); `eval_stop {job_id}` ends it
 * early. Model choices: GET /api/eval/models.
 * Every value from the server is rendered as text (h()), never as HTML.
 */
import { api, reportError } from "./api.js";
import { $, fmt, h, replace } from "./dom.js";
import { followJob, getSocket } from "./live.js";
import { pickPath } from "./picker.js";

const SETTINGS = [
  { name: "max_tokens", label: "Max tokens", value: 100, min: 1, max: 4096, step: 1 },
  { name: "temp", label: "Temperature", value: 0, min: 0, max: 5, step: 0.05, help: "0: greedy" },
  { name: "top_p", label: "Top-p", value: 1, min: 0.01, max: 1, step: 0.01 },
  { name: "seed", label: "Seed", value: 0, min: 0, max: 2147483647, step: 1 },
];

/** "run:<run_id>:<checkpoint>" or "path:<path>" <-> {run_id, checkpoint} / {path}. */
export function refValue(ref) {
  return ref.path ? `path:${ref.path}` : `run:${ref.run_id}:${ref.checkpoint}`;
}
export function parseRef(value) {
  if (!value) return null;
  if (value.startsWith("path:")) return { path: value.slice(5) };
  const [, runId, checkpoint] = value.match(/^run:([^:]+):(.+)$/) || [];
  return runId ? { run_id: runId, checkpoint } : null;
}

export async function loadModelChoices() {
  return api.get("/api/eval/models");
}

/** Fill a <select> with every run's base/checkpoints/final and the workspace's model folders. */
export function fillModelSelect(select, choices, selected) {
  const groups = [];
  for (const run of choices.runs || []) {
    groups.push(
      h(
        "optgroup",
        { label: `Run ${run.run_id} (${run.fine_tune_type})` },
        run.choices.map((c) =>
          h("option", { value: refValue({ run_id: run.run_id, checkpoint: c.checkpoint }), text: c.label })
        )
      )
    );
  }
  if ((choices.folders || []).length) {
    groups.push(
      h(
        "optgroup",
        { label: "Model folders" },
        choices.folders.map((f) => h("option", { value: refValue({ path: f.path }), text: f.label }))
      )
    );
  }
  replace(select, groups);
  if (selected && [...select.options].some((o) => o.value === selected)) select.value = selected;
  return select;
}

function settingInput(spec) {
  const id = `pg-${spec.name}-${Math.random().toString(36).slice(2, 7)}`;
  return h(
    "label",
    { class: "pg-setting", for: id },
    h("span", { class: "pg-setting-label", text: spec.label }),
    h("input", {
      id,
      class: "input",
      type: "number",
      name: spec.name,
      value: String(spec.value),
      attrs: { min: spec.min, max: spec.max, step: spec.step, inputmode: "decimal" },
    }),
    spec.help ? h("span", { class: "faint pg-setting-help", text: spec.help }) : null,
    h("span", { class: "field-error", dataset: { errorFor: spec.name }, attrs: { "aria-live": "polite" } })
  );
}

function laneBox(lane) {
  return h(
    "section",
    { class: "pg-lane card", dataset: { lane: String(lane) }, "aria-label": `Output ${lane + 1}` },
    h(
      "div",
      { class: "card-head" },
      h("h3", { class: "card-title pg-lane-label", text: lane === 0 ? "Model" : "Compared model" }),
      h("span", { class: "spacer" }),
      h("span", { class: "faint pg-lane-stats" })
    ),
    h(
      "pre",
      { class: "pg-output", attrs: { "aria-live": "polite" } },
      h("span", { class: "pg-prompt" }),
      h("span", { class: "pg-text" })
    )
  );
}

export function mountPlayground(root, { runId = null, checkpoint = null } = {}) {
  const modelSelect = h("select", { class: "select", name: "model", "aria-label": "Model" });
  const compareSelect = h("select", { class: "select", name: "compare", "aria-label": "Compared model", disabled: true });
  const compareToggle = h("input", { type: "checkbox", name: "side_by_side" });
  const prompt = h("textarea", {
    class: "textarea pg-prompt-input",
    name: "prompt",
    rows: 5,
    placeholder: "Type the beginning of a text for the model to continue…",
    "aria-label": "Prompt",
  });
  // Any model folder inside the console's browse roots, through the shared folder picker.
  const browse = h("button", { class: "btn", type: "button", name: "browse_model", text: "Folder…" });
  browse.addEventListener("click", async () => {
    const path = await pickPath({ title: "Choose a model folder", kind: "model" });
    if (!path) return;
    for (const select of [modelSelect, compareSelect]) {
      const value = refValue({ path });
      if (![...select.options].some((o) => o.value === value)) {
        select.appendChild(h("option", { value, text: path }));
      }
    }
    modelSelect.value = refValue({ path });
  });
  const generate = h("button", { class: "btn btn-primary", type: "submit", name: "generate", text: "Generate" });
  const stop = h("button", { class: "btn", type: "button", name: "stop", text: "Stop", disabled: true });
  const status = h("span", { class: "faint pg-status", role: "status" });
  const lanes = [laneBox(0), laneBox(1)];
  lanes[1].hidden = true;

  const form = h(
    "form",
    { class: "pg-form stack", novalidate: true },
    h(
      "div",
      { class: "pg-models" },
      h(
        "label",
        { class: "pg-model" },
        h("span", { class: "pg-setting-label", text: "Model" }),
        h("span", { class: "field-control-row" }, modelSelect, browse),
        h("span", { class: "field-error", dataset: { errorFor: "model" } })
      ),
      h("label", { class: "check pg-compare-toggle" }, compareToggle, h("span", { text: "Side by side" })),
      h("label", { class: "pg-model" }, h("span", { class: "pg-setting-label", text: "Compare with" }), compareSelect,
        h("span", { class: "field-error", dataset: { errorFor: "compare" } }))
    ),
    h(
      "label",
      { class: "pg-model" },
      h("span", { class: "pg-setting-label", text: "Prompt" }),
      prompt,
      h("span", { class: "field-error", dataset: { errorFor: "prompt" } })
    ),
    h("div", { class: "pg-settings" }, SETTINGS.map(settingInput)),
    h("div", { class: "row" }, generate, stop, status)
  );
  replace(root, h("div", { class: "playground stack" }, form, h("div", { class: "pg-lanes" }, lanes)));

  const socket = getSocket();
  let jobId = null;

  function clearErrors() {
    for (const el of root.querySelectorAll("[data-error-for]")) el.textContent = "";
    for (const el of root.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }
  function showError(message, field) {
    const slot = field && root.querySelector(`[data-error-for="${field}"]`);
    if (slot) {
      slot.textContent = message;
      const control = form.elements[field];
      if (control) control.setAttribute("aria-invalid", "true");
    } else {
      root.querySelector(".pg-error")?.remove();
      form.appendChild(h("p", { class: "field-error pg-error", role: "alert", text: message }));
    }
  }
  function setRunning(running) {
    generate.disabled = running;
    stop.disabled = !running;
    root.dataset.running = running ? "true" : "false";
  }

  const handlers = {
    eval_lane(msg) {
      $(".pg-lane-label", lanes[msg.lane]).textContent = msg.label;
    },
    eval_progress(msg) {
      status.textContent = msg.message || "";
    },
    eval_token(msg) {
      $(".pg-text", lanes[msg.lane]).append(msg.text);
      status.textContent = `Generating… ${msg.n} tokens`;
    },
    eval_lane_end(msg) {
      const lane = lanes[msg.lane];
      lane.dataset.finish = msg.finish_reason;
      $(".pg-lane-stats", lane).textContent =
        `${fmt.int(msg.generation_tokens)} tokens · ${fmt.num(msg.tokens_per_second)} tok/s · ${msg.finish_reason}`;
    },
    eval_result(msg) {
      setRunning(false);
      status.textContent = msg.stopped ? "Stopped." : "Done.";
      root.dataset.done = "true";
      jobId = null;
    },
    eval_error(msg) {
      setRunning(false);
      jobId = null;
      status.textContent = "";
      const field = msg.field === "model" && msg.lane === 1 ? "compare" : msg.field;
      showError(msg.error, field);
    },
  };
  // The job's events through followJob: rejoined after a reconnect with the last seq, so a
  // dropped connection loses no token and repeats none.
  let following = null;
  function follow(id) {
    if (following) following.stop();
    following = followJob(id, {
      onEvent(name, msg) {
        if (id === jobId && handlers[name]) handlers[name](msg);
      },
    });
  }

  compareToggle.addEventListener("change", () => {
    compareSelect.disabled = !compareToggle.checked;
    lanes[1].hidden = !compareToggle.checked;
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearErrors();
    root.querySelector(".pg-error")?.remove();
    const body = { model: parseRef(modelSelect.value), prompt: prompt.value };
    if (compareToggle.checked) body.compare = parseRef(compareSelect.value);
    for (const spec of SETTINGS) body[spec.name] = form.elements[spec.name].value;
    for (const lane of lanes) {
      $(".pg-prompt", lane).textContent = prompt.value;
      $(".pg-text", lane).textContent = "";
      $(".pg-lane-stats", lane).textContent = "";
      delete lane.dataset.finish;
    }
    delete root.dataset.done;
    setRunning(true);
    status.textContent = "Starting…";
    socket.timeout(15000).emit("eval_generate", body, (err, reply) => {
      if (err) {
        setRunning(false);
        showError("the console did not answer; is it still running?", null);
        return;
      }
      if (reply && reply.error) {
        setRunning(false);
        status.textContent = "";
        showError(reply.error, reply.field);
        return;
      }
      jobId = reply.job_id;
      root.dataset.jobId = jobId;
      follow(jobId); // replays from the first event: nothing said before this ack is lost
    });
  });

  stop.addEventListener("click", () => {
    if (!jobId) return;
    stop.disabled = true;
    status.textContent = "Stopping…";
    socket.emit("eval_stop", { job_id: jobId });
  });

  const preselect = runId ? refValue({ run_id: runId, checkpoint: checkpoint || "final" }) : null;
  loadModelChoices()
    .then((choices) => {
      fillModelSelect(modelSelect, choices, preselect);
      // Side by side starts as base vs the chosen model: what did training change?
      const base = runId ? refValue({ run_id: runId, checkpoint: "base" }) : null;
      fillModelSelect(compareSelect, choices, base);
      if (runId && !checkpoint) {
        const run = (choices.runs || []).find((r) => r.run_id === runId);
        const last = run && run.choices[run.choices.length - 1];
        if (last) modelSelect.value = refValue({ run_id: runId, checkpoint: last.checkpoint });
      }
      root.dataset.ready = "true";
    })
    .catch((err) => reportError(err, "Could not list the models"));

  return {
    setModel(ref) {
      modelSelect.value = refValue(ref);
    },
  };
}

// On /playground itself: mount into #playground, preselecting ?run_id=&checkpoint=.
const pageRoot = document.getElementById("playground");
if (pageRoot && document.body.dataset.page === "playground") {
  const params = new URLSearchParams(location.search);
  mountPlayground(pageRoot, { runId: params.get("run_id"), checkpoint: params.get("checkpoint") });
}
