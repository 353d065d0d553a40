/**
 * "Your run ended" notifications: an in-page toast, and a browser notification when the tab
 * is in the background and the person allowed it (Settings). Shared by every page.
 *
 *   noteRunState({run_id, name, state, message, step}) -> feed any state you observe (socket
 *       `run_status`, a /api/runs poll). A change into finished, failed or diverged from a
 *       state seen earlier in this tab notifies once; the first sighting never does, so
 *       opening a page does not replay old endings.
 *   requestPermission() -> Promise<"granted" | "denied" | "default" | "unsupported">
 *   permission() -> the current browser permission, or "unsupported"
 */
import { toast } from "./toast.js";
import { settings } from "./settings.js";

const ENDINGS = {
  finished: { kind: "success", title: "Run finished" },
  failed: { kind: "error", title: "Run failed" },
  diverged: { kind: "error", title: "Run diverged" },
};
const seen = new Map(); // run_id -> last state seen in this tab

export function noteRunState(run) {
  if (!run || !run.run_id || !run.state) return;
  const before = seen.get(run.run_id);
  seen.set(run.run_id, run.state);
  if (before === undefined || before === run.state) return;
  const ending = ENDINGS[run.state];
  if (!ending || !settings.get("notifications")) return;
  const name = run.name || run.run_id;
  const message = run.message ? `${name}: ${run.message}` : name;
  const href = `/runs/${encodeURIComponent(run.run_id)}`;
  toast(message, {
    kind: ending.kind,
    title: ending.title,
    timeout: 12000,
    action: location.pathname === href ? null : { label: "Open", onClick: () => location.assign(href) },
  });
  if (document.hidden && settings.get("browserNotifications") && permission() === "granted") {
    const n = new Notification(ending.title, { body: message, tag: `cpt-${run.run_id}` });
    n.onclick = () => {
      window.focus();
      location.assign(href);
    };
  }
}

export function permission() {
  return "Notification" in window ? Notification.permission : "unsupported";
}

export async function requestPermission() {
  if (!("Notification" in window)) return "unsupported";
  return Notification.requestPermission();
}
