/**
 * The run page's evaluation panel (mounts into <section id="evaluation" data-run-id>):
 *
 * - the checkpoint table from GET /api/runs/<run_id>/evaluations: step, validation loss,
 *   each extra held-out set's loss (the forgetting monitor), size, stored perplexities
 *   (a quantized export's beside the model's, e.g. "val 41.2 · val 4-bit 41.9"), the best
 *   checkpoint marked; per row: Playground, Perplexity…, Export… (the export card);
 * - the export card (static/js/export_card.js): format, bits, destination, progress,
 *   size, perplexities and the command that loads the result;
 * - evaluation jobs with live progress (live.js followJob: `eval_progress`, `eval_result`,
 *   `eval_error`);
 * - the Playground for this run (static/js/playground.js).
 *
 * Refreshes when the run reports a new checkpoint or evaluation (`run_metrics`).
 */
import { api, reportError, runUrl } from "./api.js";
import { confirmDialog } from "./dialog.js";
import { $, debounce, fmt, h, replace } from "./dom.js";
import { mountExportCard } from "./export_card.js";
import { followJob, getSocket } from "./live.js";
import { mountPlayground } from "./playground.js";
import { toast } from "./toast.js";

function lossCell(value) {
  return h("td", { class: "right num", text: fmt.loss(value) });
}

function perplexitySummary(records) {
  // The newest result per text and model, e.g. "val 41.2 · val 4-bit 41.9 · general 188":
  // a quantized export's (its `quantization`) beside the model's own.
  const latest = new Map();
  for (const r of records || []) {
    const q = r.quantization ? ` ${r.quantization.bits}-bit` : "";
    latest.set(`${r.data_label}${q}`, r);
  }
  return [...latest.entries()].map(([label, r]) => `${label} ${fmt.num(r.perplexity, 4)}`).join(" · ");
}

function textChoice(sets) {
  const id = `ppl-${Math.random().toString(36).slice(2, 7)}`;
  const select = h(
    "select",
    { class: "select", id, name: "data_set" },
    sets.map((s) => h("option", { value: s, text: s === "val" ? "Validation set (val)" : `Held-out set: ${s}` })),
    h("option", { value: "", text: "A text file…" })
  );
  const path = h("input", {
    class: "input mono",
    name: "data_path",
    placeholder: "corpora/my-text.txt (inside the workspace or an allowed folder)",
    hidden: true,
    "aria-label": "Text file",
  });
  select.addEventListener("change", () => {
    path.hidden = select.value !== "";
  });
  const samples = h("input", { class: "input", type: "number", name: "num_samples", value: "64", min: "-1", "aria-label": "Sequences" });
  const body = h(
    "div",
    { class: "ev-form" },
    h("label", { for: id, text: "Text to evaluate" }),
    select,
    path,
    h("label", { class: "pg-setting" }, h("span", { class: "pg-setting-label", text: "Sequences (-1: all)" }), samples)
  );
  return { body, read: () => ({ set: select.value, path: path.value.trim(), num_samples: samples.value }) };
}

export function mountEvaluation(root, runId) {
  const table = h("table", { class: "table", id: "eval-table" });
  const jobs = h("div", { class: "ev-jobs", id: "eval-jobs", "aria-live": "polite" });
  const playgroundRoot = h("div", { id: "run-playground" });
  const exportRoot = h("div", { id: "run-export" });
  replace(
    root,
    h(
      "section",
      { class: "card section", "aria-labelledby": "eval-title" },
      h(
        "div",
        { class: "card-head" },
        h("h2", { id: "eval-title", class: "card-title", text: "Checkpoints: losses, perplexity, export" }),
        h("span", { class: "spacer" }),
        h("span", { class: "faint", id: "eval-sets" })
      ),
      h("div", { class: "table-wrap" }, table),
      jobs
    ),
    exportRoot,
    h(
      "section",
      { class: "card section", "aria-labelledby": "pg-title" },
      h("div", { class: "card-head" }, h("h2", { id: "pg-title", class: "card-title", text: "Playground" })),
      h("div", { class: "card-body" }, playgroundRoot)
    )
  );
  const state = { sets: ["val"], rows: [], fineTuneType: null };
  const playground = mountPlayground(playgroundRoot, { runId });
  const exporter = mountExportCard(exportRoot, runId, { onDone: (res) => onExported(res) });
  modelKind().then((kind) => exporter.setLora(kind !== "full"));

  function onExported(res) {
    toast(`${fmt.bytes(res.size)} written to ${res.path}`, { kind: "success", title: "Export complete", timeout: 12000 });
    if (res.perplexity) refresh(); // the perplexities are stored with the run
  }

  async function refresh() {
    try {
      const res = await api.get(runUrl(runId, "/evaluations"));
      state.sets = res.sets || ["val"];
      state.rows = res.rows || [];
      exporter.setCheckpoints(state.rows.map((r) => r.checkpoint));
      render();
    } catch (err) {
      if (err.status !== 404) reportError(err, "Cannot read the checkpoint table");
    }
  }
  const refreshSoon = debounce(refresh, 800);

  function render() {
    const extra = state.sets.filter((s) => s !== "val");
    $("#eval-sets", root).textContent = extra.length ? `held-out sets: ${extra.join(", ")}` : "";
    const head = h(
      "thead",
      null,
      h(
        "tr",
        null,
        h("th", { scope: "col", text: "Checkpoint" }),
        h("th", { scope: "col", class: "right", text: "Step" }),
        h("th", { scope: "col", class: "right", text: "Val loss" }),
        extra.map((s) => h("th", { scope: "col", class: "right", text: `${s} loss` })),
        h("th", { scope: "col", text: "Perplexity" }),
        h("th", { scope: "col", class: "right", text: "Size" }),
        h("th", { scope: "col", class: "right", text: "" })
      )
    );
    const body = h(
      "tbody",
      null,
      state.rows.length
        ? state.rows.map((row) =>
            h(
              "tr",
              { dataset: { checkpoint: row.checkpoint, best: row.best ? "true" : "false" } },
              h(
                "td",
                null,
                h("span", { class: "mono", text: row.checkpoint }),
                row.best ? h("span", { class: "badge ev-best", dataset: { state: "finished" }, text: "best" }) : null
              ),
              h("td", { class: "right num", text: fmt.int(row.step) }),
              lossCell(row.losses.val),
              extra.map((s) => lossCell(row.losses[s])),
              h("td", { class: "num", text: perplexitySummary(row.perplexity) || "–" }),
              h("td", { class: "right num", text: fmt.bytes(row.size) }),
              h(
                "td",
                null,
                h(
                  "div",
                  { class: "ev-actions" },
                  h("button", {
                    class: "btn btn-sm",
                    type: "button",
                    text: "Playground",
                    on: {
                      click: () => {
                        playground.setModel({ run_id: runId, checkpoint: row.checkpoint });
                        playgroundRoot.scrollIntoView({ behavior: "smooth", block: "start" });
                      },
                    },
                  }),
                  h("button", { class: "btn btn-sm", type: "button", text: "Perplexity…", on: { click: () => askPerplexity(row) } }),
                  h("button", { class: "btn btn-sm", type: "button", text: "Export…", on: { click: () => exporter.open(row.checkpoint) } })
                )
              )
            )
          )
        : h("tr", null, h("td", { colspan: 6 + extra.length, class: "faint", text: "No checkpoint yet" }))
    );
    replace(table, head, body);
  }

  function showJob(title, jobId) {
    const bar = h("progress", { max: 1, value: 0, "aria-label": title });
    const text = h("span", { class: "faint", text: "starting…" });
    const stopBtn = h("button", {
      class: "btn btn-sm",
      type: "button",
      text: "Stop",
      on: { click: () => api.post(`/api/eval/jobs/${encodeURIComponent(jobId)}/stop`).catch((e) => reportError(e)) },
    });
    const line = h("div", { class: "ev-job", dataset: { jobId } }, h("strong", { text: title }), bar, text, stopBtn);
    jobs.appendChild(line);
    return {
      progress(msg) {
        text.textContent = msg.message || "";
        if (msg.total) {
          bar.max = msg.total;
          bar.value = msg.done;
        }
      },
      end(message, kind) {
        text.textContent = message;
        line.dataset.state = kind;
        stopBtn.remove();
        bar.value = bar.max;
        setTimeout(() => line.remove(), 15000);
      },
    };
  }

  async function askPerplexity(row) {
    const choice = textChoice(state.sets);
    const ok = await confirmDialog({
      title: `Perplexity of ${row.checkpoint}`,
      body: [choice.body],
      confirmLabel: "Evaluate",
    });
    if (!ok) return;
    const picked = choice.read();
    const body = {
      model: { run_id: runId, checkpoint: row.checkpoint },
      data: picked.set ? { set: picked.set } : { path: picked.path },
      num_samples: picked.num_samples,
    };
    try {
      const res = await api.post("/api/eval/perplexity", body);
      const view = showJob(`Perplexity · ${row.checkpoint} · ${picked.set || picked.path}`, res.job_id);
      followJob(res.job_id, {
        events: ["eval_progress", "eval_result", "eval_error"],
        onEvent(name, msg) {
          if (name === "eval_progress") view.progress(msg);
          else if (name === "eval_result") {
            view.end(msg.stopped ? "stopped" : `perplexity ${fmt.num(msg.perplexity, 4)} (loss ${fmt.loss(msg.loss)})`, "done");
            refresh();
          } else view.end(msg.error, "failed");
        },
      });
    } catch (err) {
      reportError(err, "Cannot start the perplexity job");
    }
  }

  async function modelKind() {
    // The run record says it (its config's fine_tune_type; the registry's default is full).
    if (state.fineTuneType) return state.fineTuneType;
    try {
      const { run } = await api.get(runUrl(runId));
      state.fineTuneType = run.fine_tune_type || "full";
    } catch {
      return "full";
    }
    return state.fineTuneType;
  }

  getSocket().on("run_metrics", (msg) => {
    if (msg && msg.run_id === runId && (msg.rows || []).some((r) => r.event === "checkpoint" || r.event === "eval" || r.event === "status")) {
      refreshSoon();
    }
  });
  refresh();
  return { refresh };
}

const mount = document.getElementById("evaluation");
if (mount && mount.dataset.runId) mountEvaluation(mount, mount.dataset.runId);
