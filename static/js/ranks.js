// A run on several machines (issue 14): its ranks, the host each runs on, and each rank's
// own throughput and peak memory from the latest train report. Hidden for a one-process run.
import { h, $, replace, fmt } from "./dom.js";

/** Fill the Ranks panel from the run record (`launch`: hosts by rank) and the latest
 * train row (`ranks`: [{rank, tokens_per_second, peak_memory}]). */
export function renderRanks(record, lastTrain) {
  const panel = $("#ranks-panel");
  const launch = record && record.launch;
  if (!panel) return;
  panel.hidden = !launch || !Array.isArray(launch.hosts) || launch.hosts.length === 0;
  if (panel.hidden) return;
  const hosts = launch.hosts;
  $("#ranks-sub").textContent = `mlx.launch · ${launch.backend || "ring"} · ${hosts.length} ${hosts.length === 1 ? "host" : "hosts"}`;
  const measured = new Map();
  for (const r of (lastTrain && Array.isArray(lastTrain.ranks) ? lastTrain.ranks : [])) measured.set(r.rank, r);
  const rows = hosts.map((host) => {
    const m = measured.get(host.rank) || {};
    const facts = host.facts || {};
    const machine = [facts.hostname, facts.platform].filter(Boolean).join(" · ");
    const versions = [facts.python && `Python ${facts.python}`, facts.mlx && `mlx ${facts.mlx}`].filter(Boolean).join(", ");
    return h(
      "tr",
      { dataset: { rank: String(host.rank) } },
      h("td", { class: "num", text: String(host.rank) }),
      h("td", { class: "mono", text: host.ssh || "" }),
      h("td", { class: "mono", text: (host.ips || []).join(", ") }),
      h("td", { text: machine, title: versions }),
      h("td", { class: "num right", dataset: { key: "tokens_per_second" }, text: fmt.compact(m.tokens_per_second) }),
      h("td", { class: "num right", dataset: { key: "peak_memory" }, text: fmt.gb(m.peak_memory) }),
    );
  });
  replace($("#ranks tbody"), ...rows);
}
