"""Chart rendering benchmark: the console's chart code against a bare uPlot page.

Headless Chromium (Debian's /usr/bin/chromium, or $CHROMIUM) draws a train-loss curve of
100k and 1M points twice in the same run: once with static/js/chart.js (the code the run
page uses: column store, min/max decimation, uPlot) and once with uPlot alone, given the
same points as plain arrays. It prints the first-draw time, the time to append 10 points
and redraw, and the ratio console / bare (goal: <= 1.5).

    .venv/bin/python bench/chart_render.py [--points 100000 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPLOT = "/static/vendor/uPlot-1.6.32.iife.min.js"
UPLOT_CSS = "/static/vendor/uPlot-1.6.32.min.css"
APPENDS = 40  # appends of 10 points each, after the first draw

# Same data, same size, same two series (raw loss and its EMA) on both pages.
COMMON_JS = """
export function makeData(n) {
  const step = new Float64Array(n), loss = new Float64Array(n), tokens = new Float64Array(n);
  let seed = 12345;
  const rnd = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 4294967296;
  for (let i = 0; i < n; i++) {
    step[i] = i + 1;
    tokens[i] = (i + 1) * 512;
    loss[i] = 2 + 3 * Math.exp((-5 * i) / n) + 0.4 * (rnd() - 0.5) + (rnd() < 1e-4 ? 3 : 0);
  }
  return { step, loss, tokens };
}
export function ema(loss, w = 0.6) {
  const out = new Float64Array(loss.length);
  let e = 0;
  for (let i = 0; i < loss.length; i++) {
    e = e * w + (1 - w) * loss[i];
    out[i] = e / (1 - w ** (i + 1));
  }
  return out;
}
export const drawn = () => new Promise((resolve) => (window.__resolveDraw = resolve));
export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
"""

BARE_JS = """
import { makeData, ema, drawn, median } from "/bench/common.js";
window.runBench = async (n, appends) => {
  const d = makeData(n);
  const xs = Array.from(d.step), ys = Array.from(d.loss), sm = Array.from(ema(d.loss));
  const el = document.getElementById("chart");
  const opts = {
    width: 1200, height: 300,
    scales: { x: { time: false } },
    series: [{ label: "step" },
             { label: "train loss", stroke: "#5b5fd6", width: 1, alpha: 0.35 },
             { label: "smoothed", stroke: "#5b5fd6", width: 1.5 }],
    hooks: { draw: [() => window.__resolveDraw && window.__resolveDraw(performance.now())] },
  };
  let done = drawn();
  const t0 = performance.now();
  const u = new uPlot(opts, [xs, ys, sm], el);
  const first = (await done) - t0;
  const times = [];
  for (let k = 0; k < appends; k++) {
    for (let j = 0; j < 10; j++) {
      const i = xs.length;
      xs.push(i + 1); ys.push(2 + Math.random()); sm.push(sm[i - 1]);
    }
    done = drawn();
    const a0 = performance.now();
    u.setData([xs, ys, sm]);
    times.push((await done) - a0);
  }
  const points = xs.length;
  u.destroy();
  return { first, append: median(times), points };
};
"""

UI_JS = """
import { makeData, drawn, median } from "/bench/common.js";
import { RunData, MetricChart } from "/static/js/chart.js";
const series = (run) => [
  { source: run, table: "train", key: "train_loss", label: "train loss", color: "#5b5fd6",
    width: 1, alpha: 0.35 },
  { source: run, table: "train", key: "smooth", label: "smoothed", color: "#5b5fd6", width: 1.5 },
];
window.runBench = async (n, appends, fromRows) => {
  const d = makeData(n);
  const el = document.getElementById("chart");
  let rows = null;
  if (fromRows) {  // what the run page gets from /api/runs/<id>/metrics: row objects
    rows = new Array(n);
    for (let i = 0; i < n; i++)
      rows[i] = { seq: i + 1, event: "train", step: d.step[i], train_loss: d.loss[i],
                  trained_tokens: d.tokens[i], learning_rate: 1e-3, tokens_per_second: 5000 };
  }
  let done = drawn();
  const t0 = performance.now();
  const run = new RunData({ smoothing: 0.6 });
  if (rows) run.ingest(rows);
  else run.ingestColumns({ step: d.step, tokens: d.tokens, train_loss: d.loss });
  const chart = new MetricChart(el, { series: series(run), height: 300,
    onDraw: () => window.__resolveDraw && window.__resolveDraw(performance.now()) });
  const first = (await done) - t0;
  const times = [];
  let step = n;
  for (let k = 0; k < appends; k++) {
    const s = new Float64Array(10), l = new Float64Array(10), t = new Float64Array(10);
    for (let j = 0; j < 10; j++) {
      step++; s[j] = step; l[j] = 2 + Math.random(); t[j] = step * 512;
    }
    done = drawn();
    const a0 = performance.now();
    run.ingestColumns({ step: s, tokens: t, train_loss: l });
    chart.flush();
    times.push((await done) - a0);
  }
  const points = chart.pointCount;
  chart.destroy();
  return { first, append: median(times), points };
};
"""


def page(module: str) -> str:
    return f"""<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="{UPLOT_CSS}"><link rel="stylesheet" href="/static/css/tokens.css">
<script src="{UPLOT}"></script></head>
<body><div id="chart" style="width:1216px"></div>
<script type="module" src="{module}"></script></body></html>"""


PAGES = {
    "/bench/common.js": ("text/javascript", COMMON_JS),
    "/bench/bare.js": ("text/javascript", BARE_JS),
    "/bench/ui.js": ("text/javascript", UI_JS),
    "/bench/bare.html": ("text/html", page("/bench/bare.js")),
    "/bench/ui.html": ("text/html", page("/bench/ui.js")),
}


class Handler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        if path in PAGES:
            kind, body = PAGES[path]
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path.startswith("/static/"):
            super().do_GET()
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


def chromium_path() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("No Chromium found: install Debian's chromium or set CHROMIUM=/path/to/chrome")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(ROOT)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    results: dict[str, dict[int, list[dict[str, float]]]] = {}
    variants = [("bare uPlot", "bare.html", False), ("console chart", "ui.html", False)]
    variants.append(("console chart, from rows", "ui.html", True))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium_path(),
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"],
            )
            for n in args.points:
                for _ in range(args.repeats):
                    for name, url, rows in variants:  # interleaved: drift hits all alike
                        pg = browser.new_page(viewport={"width": 1280, "height": 800})
                        pg.goto(f"{base}/bench/{url}")
                        pg.wait_for_function("typeof window.runBench === 'function'")
                        r = pg.evaluate(f"runBench({n}, {APPENDS}, {json.dumps(rows)})")
                        results.setdefault(name, {}).setdefault(n, []).append(r)
                        pg.close()
            browser.close()
    finally:
        server.shutdown()

    def med(name: str, n: int, key: str) -> float:
        return statistics.median(r[key] for r in results[name][n])

    print(f"Chart rendering, headless Chromium, median of {args.repeats} (times in ms)")
    print(f"{'points':>9}  {'page':<26}{'first draw':>11}{'append 10':>11}{'drawn pts':>11}")
    summary = []
    for n in args.points:
        for name, _, _ in variants:
            first, append = med(name, n, "first"), med(name, n, "append")
            pts = int(med(name, n, "points"))
            print(f"{n:>9,}  {name:<26}{first:>11.1f}{append:>11.2f}{pts:>11,}")
        bare_f, bare_a = med("bare uPlot", n, "first"), med("bare uPlot", n, "append")
        for name in ("console chart", "console chart, from rows"):
            rf = med(name, n, "first") / bare_f
            ra = med(name, n, "append") / bare_a
            summary.append({"points": n, "variant": name, "first_ratio": rf, "append_ratio": ra})
            print(f"{'':>9}  ratio {name} / bare: first draw {rf:.2f}x, append {ra:.2f}x")
    if args.json:
        print(json.dumps({"results": results, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
