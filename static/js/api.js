/**
 * The HTTP API client (DESIGN.md "Command lines and HTTP API"), shared by every page.
 *
 *   api.get(path, {signal}?) / api.post(path, body) / api.del(path, body) -> parsed JSON
 *       Same-origin fetch: the console's HttpOnly cookie authenticates; bodies are JSON
 *       (mutations must be JSON). A non-2xx reply throws ApiError.
 *   ApiError {message, status, field, body}: `message` is the server's `error` text.
 *   reportError(err, context?) -> shows the error as a toast titled <context>; a 401/403
 *       also raises the sign-in banner. Aborted requests, and unreachable-console errors
 *       while the offline banner is up, are not toasted.
 *   runUrl(run_id, suffix?) -> "/api/runs/<run_id><suffix>" with the id URL-encoded.
 */
import { toast } from "./toast.js";

export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body || {};
    this.field = this.body.field || null;
  }
}

async function request(method, path, body, { signal } = {}) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin", signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("the console is not reachable (is it still running?)", 0);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text.slice(0, 200) };
    }
  }
  if (!res.ok) {
    const message = (data && data.error) || `${res.status} ${res.statusText}`;
    if (res.status === 401 || res.status === 403) showAuthBanner();
    throw new ApiError(message, res.status, data);
  }
  return data ?? {};
}

export const api = {
  get: (path, opts) => request("GET", path, undefined, opts),
  post: (path, body = {}, opts) => request("POST", path, body, opts),
  del: (path, body = {}, opts) => request("DELETE", path, body, opts),
};

export function runUrl(runId, suffix = "") {
  return `/api/runs/${encodeURIComponent(runId)}${suffix}`;
}

export function reportError(err, context) {
  if (err && err.name === "AbortError") return;
  // While the console is away the offline banner already says so: no toast per request.
  const banner = document.getElementById("offline-banner");
  if (err && err.status === 0 && banner && !banner.hidden) return;
  const message = (err && err.message) || String(err);
  console.warn(context || "error", message);
  toast(message, { kind: "error", title: context || "Something went wrong", timeout: 9000 });
}

function showAuthBanner() {
  const el = document.getElementById("auth-banner");
  if (el) el.hidden = false;
}
