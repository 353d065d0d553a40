// The New run page: the registry-built form, presets, live validation next to each field,
// the data report and corpus preview, the learning-rate plot, the YAML and command line,
// Load YAML, and Start now / Add to queue.
import { h, $, replace, fmt, debounce } from "./dom.js";
import { api, reportError, runUrl } from "./api.js";
import { toast } from "./toast.js";
import { FieldForm } from "./form.js";
import { LrPlot } from "./lr_schedule.js";
import { pickPath } from "./picker.js";
import { addHostsCheck } from "./hosts_check.js";
import { SourcesTable } from "./sources.js";

const EP = {
  fields: "/api/fields",
  validate: "/api/config/validate",
  presets: "/api/presets",
  dataReport: "/api/data/report",
  parseYaml: "/api/ui/parse_yaml",
  runs: "/api/runs",
};
const DEFAULT_ITERS = 1000; // training/contract/config.py DEFAULT_ITERS: the budget when none is given

const state = {
  form: null,
  presets: [],
  normalized: null, // the server's normalized config from the last validation
  errors: [],
  report: null,
  reportPath: null,
  yaml: "",
  cli: "",
  fields: [],
  fieldNames: new Set(),
  throughput: new Map(), // model -> median tokens/s of its earlier runs
  seq: 0,
};

async function main() {
  const params = new URLSearchParams(location.search);
  let fields;
  try {
    [{ fields }, state.presets] = await Promise.all([
      api.get(EP.fields),
      api.get(EP.presets).then((r) => r.presets || [], () => []),
    ]);
  } catch (err) {
    replace($("#groups"), h("div", { class: "callout callout-bad", text: `Cannot load the settings: ${err.message}` }));
    return;
  }
  state.fields = fields;
  state.fieldNames = new Set(fields.map((f) => f.name));
  state.form = new FieldForm($("#groups"), fields, { onChange: onFormChange });
  addPickers(fields);
  addHostsCheck(() => state.form.values(), (errors) => state.form.showErrors(errors));
  state.sources = new SourcesTable(state.form.controlFor("data"), state.form.controlFor("eval_sets"));
  renderPresets();
  wireConfigPanel();
  wireLaunch();
  state.lr = new LrPlot($("#lr-chart"));
  loadThroughput();

  const clone = params.get("clone");
  const carry = params.get("continue");
  const presetId = params.get("preset");
  if (carry) await loadClone(carry, true);
  else if (clone) await loadClone(clone);
  else {
    // The demo preset is the default: with it, Start works offline straight away.
    const preset = state.presets.find((p) => p.name === (presetId || "demo"));
    if (preset && preset.config) applyPreset(preset, false);
  }
  refresh();
}

// -- presets, clone, YAML -------------------------------------------------------------------

function renderPresets() {
  const box = $("#presets");
  if (!state.presets.length) return;
  replace(
    box,
    h("span", { class: "faint", text: "Presets" }),
    state.presets.map((p) =>
      h("button", {
        class: "btn btn-sm",
        type: "button",
        text: presetLabel(p),
        title: p.error || (p.config ? p.title : `${p.title}: ${p.state || "not ready"}`),
        disabled: !p.config,
        dataset: { preset: p.name },
        on: { click: () => applyPreset(p, true) },
      })
    )
  );
}

function presetLabel(p) {
  const short = { demo: "Demo", lora: "LoRA", full: "Full fine-tune", mlx_lm_lora: "mlx-lm LoRA" };
  return short[p.name] || p.title || p.name;
}

// A preset or a YAML file says how to train; what to train (model and data) stays as
// picked when it leaves that out.
const KEEP = ["model", "data", "valid_data", "eval_sets"];

function fillForm(source) {
  const current = state.form.values();
  const config = { ...source };
  for (const key of KEEP) if (!(key in config) && key in current) config[key] = current[key];
  state.form.setValues(config);
  state.sources.load();
}

function applyPreset(preset, announce) {
  fillForm(preset.config);
  for (const b of document.querySelectorAll("[data-preset]")) {
    b.setAttribute("aria-pressed", String(b.dataset.preset === preset.name));
  }
  if (announce) toast(preset.title || preset.name, { title: `Preset: ${presetLabel(preset)}`, timeout: 4000 });
  refresh();
}

/** Clone & edit, or (carry) Continue training: the run's settings with init_from set to
 * it, so the new run starts from its trained weights or adapter with a fresh optimizer. */
async function loadClone(runId, carry = false) {
  try {
    const { config, name } = await api.get(runUrl(runId, "/config"));
    const values = { ...(config || {}) };
    if (carry) {
      values.init_from = runId;
      delete values.init_checkpoint;
    }
    state.form.setValues(values);
    state.sources.load();
    const label = name || runId;
    $("#f-name").value = carry ? `${label} (continued)` : `${label} (copy)`;
    if (carry) toast(`Starts from ${label}'s trained weights with a fresh optimizer. Set the new data and budget; warmup_steps re-warms the learning rate.`, { title: "Continue training" });
    else toast(`Settings copied from ${label}. Change what you need, then start.`, { title: "Clone & edit" });
  } catch (err) {
    reportError(err, "Cannot clone that run");
  }
}

async function loadYamlFile(file) {
  const text = await file.text();
  try {
    const res = await api.post(EP.parseYaml, { yaml: text });
    fillForm(res.config || {});
    for (const w of res.warnings || []) toast(w, { kind: "warning", title: "YAML" });
    toast(`${file.name} loaded.`, { kind: "success" });
    refresh();
  } catch (err) {
    reportError(err, `Cannot load ${file.name}`);
  }
}

// -- live validation and derived panels -----------------------------------------------------

const validateSoon = debounce(validate, 250);
const reportSoon = debounce(loadReport, 400);

function onFormChange() {
  validateSoon();
  reportSoon();
  updatePlan();
}

function refresh() {
  validate();
  loadReport();
}

async function validate() {
  const seq = ++state.seq;
  const config = state.form.values();
  let res;
  try {
    res = await api.post(EP.validate, { config });
  } catch (err) {
    if (err.status === 400 && err.body && Array.isArray(err.body.errors)) res = err.body;
    else return reportError(err, "Validation failed");
  }
  if (seq !== state.seq) return; // a newer edit is already being checked
  applyModelFacts(res.model);
  state.errors = res.errors || [];
  state.normalized = res.ok ? res.config : null;
  const unplaced = state.form.showErrors(state.errors);
  const box = $("#form-errors");
  box.hidden = !unplaced.length;
  replace(box, unplaced.length ? h("div", null, unplaced.map((e) => h("p", { text: e.field ? `${e.field}: ${e.message}` : e.message }))) : null);
  const warnings = res.warnings || [];
  $("#form-warnings").hidden = !warnings.length;
  replace($("#form-warnings"), h("div", null, warnings.map((w) => h("p", { text: w }))));
  const badge = $("#validity");
  badge.dataset.state = res.ok ? "finished" : "failed";
  badge.textContent = res.ok ? "Ready" : `${state.errors.length} to fix`;
  updatePlan();
  updateConfigText(res);
  showMemory(res.ok ? res.memory_estimate : null);
}

const MEMORY_PARTS = [
  ["weights", "Weights"],
  ["gradients", "Gradients"],
  ["optimizer_state", "Optimizer state"],
  ["activations", "Activations"],
  ["logits", "Logits"],
];

/** The peak memory the server estimates from the model's config.json, by part, against
 * this machine's memory; a warning when it will not fit. */
function showMemory(est) {
  const box = $("#memory-estimate");
  if (!est) return replace(box, null);
  const share = est.total / est.machine;
  const parts = h("dl", { class: "kv" }, MEMORY_PARTS.flatMap(([key, label]) => [h("dt", { text: label }), h("dd", { class: "num", text: fmt.bytes(est[key]) })]));
  const head = h("p", { dataset: { testid: "memory-total" }, text: `Estimated peak memory: ${fmt.bytes(est.total)} of ${fmt.bytes(est.machine)} (${Math.round(share * 100)}%)` });
  const warn = est.fits
    ? null
    : h("div", {
        class: "callout callout-bad",
        role: "alert",
        dataset: { testid: "memory-warning" },
        text: `This run will not fit: it needs about ${fmt.bytes(est.total)} and this machine has ${fmt.bytes(est.machine)}. Lower batch_size or max_seq_length, turn on grad_checkpoint, train fewer layers, or use lora.`,
      });
  replace(box, h("div", { class: "stack" }, [warn, head, parts].filter(Boolean)));
}

/** What the chosen model rules out (the server reads its config.json): quantized weights
 * cannot be fully fine-tuned, so `full` is disabled, with why and a way to LoRA. */
function applyModelFacts(model) {
  const quant = model && model.quantization;
  state.form.disableChoice("fine_tune_type", "full", Boolean(quant));
  if (!quant) return state.form.setNote("fine_tune_type");
  const select = state.form.controlFor("fine_tune_type");
  const what = [quant.bits && `${quant.bits}-bit`, quant.group_size && `group size ${quant.group_size}`].filter(Boolean).join(", ");
  const useLora = h("button", {
    class: "btn btn-sm",
    type: "button",
    text: "Use lora",
    on: {
      click: () => {
        select.value = "lora";
        select.dispatchEvent(new Event("change", { bubbles: true }));
      },
    },
  });
  state.form.setNote(
    "fine_tune_type",
    h("span", {
      text:
        `full is off: this model is quantized${what ? ` (${what})` : ""}, and quantized weights cannot be trained. ` +
        "Train lora (or dora) adapters on it, or pick a dequantized copy of the model (mlx_lm.convert --dequantize).",
    }),
    select.value === "full" ? useLora : null
  );
}

async function loadReport() {
  const data = state.sources.firstPath();
  const box = $("#data-report");
  if (!data) {
    state.report = null;
    replace(box, h("dt", { text: "Corpus" }), h("dd", { class: "faint", text: "Pick a corpus to see its report." }));
    $("#corpus-preview").textContent = "…";
    updatePlan();
    return;
  }
  if (data === state.reportPath && state.report) return updatePlan();
  state.reportPath = data;
  $("#data-status").textContent = "reading…";
  try {
    const { report } = await api.post(EP.dataReport, { path: data });
    if (state.reportPath !== data) return;
    state.report = report;
    $("#data-status").textContent = report.complete === false ? "extrapolated" : "";
    $("#corpus-preview").textContent = report.preview || "(empty)";
  } catch (err) {
    if (state.reportPath !== data) return;
    state.report = null;
    $("#data-status").textContent = "";
    $("#corpus-preview").textContent = "";
    replace(box, h("dt", { text: "Corpus" }), h("dd", { class: "field-error", text: err.message }));
    updatePlan();
    return;
  }
  updatePlan();
}

/** Steps, tokens and time this config plans, from the form and the data report. */
function plan() {
  const cfg = state.normalized || numericValues(state.form.values());
  const perStep = (cfg.batch_size || 0) * (cfg.grad_accumulation_steps || 1) * (cfg.max_seq_length || 0);
  const r = state.report;
  const corpusTokens = r ? r.tokens ?? r.tokens_estimate : null;
  const trainTokens = corpusTokens != null ? corpusTokens * (1 - (cfg.val_fraction ?? 0.05)) : null;
  const stepsPerEpoch = trainTokens && perStep ? Math.max(1, Math.floor(trainTokens / perStep)) : null;
  let steps = null;
  if (cfg.epochs) steps = stepsPerEpoch ? Math.ceil(cfg.epochs * stepsPerEpoch) : null;
  else if (cfg.train_tokens) steps = perStep ? Math.ceil(cfg.train_tokens / perStep) : null;
  else steps = cfg.iters || DEFAULT_ITERS;
  return { cfg, perStep, corpusTokens, stepsPerEpoch, steps, tokens: steps && perStep ? steps * perStep : null };
}

function updatePlan() {
  const p = plan();
  const epochs = p.steps && p.stepsPerEpoch ? p.steps / p.stepsPerEpoch : null;
  replace(
    $("#plan"),
    kv("Steps", fmt.int(p.steps)),
    kv("Tokens per step", fmt.int(p.perStep || null)),
    kv("Tokens to train", p.tokens ? `${fmt.compact(p.tokens)}${epochs ? ` · ${epochs.toFixed(2)} epochs` : ""}` : "–")
  );
  const r = state.report;
  if (r) {
    replace(
      $("#data-report"),
      kv("Corpus", r.path),
      kv("Files", fmt.int(r.files)),
      kv("Documents", fmt.int(r.documents)),
      kv("Size", fmt.bytes(r.bytes)),
      kv(r.estimated ? "Tokens (est.)" : "Tokens", fmt.compact(r.tokens ?? r.tokens_estimate)),
      kv("Steps per epoch", fmt.int(p.stepsPerEpoch)),
      kv("Estimated time", estimate(p))
    );
  }
  lrSoon(p);
}

// The schedule is computed by the console with the trainer's own code: one request per pause.
const lrSoon = debounce(async (p) => {
  if (!state.lr) return;
  $("#lr-summary").textContent = p.steps ? await state.lr.update(p.cfg, p.steps) : "";
}, 200);

/** Time at the throughput earlier runs of the same model reached (a rough guide: batch
 * size and sequence length change it); none before a first run. */
function estimate(p) {
  const tps = state.throughput.get(state.form.values().model);
  if (!p.tokens || !tps) return "after the first steps";
  return `≈ ${fmt.duration(p.tokens / tps)} at ${fmt.compact(tps)} tok/s (earlier runs)`;
}

async function loadThroughput() {
  try {
    const { runs } = await api.get(EP.runs);
    const byModel = new Map();
    for (const r of runs) {
      if (r.model && typeof r.tokens_per_second === "number" && r.tokens_per_second > 0) {
        byModel.set(r.model, [...(byModel.get(r.model) || []), r.tokens_per_second]);
      }
    }
    for (const [model, xs] of byModel) state.throughput.set(model, xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]);
    updatePlan();
  } catch {
    // Only the estimate is missing.
  }
}

function numericValues(values) {
  const out = {};
  for (const [k, v] of Object.entries(values)) {
    const x = typeof v === "string" && v.trim() !== "" ? Number(v) : v;
    out[k] = typeof x === "number" && Number.isFinite(x) ? x : v;
  }
  return out;
}

const kv = (k, v) => [h("dt", { text: k }), h("dd", { text: v })];

// -- YAML and command line -----------------------------------------------------------------

/** The YAML is the server's (exactly what the trainer would receive); the command line is
 * built from the registry's flags, with only the settings that differ from the defaults. */
function updateConfigText(res) {
  if (!res.ok) {
    state.yaml = state.cli = "";
    $("#config-yaml").textContent = "# Fix the settings marked in the form to see the config.";
    $("#config-cli").textContent = "# Fix the settings marked in the form to see the command.";
    return;
  }
  state.yaml = res.yaml || "";
  state.cli = commandLine(res.config);
  $("#config-yaml").textContent = state.yaml;
  $("#config-cli").textContent = state.cli;
}

function commandLine(nested) {
  const flat = flattenNested(nested);
  const lines = ["python -m training.continued_pretraining"];
  const add = (...parts) => lines.push(parts.map(shellQuote).join(" "));
  for (const f of state.fields) {
    const v = flat[f.name];
    if (v === undefined || v === null || JSON.stringify(v) === JSON.stringify(f.default)) continue;
    if (f.type === "bool") add(v ? f.flag : f.flag.replace(/^--/, "--no-"));
    else if (f.name === "eval_sets") for (const [k, p] of Object.entries(v)) add(f.flag, `${k}=${p}`);
    else if (f.type === "list") add(f.flag, v.join(","));
    else if (typeof v === "object") return `# A custom ${f.name} needs the YAML file:\npython -m training.continued_pretraining -c config.yaml`;
    else add(f.flag, String(v));
  }
  return lines.join(" \\\n    ");
}

function flattenNested(nested) {
  const out = {};
  for (const [k, v] of Object.entries(nested || {})) {
    if (v && typeof v === "object" && !Array.isArray(v) && !state.fieldNames.has(k)) {
      for (const [sub, x] of Object.entries(v)) out[`${k}.${sub}`] = x;
    } else out[k] = v;
  }
  return out;
}

function shellQuote(s) {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

function wireConfigPanel() {
  const tabs = [$("#tab-yaml"), $("#tab-cli")];
  const panels = [$("#config-yaml"), $("#config-cli")];
  const select = (i) => {
    tabs.forEach((t, j) => {
      t.setAttribute("aria-selected", String(i === j));
      t.tabIndex = i === j ? 0 : -1;
      panels[j].hidden = i !== j;
    });
    tabs[i].focus();
  };
  tabs.forEach((t, i) => {
    t.addEventListener("click", () => select(i));
    t.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") select((i + 1) % 2);
    });
  });
  const current = () => (panels[0].hidden ? { text: state.cli, name: "train.sh", type: "text/x-shellscript" } : { text: state.yaml, name: "config.yaml", type: "application/x-yaml" });
  $("#copy-config").addEventListener("click", async () => {
    const { text } = current();
    try {
      await navigator.clipboard.writeText(text);
      toast("Copied to the clipboard.", { kind: "success", timeout: 2500 });
    } catch {
      const sel = getSelection();
      sel.selectAllChildren(panels[0].hidden ? panels[1] : panels[0]);
      toast("Selected: press Ctrl+C (⌘C) to copy.", { timeout: 4000 });
    }
  });
  $("#download-config").addEventListener("click", () => {
    const { text, name, type } = current();
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = h("a", { href: url, download: name });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  });
  $("#load-yaml").addEventListener("click", () => $("#yaml-file").click());
  $("#yaml-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) loadYamlFile(file);
    e.target.value = "";
  });
}

// -- pickers -------------------------------------------------------------------------------

function addPickers(fields) {
  for (const f of fields) {
    if (f.type !== "path") continue;
    const input = state.form.controlFor(f.name);
    const kind = f.name === "model" ? "model" : "data";
    const button = h("button", {
      class: "btn",
      type: "button",
      text: "Browse…",
      "aria-label": `Browse for ${f.name}`,
      on: {
        click: async () => {
          const start = input.value.includes("/") ? input.value.replace(/\/[^/]*$/, "") : ".";
          const picked = await pickPath({ title: kind === "model" ? "Choose a model folder" : "Choose a corpus", start, kind });
          if (picked) {
            input.value = picked;
            input.dispatchEvent(new Event("input", { bubbles: true }));
          }
        },
      },
    });
    const row = h("div", { class: "field-control-row" });
    input.replaceWith(row);
    row.append(input, button);
  }
}

// -- launch -------------------------------------------------------------------------------

function wireLaunch() {
  $("#start-now").addEventListener("click", () => launch(true));
  $("#add-to-queue").addEventListener("click", () => launch(false));
  $("#run-form").addEventListener("submit", (e) => {
    e.preventDefault();
    launch(true);
  });
}

async function launch(startNow) {
  const buttons = [$("#start-now"), $("#add-to-queue")];
  buttons.forEach((b) => (b.disabled = true));
  const body = {
    config: state.form.values(),
    name: $("#f-name").value.trim() || null,
    start: startNow,
    queue: !startNow,
  };
  try {
    const res = await api.post(EP.runs, body);
    if (startNow) location.assign(`/runs/${encodeURIComponent(res.run_id)}`);
    else {
      toast("Added to the queue.", { kind: "success", action: { label: "Open runs", onClick: () => location.assign("/") } });
      buttons.forEach((b) => (b.disabled = false));
    }
  } catch (err) {
    buttons.forEach((b) => (b.disabled = false));
    const errors = (err.body && err.body.errors) || (err.field ? [{ field: err.field, message: err.message }] : null);
    if (errors) {
      const unplaced = state.form.showErrors(errors);
      state.form.focusFirstError();
      if (unplaced.length) reportError(new Error(unplaced.map((e) => e.message).join(" ")), "Cannot start");
      else toast("Fix the highlighted settings, then start again.", { kind: "error", title: "Cannot start" });
    } else if (err.status === 409 && startNow) {
      // Another run is training: offer the queue rather than a dead end.
      toast(err.message, { kind: "warning", title: "Cannot start now", timeout: 12000, action: { label: "Add to queue", onClick: () => launch(false) } });
    } else reportError(err, "Cannot start the run");
  }
}

main();
