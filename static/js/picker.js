/**
 * A path picker dialog over the console's folder listing (only folders inside the roots the
 * console may read are listed; the server refuses anything else with a message).
 *
 *   pickPath({title, start, kind: "model" | "data"}) -> Promise<string | null>
 *       "model": folders with a config.json are the choices; "data": text files and folders.
 */
import { h, replace, fmt } from "./dom.js";
import { api } from "./api.js";
import { showModal } from "./dialog.js";

export const BROWSE_URL = (path) => `/api/files?path=${encodeURIComponent(path)}`;

export function pickPath({ title, start = ".", kind = "data" }) {
  return new Promise((resolve) => {
    const list = h("ul", { class: "list", role: "listbox", "aria-label": "Folder contents" });
    const where = h("code", { class: "muted" });
    const error = h("p", { class: "field-error", hidden: true, role: "alert" });
    const choose = h("button", { class: "btn btn-primary", type: "button", text: "Use this folder", hidden: kind === "model" });
    const cancel = h("button", { class: "btn", type: "button", text: "Cancel" });
    const dlg = h(
      "dialog",
      { class: "dialog", "aria-label": title },
      h(
        "div",
        { class: "dialog-body" },
        h("h2", { text: title }),
        where,
        error,
        h("div", { class: "card picker-list" }, list)
      ),
      h("div", { class: "dialog-actions" }, cancel, choose)
    );
    let current = null;
    let result = null;
    const finish = (value) => {
      result = value;
      dlg.close();
    };

    async function open(path) {
      try {
        const data = await api.get(BROWSE_URL(path));
        current = data;
        error.hidden = true;
        where.textContent = data.path;
        const rows = [];
        if (data.parent !== null && data.parent !== undefined) {
          rows.push(entryRow("..", "Up one folder", () => open(data.parent)));
        }
        for (const e of data.entries) {
          if (e.type === "dir") {
            if (kind === "model" && e.is_model) rows.push(entryRow(e.name, "model", () => finish(e.path), true));
            else rows.push(entryRow(`${e.name}/`, "folder", () => open(e.path)));
          } else if (kind === "data" && /\.(txt|md|markdown|rst|text|jsonl)$/i.test(e.name)) {
            rows.push(entryRow(e.name, fmt.bytes(e.size), () => finish(e.path), true));
          }
        }
        if (!rows.length) rows.push(h("li", { class: "faint", text: "Nothing to pick here." }));
        replace(list, rows);
        const first = list.querySelector("button");
        if (first) first.focus();
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      }
    }

    function entryRow(name, note, onPick, pickable = false) {
      return h(
        "li",
        null,
        h("button", {
          class: pickable ? "btn btn-ghost picker-pick" : "btn btn-ghost",
          type: "button",
          text: name,
          on: { click: onPick },
        }),
        h("span", { class: "grow" }),
        h("span", { class: "faint", text: note })
      );
    }

    cancel.addEventListener("click", () => dlg.close());
    choose.addEventListener("click", () => current && finish(current.path));
    showModal(dlg, resolve, () => result);
    open(start || ".").catch(() => open("."));
  });
}
