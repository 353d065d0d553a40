// "Check hosts" in the New run form's Distributed group (issue 14): POST /api/hosts/check
// with the form's settings, and each host's verdict listed under the button (a host's
// problems say what to do). The same check runs before every launch.
import { h, $, replace } from "./dom.js";
import { api, reportError } from "./api.js";

/** Add the button to the form's distributed group; `values()` gives the form's config and
 * `showErrors(errors)` places a config's own errors next to its fields. */
export function addHostsCheck(values, showErrors) {
  const group = $('section[data-group="distributed"] .card-body');
  if (!group) return;
  const result = h("ul", { class: "hosts-check", id: "hosts-check", "aria-live": "polite" });
  const button = h("button", { class: "btn btn-sm", type: "button", id: "check-hosts", text: "Check hosts" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    replace(result, h("li", { class: "muted", text: "Checking each host over SSH…" }));
    try {
      const res = await api.post("/api/hosts/check", { config: values() });
      replace(result, ...res.hosts.map(hostLine));
    } catch (err) {
      replace(result);
      const errors = (err.body && err.body.errors) || (err.field ? [{ field: err.field, message: err.message }] : null);
      if (errors) showErrors(errors);
      else reportError(err, "Cannot check the hosts");
    } finally {
      button.disabled = false;
    }
  });
  group.append(h("div", { class: "row hosts-check-row" }, button), result);
}

function hostLine(report) {
  const facts = report.facts || {};
  const about = [facts.hostname, facts.python && `Python ${facts.python}`, facts.mlx && `mlx ${facts.mlx}`].filter(Boolean).join(" · ");
  return h(
    "li",
    { dataset: { rank: String(report.rank), ok: String(report.ok) } },
    h("strong", { text: `${report.ok ? "✓" : "✗"} rank ${report.rank}: ${report.host}` }),
    about ? h("span", { class: "muted", text: ` — ${about}` }) : null,
    report.problems.length ? h("ul", null, report.problems.map((p) => h("li", { text: p }))) : null,
  );
}
