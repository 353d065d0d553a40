/**
 * The run-settings form, built from the field registry (GET /api/fields): never a hand-made
 * list. One control per field, `name` = the field's name; groups in registry order, essential
 * and important fields first, advanced ones in a collapsed "Advanced" section; a field with a
 * `depends_on` rule is shown only while the rule holds (and is then left out of the config).
 *
 *   const form = new FieldForm(container, fields, {onChange})
 *   form.values()          -> {field name: value} of the shown, non-empty controls
 *   form.setValues(config) -> fill from a flat or nested (YAML-shaped) config; others reset
 *   form.showErrors(errors)-> places [{field, message}] next to their fields; returns the
 *                             ones that have no shown field (for a form-level message)
 *   form.focusFirstError(); form.controlFor(name) -> the field's control element
 *   form.disableChoice(name, value, disabled) -> turn one choice of a select off or on
 *   form.setNote(name, ...content) -> a note under the field (text or nodes); none clears it
 */
import { h, $ } from "./dom.js";

const GROUP_INFO = {
  model: ["Model", "What to train, and which of its weights."],
  data: ["Data", "The corpus, how it is cut into sequences, and what is held out."],
  training: ["Training", "Budget, optimizer and learning-rate schedule."],
  evaluation: ["Evaluation", "How often loss is reported and validation runs."],
  checkpoints: ["Checkpoints", "When to save, and what to keep."],
  distributed: ["Distributed", "Several machines: one rank per host, started by mlx.launch over SSH."],
};
const RANK = { essential: 0, important: 1, advanced: 2 };

const controlId = (name) => `f-${name.replace(/[^A-Za-z0-9_-]/g, "-")}`;

export class FieldForm {
  constructor(container, fields, { onChange = () => {} } = {}) {
    this.fields = fields;
    this.byName = new Map(fields.map((f) => [f.name, f]));
    this.onChange = onChange;
    this.rows = new Map(); // name -> {row, control, error}
    this.customSchedule = null; // an mlx-lm schedule mapping loaded from YAML
    container.replaceChildren(...this.build());
    this.applyDependencies();
  }

  build() {
    const groups = [];
    for (const f of this.fields) if (!groups.includes(f.group)) groups.push(f.group);
    return groups.map((group) => {
      const members = this.fields
        .filter((f) => f.group === group)
        .map((f, i) => [f, i])
        .sort((a, b) => RANK[a[0].importance] - RANK[b[0].importance] || a[1] - b[1])
        .map(([f]) => f);
      const main = members.filter((f) => f.importance !== "advanced");
      const advanced = members.filter((f) => f.importance === "advanced");
      const [title, blurb] = GROUP_INFO[group] || [group[0].toUpperCase() + group.slice(1), ""];
      const headId = `g-${group}`;
      return h(
        "section",
        { class: "card group", "aria-labelledby": headId, dataset: { group } },
        h(
          "div",
          { class: "card-head" },
          h("h2", { id: headId, class: "card-title", text: title }),
          h("span", { class: "faint", text: blurb })
        ),
        h(
          "div",
          { class: "card-body" },
          main.map((f) => this.fieldRow(f)),
          advanced.length
            ? h(
                "details",
                { class: "advanced", dataset: { group } },
                h("summary", { text: `Advanced (${advanced.length})` }),
                advanced.map((f) => this.fieldRow(f))
              )
            : null
        )
      );
    });
  }

  fieldRow(f) {
    const id = controlId(f.name);
    const helpId = `${id}-help`;
    const errId = `${id}-error`;
    const control = this.control(f, id);
    control.setAttribute("aria-describedby", `${helpId} ${errId}`);
    if (f.required) control.setAttribute("aria-required", "true");
    const error = h("p", { class: "field-error", id: errId, hidden: true });
    const isBool = f.type === "bool";
    const picks = f.type === "list" && f.choices ? choicePicks(f, control) : null;
    const label = h(
      "label",
      { class: "field-label", for: id },
      labelText(f),
      f.required ? h("span", { class: "req", "aria-hidden": "true", text: " *" }) : null,
      h("span", { class: "flag", text: f.flag })
    );
    const row = h(
      "div",
      { class: "field", dataset: { field: f.name, importance: f.importance } },
      label,
      h(
        "div",
        null,
        isBool ? h("span", { class: "check" }, control, h("span", { class: "muted", text: "enabled" })) : control,
        picks ? picks.box : null,
        h("p", { class: "field-help", id: helpId, text: helpText(f) }),
        error
      )
    );
    this.rows.set(f.name, { row, control, error, spec: f, sync: picks ? picks.sync : null });
    const fire = () => {
      if (f.name === "lr_schedule") this.customSchedule = null;
      this.applyDependencies();
      this.onChange(f.name);
    };
    control.addEventListener("input", fire);
    control.addEventListener("change", fire);
    return row;
  }

  control(f, id) {
    const base = { id, name: f.name };
    if (f.type === "bool") {
      return h("input", { ...base, type: "checkbox", checked: Boolean(f.default) });
    }
    if (f.type === "choice" || f.type === "schedule") {
      return h(
        "select",
        { ...base, class: "select" },
        (f.choices || []).map((c) => h("option", { value: String(c), text: String(c), selected: c === f.default }))
      );
    }
    if (f.type === "dict") {
      return h("textarea", {
        ...base,
        class: "textarea",
        rows: 2,
        spellcheck: false,
        placeholder: f.example || (f.name === "optimizer_config" ? '{"adamw": {"betas": [0.9, 0.95]}}' : "NAME=VALUE per line"),
      });
    }
    const numeric = f.type === "int" || f.type === "float";
    return h("input", {
      ...base,
      class: f.type === "path" || f.type === "list" ? "input mono" : "input",
      type: "text",
      inputMode: numeric ? (f.type === "int" ? "numeric" : "decimal") : undefined,
      autocomplete: "off",
      spellcheck: false,
      placeholder: f.example || "",
      value: formatValue(f, f.default),
    });
  }

  /** Show or hide fields whose depends_on rule changed. A hidden field counts as unset, so a
   * rule on it fails too (embedding_lr_scale needs train_embeddings, itself lora/dora only);
   * passes repeat until nothing changes, whatever the registry's order. */
  applyDependencies() {
    const current = this.rawValues();
    for (let changed = true, pass = 0; changed && pass <= this.rows.size; pass++) {
      changed = false;
      for (const [name, { row, spec }] of this.rows) {
        const dep = spec.depends_on;
        const hidden = Boolean(dep) && !dep.values.map(String).includes(String(current[dep.field]));
        if (hidden && name in current) {
          delete current[name];
          changed = true;
        }
        row.hidden = hidden;
      }
    }
  }

  rawValues() {
    const out = {};
    for (const [name, { control, spec }] of this.rows) {
      out[name] = spec.type === "bool" ? control.checked : control.value;
    }
    return out;
  }

  values() {
    const out = {};
    for (const [name, { row, control, spec }] of this.rows) {
      if (row.hidden) continue;
      if (spec.type === "bool") {
        out[name] = control.checked;
        continue;
      }
      if (name === "lr_schedule" && this.customSchedule) {
        out[name] = this.customSchedule;
        continue;
      }
      const v = control.value.trim();
      if (v !== "") out[name] = v;
    }
    return out;
  }

  setValues(config) {
    const flat = flatten(config || {}, this.byName);
    this.customSchedule = null;
    for (const [name, { control, spec, sync }] of this.rows) {
      const value = name in flat ? flat[name] : spec.default;
      if (spec.type === "bool") control.checked = Boolean(value);
      else if (name === "lr_schedule" && value && typeof value === "object") {
        this.customSchedule = value;
        setCustomOption(control, value);
      } else if (spec.type === "choice" || spec.type === "schedule") {
        control.value = value == null ? String(spec.default) : String(value);
      } else control.value = formatValue(spec, value);
      if (sync) sync();
    }
    this.applyDependencies();
  }

  showErrors(errors) {
    const unplaced = [];
    const byField = new Map();
    for (const e of errors || []) {
      const slot = e.field && this.rows.get(e.field);
      if (slot && !slot.row.hidden) {
        byField.set(e.field, [...(byField.get(e.field) || []), e.message]);
      } else unplaced.push(e);
    }
    for (const [name, { control, error }] of this.rows) {
      const messages = byField.get(name);
      if (messages) {
        error.textContent = messages.join(" ");
        error.hidden = false;
        control.setAttribute("aria-invalid", "true");
        const details = control.closest("details");
        if (details) details.open = true;
      } else {
        error.textContent = "";
        error.hidden = true;
        control.removeAttribute("aria-invalid");
      }
    }
    return unplaced;
  }

  focusFirstError() {
    const el = $('[aria-invalid="true"]', document.getElementById("groups"));
    if (el) el.focus();
  }

  controlFor(name) {
    const slot = this.rows.get(name);
    return slot ? slot.control : null;
  }

  disableChoice(name, value, disabled) {
    const control = this.controlFor(name);
    const option = control && Array.from(control.options || []).find((o) => o.value === String(value));
    if (option) option.disabled = Boolean(disabled);
  }

  setNote(name, ...content) {
    const slot = this.rows.get(name);
    if (!slot) return;
    const parts = content.flat().filter((c) => c !== null && c !== undefined && c !== false);
    if (!slot.note) {
      if (!parts.length) return;
      const id = `${slot.control.id}-note`;
      slot.note = h("div", { class: "field-note", id, role: "status" });
      slot.error.before(slot.note);
      slot.control.setAttribute("aria-describedby", `${slot.control.getAttribute("aria-describedby")} ${id}`);
    }
    slot.note.replaceChildren(...parts.map((c) => (typeof c === "string" ? document.createTextNode(c) : c)));
    slot.note.hidden = !parts.length;
  }
}

/**
 * A list whose items are choices (report_to): one checkbox per choice beside the text field
 * (which stays the value, so YAML's comma-separated text shows as it is). Ticking one rewrites
 * the text in the choices' order; typing ticks the boxes the text names.
 */
function choicePicks(f, control) {
  const items = () =>
    control.value
      .split(",")
      .map((v) => v.trim().toLowerCase())
      .filter(Boolean);
  const boxes = f.choices.map((c) =>
    h("input", { type: "checkbox", value: String(c), name: `${f.name}.choice`, dataset: { choice: String(c) } })
  );
  const sync = () => {
    const now = items();
    for (const box of boxes) box.checked = now.includes(box.value);
  };
  for (const box of boxes) {
    box.addEventListener("change", () => {
      const now = items();
      const others = now.filter((v) => !f.choices.map(String).includes(v)); // a typo stays, to be refused
      const picked = boxes.filter((b) => b.checked).map((b) => b.value);
      control.value = [...picked, ...others].join(",");
      control.dispatchEvent(new Event("input", { bubbles: true }));
    });
  }
  control.addEventListener("input", sync);
  sync();
  const box = h(
    "div",
    { class: "choice-picks", role: "group", "aria-label": `${labelText(f)} choices` },
    boxes.map((b) => h("label", { class: "check" }, b, h("span", { text: b.value })))
  );
  return { box, sync };
}

const WORDS = { lr: "LR", lora: "LoRA", dtype: "Data type", iters: "Steps (iters)", val: "Validation" };

function labelText(f) {
  const words = f.name.split(".").pop().split("_").map((w) => WORDS[w] || w);
  if (f.name.startsWith("lora_parameters.")) words.unshift("LoRA");
  const text = words.join(" ");
  return text[0].toUpperCase() + text.slice(1);
}

function helpText(f) {
  let text = f.help;
  if (f.default !== null && f.default !== undefined && f.type !== "bool" && typeof f.default !== "object") {
    text += ` Default: ${f.default}.`;
  }
  return text;
}

function formatValue(spec, value) {
  if (value === null || value === undefined) return "";
  if (spec.type === "list" && Array.isArray(value)) return value.join(",");
  if (spec.type === "sources" && typeof value === "object") return JSON.stringify(value);
  if (spec.type === "dict" && typeof value === "object") {
    if (spec.name === "eval_sets") return Object.entries(value).map(([k, v]) => `${k}=${v}`).join("\n");
    return JSON.stringify(value);
  }
  return String(value);
}

function setCustomOption(select, mapping) {
  let opt = select.querySelector("option[data-custom]");
  if (!opt) {
    opt = h("option", { dataset: { custom: "" } });
    select.appendChild(opt);
  }
  opt.value = "__custom__";
  opt.textContent = `custom: ${mapping.name} (from YAML)`;
  select.value = "__custom__";
}

/** Nested YAML keys (lora_parameters: {rank: 8}) -> registry names (lora_parameters.rank). */
export function flatten(config, byName) {
  const out = {};
  for (const [key, value] of Object.entries(config)) {
    if (byName.has(key)) out[key] = value;
    else if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [sub, v] of Object.entries(value)) {
        if (byName.has(`${key}.${sub}`)) out[`${key}.${sub}`] = v;
      }
    }
  }
  return out;
}
