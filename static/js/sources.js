// The New run form's sources table: the `data` setting as rows (path, weight, name), the
// mixture they make, and the "replay general text" preset. The form's own `data` control
// (hidden) keeps the value: a plain path for one unnamed source of weight 1, else the
// sources as JSON (what the config checker and the trainer read).
import { h, replace } from "./dom.js";

export const GENERAL_SET = "corpora/general-prose.jsonl"; // training/contract/layout.py
export const REPLAY_SHARE = 0.05;

/** The rows a `data` value holds: "" -> [], a path -> one row, JSON -> its sources. */
export function parseSources(text) {
  const t = String(text ?? "").trim();
  if (!t) return [];
  if (t.startsWith("[")) {
    try {
      const list = JSON.parse(t);
      if (Array.isArray(list)) {
        return list.map((s) => (typeof s === "string" ? { path: s, weight: 1, name: "" } : { path: String(s.path ?? ""), weight: s.weight ?? 1, name: s.name ?? "" }));
      }
    } catch (err) {
      /* left as typed: the checker names the problem */
    }
  }
  return [{ path: t, weight: 1, name: "" }];
}

export function formatSources(rows) {
  const kept = rows.filter((r) => String(r.path).trim());
  if (kept.length === 0) return "";
  if (kept.length === 1 && !kept[0].name && Number(kept[0].weight) === 1) return kept[0].path.trim();
  return JSON.stringify(
    kept.map((r) => {
      const w = Number(r.weight);
      return { path: r.path.trim(), weight: Number.isFinite(w) && String(r.weight).trim() !== "" ? w : r.weight, ...(r.name ? { name: r.name.trim() } : {}) };
    })
  );
}

const stem = (path) => (path.split("/").pop() || path).split(".")[0] || path;

/** Each source's share of training, in percent (weights are relative). */
export function shares(rows) {
  const kept = rows.filter((r) => String(r.path).trim());
  const weights = kept.map((r) => Math.max(0, Number(r.weight) || 0));
  const total = weights.reduce((a, b) => a + b, 0);
  return kept.map((r, i) => ({ name: r.name || stem(r.path), share: total > 0 ? (100 * weights[i]) / total : 0 }));
}

export class SourcesTable {
  /** `input`: the form's data control (the table goes right after it); `evalSets`: the
   * eval_sets control, if any. */
  constructor(input, evalSets = null) {
    this.input = input;
    this.evalSets = evalSets;
    this.rows = [];
    this.body = h("tbody");
    this.mix = h("p", { class: "faint", id: "sources-mix", "aria-live": "polite" });
    this.el = h(
      "div",
      { class: "sources stack", id: "sources" },
      h(
        "table",
        { class: "table sources-table", "aria-label": "Training sources" },
        h("thead", null, h("tr", null, h("th", { text: "Path" }), h("th", { text: "Weight" }), h("th", { text: "Name" }), h("th", null))),
        this.body
      ),
      h(
        "div",
        { class: "row" },
        h("button", { class: "btn", type: "button", id: "add-source", text: "Add source", on: { click: () => this.add({ path: "", weight: 1, name: "" }) } }),
        h("button", { class: "btn", type: "button", id: "replay-general", text: "Replay general text (5%)", title: `Adds ${GENERAL_SET} at ${REPLAY_SHARE * 100}% of training`, on: { click: () => this.replay() } })
      ),
      this.mix
    );
    input.hidden = true;
    input.after(this.el);
    this.load();
  }

  /** Rebuild the rows from the control (after a preset, a clone or a YAML file). */
  load() {
    this.rows = parseSources(this.input.value);
    if (this.rows.length === 0) this.rows = [{ path: "", weight: 1, name: "" }];
    this.render();
  }

  add(row) {
    this.rows.push(row);
    this.render();
    this.commit();
  }

  /** The demo's general-prose set at 5%, the rest (the domain) at 95%. */
  replay() {
    const others = this.rows.filter((r) => r.path.trim() && r.path.trim() !== GENERAL_SET);
    const total = others.reduce((a, r) => a + Math.max(0, Number(r.weight) || 0), 0) || 1;
    for (const r of others) r.weight = Number((((Math.max(0, Number(r.weight) || 0) / total) * (1 - REPLAY_SHARE))).toPrecision(6));
    this.rows = [...others, { path: GENERAL_SET, weight: REPLAY_SHARE, name: "general" }];
    // The set is now trained on: its own held-out part validates it (as val_general), so an
    // eval set of the same file (which would score trained documents) goes.
    if (this.evalSets) {
      const lines = this.evalSets.value.split("\n");
      const kept = lines.filter((line) => line.split("=").slice(1).join("=").trim() !== GENERAL_SET);
      if (kept.length !== lines.length) {
        this.evalSets.value = kept.join("\n");
        this.evalSets.dispatchEvent(new Event("input", { bubbles: true }));
      }
    }
    this.render();
    this.commit();
  }

  commit() {
    this.input.value = formatSources(this.rows);
    this.input.dispatchEvent(new Event("input", { bubbles: true }));
    this.renderMix();
  }

  render() {
    replace(
      this.body,
      ...this.rows.map((row, i) => {
        const cell = (key, props) =>
          h("td", null, h("input", { class: key === "path" ? "input mono" : "input", type: "text", value: String(row[key] ?? ""), autocomplete: "off", spellcheck: false, "aria-label": `Source ${i + 1} ${key}`, dataset: { source: String(i), key }, on: { input: (e) => { row[key] = e.target.value; this.commit(); } }, ...props }));
        return h(
          "tr",
          null,
          cell("path", { placeholder: "corpora/domain.jsonl" }),
          cell("weight", { inputMode: "decimal", size: 6 }),
          cell("name", { placeholder: row.path ? stem(row.path) : "" }),
          h("td", null, this.rows.length > 1 ? h("button", { class: "btn btn-ghost", type: "button", text: "Remove", "aria-label": `Remove source ${i + 1}`, on: { click: () => { this.rows.splice(i, 1); this.render(); this.commit(); } } }) : null)
        );
      })
    );
    this.renderMix();
  }

  renderMix() {
    const mix = shares(this.rows);
    this.mix.textContent = mix.length > 1 ? `Mixture: ${mix.map((m) => `${m.name} ${m.share.toFixed(m.share < 10 ? 1 : 0)}%`).join(" · ")}` : "";
  }

  /** The first source's path (the domain: the data report shows it). */
  firstPath() {
    const first = this.rows.find((r) => r.path.trim());
    return first ? first.path.trim() : "";
  }
}
