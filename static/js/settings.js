/**
 * The person's settings, stored in localStorage so they survive a restart of the console
 * and of the browser. Shared by every page.
 *
 *   settings.get(key) / settings.set(key, value) / settings.all()
 *   settings.onChange(fn(key, value)) -> unsubscribe (also fires for changes made in another tab)
 *   applyTheme() -> sets <html data-theme> from the `theme` setting (light, dark or system)
 *
 * Keys and defaults: DEFAULTS below. theme-boot.js reads the same storage key before paint.
 */

const KEY = "cpt.settings";

export const DEFAULTS = Object.freeze({
  theme: "system", // light | dark | system
  smoothing: 0.6, // EMA weight for the train-loss curve, 0..0.99
  logScale: false, // loss charts on a log y axis
  xAxis: "step", // step | tokens
  maxPoints: 4000, // history points requested per chart (the server downsamples)
  notifications: true, // toasts + browser notifications when a run ends
  browserNotifications: true, // also the system notification, when permitted
  logLines: 200, // stdout lines shown on a run's page
});

const listeners = new Set();

function read() {
  try {
    const stored = JSON.parse(localStorage.getItem(KEY) || "{}");
    return { ...DEFAULTS, ...(stored && typeof stored === "object" ? stored : {}) };
  } catch {
    return { ...DEFAULTS };
  }
}

export const settings = {
  all: read,
  get: (key) => read()[key],
  set(key, value) {
    const next = { ...read(), [key]: value };
    localStorage.setItem(KEY, JSON.stringify(next));
    if (key === "theme") applyTheme();
    for (const fn of listeners) fn(key, value);
  },
  reset() {
    localStorage.removeItem(KEY);
    applyTheme();
    for (const fn of listeners) fn(null, null);
  },
  onChange(fn) {
    listeners.add(fn);
    return () => listeners.delete(fn);
  },
};

const darkQuery = matchMedia("(prefers-color-scheme: dark)");

export function applyTheme() {
  const pref = settings.get("theme");
  const dark = pref === "dark" || (pref === "system" && darkQuery.matches);
  document.documentElement.dataset.theme = dark ? "dark" : "light";
}

darkQuery.addEventListener("change", applyTheme);
window.addEventListener("storage", (e) => {
  if (e.key !== KEY) return;
  applyTheme();
  for (const fn of listeners) fn(null, null);
});
