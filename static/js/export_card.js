/**
 * The run page's export card (mounted by evaluation.js): pick a checkpoint, a format
 * (model folder, adapter folder for LoRA/DoRA runs, GGUF), the bits (4 or 8, with a group
 * size) and a destination; POST /api/eval/export starts an evaluation worker whose
 * progress (eval_progress, eval_result, eval_error over Socket.IO) is shown here; the
 * result says where the export went, its size, the perplexity of a quantized export next
 * to the unquantized model's, and the command that loads it.
 *
 *   mountExportCard(root, runId, {onDone}) -> {setCheckpoints(names), setLora(bool), open(name)}
 *
 * A folder that holds an earlier export is replaced only after a confirmation (409 with
 * field "overwrite"). The page's last export job of this run is shown again on reload.
 */
import { api, reportError } from "./api.js";
import { confirmDialog } from "./dialog.js";
import { $, fmt, h, replace } from "./dom.js";
import { followJob } from "./live.js";

const FORMATS = [
  ["model", "Model folder (mlx_lm.load)"],
  ["adapter", "Adapter folder (LoRA/DoRA only)"],
  ["gguf", "GGUF file, float16 (llama family)"],
];

function labelled(id, text, control) {
  return h("div", { class: "export-field" }, h("label", { for: id, text }), control);
}

function perplexityLine(measured) {
  if (!measured || !measured.quantized || !measured.unquantized) return null;
  const q = measured.quantized.perplexity;
  const u = measured.unquantized.perplexity;
  const change = ((q / u - 1) * 100).toFixed(2);
  return `${measured.data_label}: ${fmt.num(q, 5)} quantized · ${fmt.num(u, 5)} unquantized (${change >= 0 ? "+" : ""}${change}%)`;
}

export function mountExportCard(root, runId, { onDone = () => {} } = {}) {
  const ids = (name) => `export-${name}`;
  const checkpoint = h("select", { class: "select", id: ids("checkpoint"), name: "checkpoint" });
  const format = h(
    "select",
    { class: "select", id: ids("format"), name: "format" },
    FORMATS.map(([value, text]) => h("option", { value, text, hidden: value === "adapter", disabled: value === "adapter" }))
  );
  const bits = h(
    "select",
    { class: "select", id: ids("quantize"), name: "quantize" },
    h("option", { value: "", text: "Not quantized" }),
    h("option", { value: "4", text: "4 bits" }),
    h("option", { value: "8", text: "8 bits" })
  );
  const groupSize = h(
    "select",
    { class: "select", id: ids("group-size"), name: "group_size" },
    [32, 64, 128].map((g) => h("option", { value: String(g), text: String(g), selected: g === 64 }))
  );
  const measure = h("input", { type: "checkbox", id: ids("perplexity"), name: "perplexity", checked: true });
  const measureRow = h(
    "label",
    { class: "check export-measure", for: ids("perplexity") },
    measure,
    h("span", { text: "Measure perplexity on the validation set, quantized and unquantized" })
  );
  const dest = h("input", {
    class: "input mono",
    id: ids("dest"),
    name: "dest",
    placeholder: "default: exports/<run>-<checkpoint>[-4bit] in the workspace",
  });
  const go = h("button", { class: "btn btn-primary", type: "submit", name: "export", text: "Export" });
  const error = h("p", { class: "field-error", id: ids("error"), role: "alert", hidden: true });
  const bar = h("progress", { max: 1, value: 0, "aria-label": "Export progress" });
  const message = h("span", { class: "faint", id: ids("message") });
  const stop = h("button", { class: "btn btn-sm", type: "button", name: "stop_export", text: "Stop", hidden: true });
  const status = h("div", { class: "export-status", id: ids("status"), hidden: true }, bar, message, stop);
  const result = h("dl", { class: "kv export-result", id: ids("result"), hidden: true });
  const form = h(
    "form",
    { class: "export-form", id: ids("form"), novalidate: true },
    labelled(ids("checkpoint"), "Checkpoint", checkpoint),
    labelled(ids("format"), "Format", format),
    labelled(ids("quantize"), "Bits", bits),
    labelled(ids("group-size"), "Group size", groupSize),
    labelled(ids("dest"), "Destination", dest),
    h("div", { class: "export-actions" }, measureRow, go)
  );
  replace(
    root,
    h(
      "section",
      { class: "card section", id: "export-card", "aria-labelledby": ids("title") },
      h(
        "div",
        { class: "card-head" },
        h("h2", { id: ids("title"), class: "card-title", text: "Export" }),
        h("span", { class: "spacer" }),
        h("span", { class: "faint", text: "a folder mlx-lm loads (quantized or not), an adapter, or a GGUF file" })
      ),
      h("div", { class: "card-body" }, form, error, status, result)
    )
  );

  let jobId = null;

  function applyFormat() {
    const model = format.value === "model";
    bits.disabled = !model;
    if (!model) bits.value = "";
    groupSize.disabled = !model || !bits.value;
    measureRow.hidden = !model || !bits.value;
  }
  format.addEventListener("change", applyFormat);
  bits.addEventListener("change", applyFormat);
  applyFormat();

  function showError(text) {
    error.textContent = text;
    error.hidden = !text;
  }

  function request(overwrite = false) {
    const body = { model: { run_id: runId, checkpoint: checkpoint.value }, format: format.value };
    if (bits.value) {
      body.quantize = Number(bits.value);
      body.group_size = Number(groupSize.value);
      body.perplexity = measure.checked;
    }
    if (dest.value.trim()) body.dest = dest.value.trim();
    if (overwrite) body.overwrite = true;
    return body;
  }

  async function start(overwrite = false) {
    showError("");
    let res;
    try {
      res = await api.post("/api/eval/export", request(overwrite));
    } catch (err) {
      if (err.status === 409 && err.field === "overwrite") {
        // The server names the folder it would replace (an earlier export, nothing else).
        const folder = err.body.dest || dest.value.trim() || "the destination folder";
        const replaceIt = await confirmDialog({
          title: "Replace the existing export?",
          body: [
            h("p", null, "The folder ", h("code", { class: "mono", text: folder }), " holds an earlier export."),
            `Everything in ${folder} will be deleted and replaced by this export once it is complete.`,
          ],
          confirmLabel: "Replace",
          danger: true,
        });
        if (replaceIt) start(true);
        return;
      }
      if (err.status === 400 || err.status === 404) showError(err.field ? `${err.field}: ${err.message}` : err.message);
      else reportError(err, "Cannot export");
      return;
    }
    follow(res.job_id);
  }

  function follow(id) {
    jobId = id;
    go.disabled = true;
    result.hidden = true;
    status.hidden = false;
    status.dataset.state = "running";
    stop.hidden = false;
    bar.removeAttribute("value");
    message.textContent = "starting…";
    followJob(id, {
      events: ["eval_progress", "eval_result", "eval_error"],
      onEvent(name, msg) {
        if (msg.job_id && msg.job_id !== jobId) return;
        if (name === "eval_progress") {
          message.textContent = msg.message || "";
          if (msg.total) {
            bar.max = msg.total;
            bar.value = msg.done;
          } else bar.removeAttribute("value");
        } else if (name === "eval_result") finish(msg.stopped ? null : msg, msg.stopped ? "stopped" : "");
        else finish(null, msg.field ? `${msg.field}: ${msg.error}` : msg.error);
      },
    });
  }

  function finish(res, problem) {
    go.disabled = false;
    stop.hidden = true;
    bar.max = 1;
    bar.value = 1;
    status.dataset.state = res ? "done" : "failed";
    message.textContent = res ? `exported to ${res.path}` : problem;
    if (res) {
      showResult(res);
      onDone(res);
    }
  }

  function showResult(res) {
    const entries = [
      ["Folder", h("code", { class: "mono", text: res.path })],
      ["Format", res.format + (res.quantization ? ` · ${res.quantization.bits}-bit, group size ${res.quantization.group_size}` : "")],
      ["Size", fmt.bytes(res.size)],
    ];
    const ppl = perplexityLine(res.perplexity);
    if (ppl) entries.push(["Perplexity", ppl]);
    if (res.load) entries.push(["Python", h("code", { class: "mono", text: res.load })]);
    const command = h("pre", { class: "codeblock export-command", text: res.command });
    entries.push([
      "Command",
      h(
        "div",
        { class: "export-command-row" },
        command,
        h("button", {
          class: "btn btn-sm",
          type: "button",
          text: "Copy",
          on: { click: () => navigator.clipboard && navigator.clipboard.writeText(res.command).catch(() => {}) },
        })
      ),
    ]);
    replace(
      result,
      entries.map(([k, v]) => [h("dt", { text: k }), h("dd", { dataset: { key: k.toLowerCase() } }, v)])
    );
    result.hidden = false;
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!checkpoint.value) {
      showError("no checkpoint to export yet");
      return;
    }
    start(false);
  });
  stop.addEventListener("click", () => {
    if (jobId) api.post(`/api/eval/jobs/${encodeURIComponent(jobId)}/stop`).catch((e) => reportError(e));
  });

  // After a reload: this run's latest export job, still running or done.
  api
    .get(`/api/eval/jobs?run_id=${encodeURIComponent(runId)}`)
    .then(({ jobs }) => {
      const last = (jobs || []).filter((j) => j.kind === "export").pop();
      if (!last || jobId) return;
      if (last.state === "running") follow(last.job_id);
      else if (last.state === "done" && last.result) {
        status.hidden = false;
        status.dataset.state = "done";
        bar.value = 1;
        message.textContent = `exported to ${last.result.path}`;
        showResult(last.result);
      }
    })
    .catch(() => {});

  return {
    /** A LoRA/DoRA run also offers its adapter folder. */
    setLora(lora) {
      const option = format.querySelector("option[value=adapter]");
      option.hidden = option.disabled = !lora;
      if (!lora && format.value === "adapter") format.value = "model";
      applyFormat();
    },
    setCheckpoints(names) {
      const current = checkpoint.value;
      replace(checkpoint, names.map((n) => h("option", { value: n, text: n })));
      if (names.includes(current)) checkpoint.value = current;
      else if (names.includes("final")) checkpoint.value = "final";
    },
    open(name) {
      if ([...checkpoint.options].some((o) => o.value === name)) checkpoint.value = name;
      $("#export-card").scrollIntoView({ behavior: "smooth", block: "start" });
      format.focus();
    },
  };
}
