/**
 * In-page toasts (base.html provides the live region #toasts).
 *
 *   toast(message, {kind = "info" | "success" | "warning" | "error", title, timeout = 6000,
 *                   action: {label, onClick}}) -> {close()}
 *       timeout 0 keeps the toast until closed. Text only: message and title never become HTML.
 */
import { h } from "./dom.js";

function region() {
  let el = document.getElementById("toasts");
  if (!el) {
    el = h("div", { id: "toasts", class: "toasts", role: "status", "aria-live": "polite" });
    document.body.appendChild(el);
  }
  return el;
}

export function toast(message, { kind = "info", title, timeout = 6000, action } = {}) {
  const close = () => el.remove();
  const el = h(
    "div",
    { class: "toast", dataset: { kind } },
    h(
      "div",
      { class: "toast-text" },
      title ? h("div", { class: "toast-title", text: title }) : null,
      h("div", { text: message })
    ),
    action
      ? h("button", {
          class: "btn btn-sm",
          type: "button",
          text: action.label,
          on: {
            click: () => {
              action.onClick();
              close();
            },
          },
        })
      : null,
    h("button", {
      class: "btn btn-ghost btn-sm btn-icon",
      type: "button",
      "aria-label": "Dismiss notification",
      text: "×",
      on: { click: close },
    })
  );
  const box = region();
  box.appendChild(el);
  // Keep the stack short: the oldest goes first.
  while (box.children.length > 4) box.firstElementChild.remove();
  if (timeout) setTimeout(close, timeout);
  return { close };
}
