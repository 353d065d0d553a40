/**
 * DOM building and formatting, shared by every page (Playground included).
 *
 *   h(tag, props?, ...children) -> Element
 *       props: class, id, text, dataset {}, attrs {}, style {prop: value} (CSSOM, CSP-safe),
 *       on {event: handler}, and any other key is set as a DOM property (href, type, value...).
 *       Children: strings/numbers become Text nodes (never parsed as HTML); null, undefined
 *       and false are skipped; arrays are flattened.
 *   replace(el, ...children)   empty `el`, then append children (same rules as h)
 *   $(selector, root?) / $$(selector, root?)
 *   escapeHtml(s)   for the rare string that must be embedded in markup; prefer h().
 *   fmt.{int, num, compact, loss, lr, bytes, gb, duration, ago, time, dateTime, pct}
 *   debounce(fn, ms)
 *
 * Nothing in this codebase assigns innerHTML: run names, log lines and config strings come
 * from runs and must stay inert text.
 */

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props && (typeof props !== "object" || props instanceof Node || Array.isArray(props))) {
    children.unshift(props);
    props = null;
  }
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      if (key === "class") el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
      else if (key === "text") el.textContent = String(value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "attrs") {
        for (const [a, v] of Object.entries(value)) {
          if (v === false || v === null || v === undefined) continue;
          el.setAttribute(a, v === true ? "" : String(v));
        }
      } else if (key === "style") {
        for (const [p, v] of Object.entries(value)) el.style.setProperty(p, v);
      } else if (key === "on") {
        for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
      } else if (key.startsWith("aria-") || key === "role" || key === "for") {
        el.setAttribute(key, String(value));
      } else el[key] = value;
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ESC[c]);
}

export function debounce(fn, ms) {
  let t = 0;
  const wrapped = (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(t);
  return wrapped;
}

const DASH = "–";
const isNum = (x) => typeof x === "number" && Number.isFinite(x);
const nf0 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

export const fmt = {
  int: (x) => (isNum(x) ? nf0.format(x) : DASH),
  num(x, digits = 3) {
    if (!isNum(x)) return DASH;
    if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e6)) return x.toExponential(2);
    return Number(x.toPrecision(digits)).toString();
  },
  /** 1234 -> 1.23k, 5.2e6 -> 5.2M: tokens, parameters. */
  compact(x) {
    if (!isNum(x)) return DASH;
    const a = Math.abs(x);
    for (const [div, unit] of [
      [1e12, "T"],
      [1e9, "B"],
      [1e6, "M"],
      [1e3, "k"],
    ]) {
      if (a >= div) return `${Number((x / div).toPrecision(3))}${unit}`;
    }
    return String(Math.round(x));
  },
  loss: (x) => (isNum(x) ? x.toFixed(4) : DASH),
  lr: (x) => (isNum(x) ? (x === 0 ? "0" : x.toExponential(2)) : DASH),
  bytes(x) {
    if (!isNum(x)) return DASH;
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(x) >= 1024 && i < units.length - 1) {
      x /= 1024;
      i++;
    }
    return `${i === 0 ? x : x.toFixed(x >= 100 ? 0 : 1)} ${units[i]}`;
  },
  gb: (x) => (isNum(x) ? `${x >= 10 ? x.toFixed(1) : x.toFixed(2)} GB` : DASH),
  pct: (x) => (isNum(x) ? `${Math.round(x)}%` : DASH),
  /** Seconds -> "1h 02m", "3m 05s", "42s". */
  duration(s) {
    if (!isNum(s) || s < 0) return DASH;
    s = Math.round(s);
    const d = Math.floor(s / 86400);
    const hr = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    const p2 = (n) => String(n).padStart(2, "0");
    if (d) return `${d}d ${hr}h`;
    if (hr) return `${hr}h ${p2(m)}m`;
    if (m) return `${m}m ${p2(sec)}s`;
    return `${sec}s`;
  },
  /** Unix seconds -> "3 min ago". */
  ago(t) {
    if (!isNum(t)) return DASH;
    const s = Date.now() / 1000 - t;
    if (s < 45) return "just now";
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return new Date(t * 1000).toLocaleDateString();
  },
  time: (t) => (isNum(t) ? new Date(t * 1000).toLocaleTimeString() : DASH),
  dateTime: (t) =>
    isNum(t)
      ? new Date(t * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" })
      : DASH,
};

/** Unix seconds from a number or an ISO string; null when neither. */
export function toEpoch(t) {
  if (isNum(t)) return t > 1e12 ? t / 1000 : t;
  if (typeof t === "string" && t) {
    const ms = Date.parse(t);
    return Number.isNaN(ms) ? null : ms / 1000;
  }
  return null;
}
