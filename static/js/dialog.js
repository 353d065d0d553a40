/**
 * Confirmation dialogs on the native <dialog> element (focus is trapped, Esc cancels, focus
 * returns to the opener). Shared by every page.
 *
 *   confirmDialog({title, body, confirmLabel = "Confirm", cancelLabel = "Cancel",
 *                  danger = false}) -> Promise<boolean>
 *       body: a string, a Node or an array of them (strings stay text). Resolves true only
 *       when the confirm button is pressed. The confirm button has data-confirm for tests.
 *
 *   showModal(dlg, resolve, result)
 *       Open a built <dialog> modally; on close it is removed, focus returns to the element
 *       that had it, and `resolve(result())` settles the caller's promise.
 */
import { h } from "./dom.js";

export function confirmDialog({
  title,
  body,
  confirmLabel = "Confirm",
  cancelLabel = "Cancel",
  danger = false,
}) {
  return new Promise((resolve) => {
    const titleId = `dlg-${Math.random().toString(36).slice(2)}`;
    const cancel = h("button", { class: "btn", type: "button", text: cancelLabel, value: "cancel" });
    const ok = h("button", {
      class: danger ? "btn btn-danger btn-solid" : "btn btn-primary",
      type: "button",
      text: confirmLabel,
      dataset: { confirm: "" },
    });
    const paragraphs = (Array.isArray(body) ? body : [body]).map((b) =>
      typeof b === "string" ? h("p", { text: b }) : b
    );
    const dlg = h(
      "dialog",
      { class: "dialog", "aria-labelledby": titleId },
      h("div", { class: "dialog-body" }, h("h2", { id: titleId, text: title }), paragraphs),
      h("div", { class: "dialog-actions" }, cancel, ok)
    );
    let result = false;
    cancel.addEventListener("click", () => dlg.close());
    ok.addEventListener("click", () => {
      result = true;
      dlg.close();
    });
    showModal(dlg, resolve, () => result);
    // Start on the safe choice: Enter on an open dialog must not confirm a destructive action.
    cancel.focus();
  });
}

export function showModal(dlg, resolve, result) {
  const opener = document.activeElement;
  dlg.addEventListener("close", () => {
    dlg.remove();
    if (opener && opener.focus) opener.focus();
    resolve(result());
  });
  document.body.appendChild(dlg);
  dlg.showModal();
}
