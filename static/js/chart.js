/**
 * Metric charts: uPlot fed from a growable column store through min/max decimation.
 *
 * uPlot redraws every point it is given, so a chart is never handed more than ~2 points per
 * pixel column: each (table, primary column) keeps a block pyramid of argmin/argmax indices,
 * updated incrementally as rows arrive, so the unzoomed view costs O(blocks), not O(rows);
 * a zoomed view rescans only the visible range. Live rows are appended to the store and the
 * chart redraws once per animation frame; the uPlot instance is created once and only
 * rebuilt when the axes themselves change (log scale, x axis, theme, new series).
 *
 *   const run = new RunData();  run.ingest(rows)        // metrics.jsonl objects, any order of events
 *   run.setSmoothing(0.6)                               // EMA of train_loss into column "smooth"
 *   run.rebuild(historyRows, lastSeq, liveRowsSince)    // start over from a downsampled history
 *   const onRows = liveIngest(run, {maxPoints, fetchHistory})  // live rows; compacts itself
 *   const c = new MetricChart(el, {series: [{source: run, table: "train", key: "train_loss",
 *             label, color, width, dash, points}], x: "step" | "tokens", logY, height, yFormat})
 *   c.setX(x); c.setLogY(bool); c.resetZoom(); c.flush(); c.destroy()
 *   c.setSeries(series)                                 // e.g. when a new eval set appears
 *   c.pointCount                                        // points given to uPlot in the last draw
 *
 * Double-click resets the zoom; drag selects an x range to zoom into.
 */

const BLOCKS = 512; // pyramid: between BLOCKS and 2*BLOCKS blocks, two points each
const RANGE_BUDGET = 2048; // points drawn for a zoomed range

// -- column store ---------------------------------------------------------------------------

export class Table {
  constructor(keys) {
    this.n = 0;
    this.cap = 256;
    this.cols = new Map();
    this.decimators = new Map();
    for (const k of keys) this.addKey(k);
  }

  addKey(key) {
    if (this.cols.has(key)) return false;
    this.cols.set(key, new Float64Array(this.cap).fill(NaN));
    return true;
  }

  col(key) {
    return this.cols.get(key);
  }

  reserve(extra) {
    const need = this.n + extra;
    if (need <= this.cap) return;
    let cap = this.cap;
    while (cap < need) cap *= 2;
    for (const [key, old] of this.cols) {
      const next = new Float64Array(cap).fill(NaN, this.n);
      next.set(old.subarray(0, this.n));
      this.cols.set(key, next);
    }
    this.cap = cap;
  }

  /** Drop rows from index `n` on (a resumed run re-logs steps after its checkpoint). */
  truncate(n) {
    if (n >= this.n) return;
    for (const col of this.cols.values()) col.fill(NaN, n, this.n);
    this.n = n;
    for (const d of this.decimators.values()) d.reset();
  }

  decimator(key) {
    let d = this.decimators.get(key);
    if (!d) this.decimators.set(key, (d = new Decimator(this, key)));
    d.update();
    return d;
  }
}

/** argmin/argmax of `key` per block of rows; blocks double in size to stay <= BLOCKS. */
class Decimator {
  constructor(table, key) {
    this.table = table;
    this.key = key;
    this.reset();
  }

  reset() {
    this.size = 1;
    this.count = 0;
    this.done = 0;
    this.mins = new Int32Array(BLOCKS * 2 + 2);
    this.maxs = new Int32Array(BLOCKS * 2 + 2);
  }

  update() {
    const y = this.table.col(this.key);
    const n = this.table.n;
    const { mins, maxs } = this;
    for (let i = this.done; i < n; i++) {
      const b = Math.floor(i / this.size);
      const v = y[i];
      const ok = v === v; // not NaN
      if (b >= this.count) {
        mins[b] = maxs[b] = ok ? i : -1;
        this.count = b + 1;
        if (this.count > BLOCKS * 2) this.coarsen(y);
      } else if (ok) {
        if (mins[b] < 0 || v < y[mins[b]]) mins[b] = i;
        if (maxs[b] < 0 || v > y[maxs[b]]) maxs[b] = i;
      }
    }
    this.done = n;
  }

  coarsen(y) {
    const { mins, maxs } = this;
    const half = Math.ceil(this.count / 2);
    for (let k = 0; k < half; k++) {
      const a = 2 * k;
      const b = a + 1;
      let lo = mins[a];
      let hi = maxs[a];
      if (b < this.count) {
        if (mins[b] >= 0 && (lo < 0 || y[mins[b]] < y[lo])) lo = mins[b];
        if (maxs[b] >= 0 && (hi < 0 || y[maxs[b]] > y[hi])) hi = maxs[b];
      }
      mins[k] = lo;
      maxs[k] = hi;
    }
    this.count = half;
    this.size *= 2;
  }

  /** Row indices to draw for the whole table, ascending. */
  indices() {
    const n = this.table.n;
    if (n <= BLOCKS * 2) return identity(0, n);
    const out = new Int32Array(this.count * 2 + 2);
    let m = 0;
    out[m++] = 0;
    for (let b = 0; b < this.count; b++) {
      let a = this.mins[b];
      let c = this.maxs[b];
      if (a < 0) continue;
      if (a > c) [a, c] = [c, a];
      if (a > out[m - 1]) out[m++] = a;
      if (c > out[m - 1]) out[m++] = c;
    }
    if (out[m - 1] !== n - 1) out[m++] = n - 1; // the live tip is always exact
    return out.subarray(0, m);
  }
}

function identity(from, to) {
  const out = new Int32Array(Math.max(0, to - from));
  for (let i = 0; i < out.length; i++) out[i] = from + i;
  return out;
}

function lowerBound(a, n, x) {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Indices of rows with lo <= x <= hi (plus one each side so lines reach the edges). */
function rangeIndices(table, xKey, yKey, lo, hi) {
  const x = table.col(xKey);
  const y = table.col(yKey);
  const n = table.n;
  const i0 = Math.max(0, lowerBound(x, n, lo) - 1);
  const i1 = Math.min(n, lowerBound(x, n, hi) + 1);
  const span = i1 - i0;
  if (span <= RANGE_BUDGET) return identity(i0, i1);
  const size = Math.ceil(span / (RANGE_BUDGET / 2));
  const out = [];
  for (let s = i0; s < i1; s += size) {
    const e = Math.min(i1, s + size);
    let a = -1;
    let c = -1;
    for (let i = s; i < e; i++) {
      const v = y[i];
      if (v !== v) continue;
      if (a < 0 || v < y[a]) a = i;
      if (c < 0 || v > y[c]) c = i;
    }
    if (a < 0) continue;
    if (a > c) [a, c] = [c, a];
    out.push(a);
    if (c !== a) out.push(c);
  }
  return out;
}

// -- a run's metrics ------------------------------------------------------------------------

const TRAIN_KEYS = ["step", "tokens", "train_loss", "smooth", "learning_rate", "tokens_per_second", "peak_memory", "time", "grad_norm"];
const RESERVED_EVAL = new Set(["val_loss", "train_loss", "step", "seq", "v", "time", "trained_tokens"]);

/**
 * Columns of one run: table "train" (train events) and "eval" (eval events, one column per
 * held-out set: val_loss, then `<name>_loss` for each extra set in `evalSets`).
 */
export class RunData {
  constructor({ smoothing = 0.6 } = {}) {
    this.train = new Table(TRAIN_KEYS);
    this.eval = new Table(["step", "tokens", "val_loss"]);
    this.evalSets = [];
    this.smoothing = smoothing;
    this.ema = 0;
    this.emaCount = 0;
    this.lastSeq = 0;
    this.listeners = new Set();
  }

  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  ingest(rows) {
    let newSets = false;
    let from = 0; // start of the current run of consecutive train rows
    for (let i = 0; i < rows.length; i++) {
      const row = rows[i];
      if (typeof row.seq === "number" && row.seq > this.lastSeq) this.lastSeq = row.seq;
      if (row.event === "train") continue;
      if (i > from) this.ingestTrain(rows, from, i);
      from = i + 1;
      // Train rows before an eval are in, so tokensAt() can place it on the token axis.
      if (row.event === "eval") newSets = this.ingestEval(row) || newSets;
    }
    if (rows.length > from) this.ingestTrain(rows, from, rows.length);
    for (const fn of this.listeners) fn({ newSets });
  }

  /** Bulk columns, e.g. {step: Float64Array, train_loss: ..., tokens: ...}: the fast path. */
  ingestColumns(cols) {
    const t = this.train;
    const n = cols.step.length;
    t.reserve(n);
    for (const [key, values] of Object.entries(cols)) {
      t.addKey(key);
      t.col(key).set(values, t.n);
    }
    const start = t.n;
    t.n += n;
    this.smoothFrom(start);
    for (const fn of this.listeners) fn({ newSets: false });
  }

  /** Train rows rows[from..to) (all train events), appended column by column. */
  ingestTrain(rows, from = 0, to = rows.length) {
    const t = this.train;
    t.reserve(to - from);
    const [step, tokens, loss, smooth, lr, tps, mem, time, gnorm] = TRAIN_KEYS.map((k) => t.col(k));
    const w = this.smoothing;
    let n = t.n;
    for (let r = from; r < to; r++) {
      const row = rows[r];
      const s = row.step;
      if (n && !(s > step[n - 1])) {
        t.n = n;
        t.truncate(lowerBound(step, n, s)); // a resume re-logs steps: the newest wins
        n = t.n;
        this.resmooth();
      }
      step[n] = s;
      tokens[n] = num(row.trained_tokens);
      const l = num(row.train_loss);
      loss[n] = l;
      lr[n] = num(row.learning_rate);
      tps[n] = num(row.tokens_per_second);
      mem[n] = num(row.peak_memory);
      time[n] = num(row.time);
      gnorm[n] = num(row.grad_norm);
      if (l === l) {
        // nextEma(), inlined: this loop runs once per history row.
        this.ema = this.ema * w + (1 - w) * l;
        this.emaCount += 1;
        smooth[n] = w > 0 ? this.ema / (1 - w ** this.emaCount) : l;
      } else smooth[n] = NaN;
      n++;
    }
    t.n = n;
  }

  ingestEval(row) {
    const e = this.eval;
    let added = false;
    const sets = extraSets(row);
    for (const name of Object.keys(sets)) {
      if (e.addKey(`${name}_loss`)) {
        this.evalSets.push(name);
        added = true;
      }
    }
    e.reserve(1);
    const step = e.col("step");
    if (e.n && !(row.step > step[e.n - 1])) e.truncate(lowerBound(step, e.n, row.step));
    const i = e.n++;
    step[i] = row.step;
    const tokens = num(row.trained_tokens);
    e.col("tokens")[i] = tokens === tokens ? tokens : this.tokensAt(row.step);
    e.col("val_loss")[i] = num(row.val_loss);
    for (const [name, loss] of Object.entries(sets)) e.col(`${name}_loss`)[i] = loss;
    return added;
  }

  /** Trained tokens at a step, from the train rows (eval rows may not carry them). */
  tokensAt(s) {
    const t = this.train;
    const i = lowerBound(t.col("step"), t.n, s + 0.5) - 1;
    return i >= 0 ? t.col("tokens")[i] : NaN;
  }

  nextEma(v) {
    if (v !== v) return NaN;
    const w = this.smoothing;
    this.ema = this.ema * w + (1 - w) * v;
    this.emaCount += 1;
    // Debiased like TensorBoard's: the first points are not pulled towards zero.
    return w > 0 ? this.ema / (1 - w ** this.emaCount) : v;
  }

  smoothFrom(start) {
    const t = this.train;
    const loss = t.col("train_loss");
    const smooth = t.col("smooth");
    for (let i = start; i < t.n; i++) smooth[i] = this.nextEma(loss[i]);
  }

  resmooth() {
    this.ema = 0;
    this.emaCount = 0;
    this.smoothFrom(0);
  }

  setSmoothing(w) {
    this.smoothing = Math.min(Math.max(Number(w) || 0, 0), 0.999);
    this.resmooth();
    for (const fn of this.listeners) fn({ newSets: false });
  }

  /**
   * Start over from a downsampled history (rows up to `lastSeq`, as GET
   * /metrics?max_points= answers it) plus the live rows received since it was asked for:
   * those up to lastSeq are in the history already (sampled), the newer ones go on top, so
   * nothing is lost or repeated. Charts keep their reference to this RunData.
   */
  rebuild(rows, lastSeq, liveRows = []) {
    const sets = this.evalSets.length;
    this.train = new Table(TRAIN_KEYS);
    this.eval = new Table(["step", "tokens", "val_loss"]);
    this.evalSets = [];
    this.ema = 0;
    this.emaCount = 0;
    this.lastSeq = 0;
    this.ingest([...rows, ...liveRows.filter((r) => r.seq > lastSeq)]);
    this.lastSeq = Math.max(this.lastSeq, lastSeq);
    if (this.evalSets.length !== sets) for (const fn of this.listeners) fn({ newSets: true });
  }

  /** Last value of a column (NaN if none). */
  last(table, key) {
    const t = this[table];
    const col = t.col(key);
    for (let i = t.n - 1; i >= 0; i--) if (col[i] === col[i]) return col[i];
    return NaN;
  }
}

function num(x) {
  return typeof x === "number" ? x : NaN;
}

/**
 * Live rows for a RunData that stays small: rows are ingested at full resolution, and once
 * the train table holds more than `factor` × maxPoints() rows, the downsampled history is
 * fetched again (fetchHistory() -> {rows, last_seq}) and the run rebuilt from it plus the
 * rows that arrived meanwhile. Returns the onRows(rows) function to feed the live stream to.
 */
export function liveIngest(run, { maxPoints, fetchHistory, factor = 4 }) {
  let pending = null; // rows received while a history request is out
  let retryAt = 0; // after a failed fetch, wait for this many rows before trying again
  return (rows) => {
    if (pending) pending.push(...rows);
    run.ingest(rows);
    const limit = Math.max(factor * maxPoints(), retryAt);
    if (pending || run.train.n <= limit) return;
    const live = (pending = []);
    fetchHistory()
      .then((res) => {
        run.rebuild(res.rows || [], res.last_seq || 0, live);
        retryAt = 0;
      })
      .catch(() => {
        retryAt = run.train.n * 2;
      })
      .finally(() => {
        pending = null;
      });
  };
}

/** Extra held-out sets of an eval event: {name: loss}, from `val_<name>_loss` / `<name>_loss`
 * keys or a nested `eval_sets` mapping (as training/metrics/checkpoint_table.py eval_losses reads them). */
function extraSets(row) {
  const out = {};
  const nested = row.sets || row.eval_sets;
  if (nested && typeof nested === "object") {
    for (const [name, value] of Object.entries(nested)) {
      const loss = typeof value === "number" ? value : value && value.loss;
      if (typeof loss === "number") out[name] = loss;
    }
  }
  // The trainer writes an extra set as val_<name>_loss (contract/protocol.py eval_set_keys).
  for (const [key, value] of Object.entries(row)) {
    if (key.endsWith("_loss") && !RESERVED_EVAL.has(key) && typeof value === "number") {
      const name = key.slice(0, -5);
      out[name.startsWith("val_") ? name.slice(4) : name] = value;
    }
  }
  return out;
}

// -- the chart ------------------------------------------------------------------------------

const PALETTE = ["--series-1", "--series-2", "--series-3", "--series-4", "--series-5", "--series-6", "--series-7", "--series-8"];

export function seriesColor(i) {
  return cssVar(PALETTE[i % PALETTE.length]);
}

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

export class MetricChart {
  constructor(el, { series = [], x = "step", logY = false, height = 220, yFormat, xFormat, onDraw } = {}) {
    this.el = el;
    this.onDraw = onDraw;
    this.series = series;
    this.x = x;
    this.logY = logY;
    this.height = height;
    this.yFormat = yFormat || ((v) => (v == null ? "–" : Number(v.toPrecision(4)).toString()));
    this.xFormat = xFormat || compactTick;
    this.zoom = null;
    this.plot = null;
    this.pointCount = 0;
    this.frame = 0;
    this.unsub = [];
    this.watchSources();
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(el);
    this.themeWatch = new MutationObserver(() => this.rebuild());
    this.themeWatch.observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });
    this.rebuild();
  }

  watchSources() {
    for (const u of this.unsub) u();
    this.unsub = [...new Set(this.series.map((s) => s.source))].map((src) =>
      src.onChange(() => this.scheduleRedraw())
    );
  }

  setSeries(series) {
    this.series = series;
    this.watchSources();
    this.rebuild();
  }

  setX(x) {
    if (x === this.x) return;
    this.x = x;
    this.zoom = null;
    this.rebuild();
  }

  setLogY(on) {
    if (on === this.logY) return;
    this.logY = on;
    this.rebuild();
  }

  resetZoom() {
    this.zoom = null;
    this.redraw(true);
  }

  scheduleRedraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.redraw(!this.zoom);
    });
  }

  /** Draw now (benchmarks, tests); normally redraws are coalesced per animation frame. */
  flush() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.redraw(!this.zoom);
  }

  /** The aligned data uPlot wants, decimated for the current zoom. */
  view() {
    const xKey = this.x === "tokens" ? "tokens" : "step";
    // Series that share a table share its row indices: one pass per (source, table).
    const groups = new Map();
    for (const [i, s] of this.series.entries()) {
      const table = s.source[s.table];
      let g = groups.get(table);
      if (!g) groups.set(table, (g = { table, primary: s.key, members: [] }));
      g.members.push(i);
    }
    const parts = [];
    for (const g of groups.values()) {
      if (!g.table.n) continue;
      const idx = this.zoom
        ? rangeIndices(g.table, xKey, g.primary, this.zoom.min, this.zoom.max)
        : g.table.decimator(g.primary).indices();
      const xs = g.table.col(xKey);
      // Rows without an x (no token count yet) cannot be placed.
      const keep = [];
      for (const i of idx) if (xs[i] === xs[i]) keep.push(i);
      parts.push({ ...g, idx: keep, xs });
    }
    const X = mergeX(parts);
    const data = [X];
    for (let i = 0; i < this.series.length; i++) data.push(new Array(X.length).fill(null));
    const logY = this.logY;
    for (const p of parts) {
      let j = 0;
      for (const i of p.idx) {
        const xv = p.xs[i];
        while (X[j] < xv) j++;
        for (const m of p.members) {
          const s = this.series[m];
          const v = p.table.col(s.key)[i];
          if (v === v && !(logY && v <= 0)) data[m + 1][j] = v;
        }
      }
    }
    return data;
  }

  redraw(resetScales = true) {
    if (!this.plot) return;
    const data = this.view();
    this.pointCount = data[0].length;
    this.el.dataset.points = String(this.pointCount);
    this.plot.setData(data, resetScales);
    if (!resetScales && this.zoom) this.plot.setScale("x", this.zoom);
    this.toggleEmpty();
  }

  toggleEmpty() {
    const empty = this.el.querySelector(".chart-empty");
    if (empty) empty.hidden = this.pointCount > 0;
  }

  rebuild() {
    if (this.plot) this.plot.destroy();
    const data = this.view();
    this.pointCount = data[0].length;
    this.el.dataset.points = String(this.pointCount);
    this.plot = new window.uPlot(this.options(), data, this.el);
    if (this.zoom) this.plot.setScale("x", this.zoom);
    this.toggleEmpty();
  }

  resize() {
    if (!this.plot) return;
    const width = Math.max(200, Math.floor(this.el.clientWidth - 16));
    if (width !== this.plot.width) this.plot.setSize({ width, height: this.height });
  }

  options() {
    const axis = cssVar("--chart-axis");
    const grid = cssVar("--chart-grid");
    const font = `11px ${cssVar("--font-sans")}`;
    const yFmt = this.yFormat;
    const axisStyle = { stroke: axis, font, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 4 } };
    return {
      width: Math.max(200, Math.floor(this.el.clientWidth - 16)),
      height: this.height,
      cursor: {
        drag: { x: true, y: false, setScale: false },
        points: { size: 6 },
        bind: {
          dblclick: () => () => {
            this.resetZoom();
            return null;
          },
        },
      },
      legend: { live: true },
      scales: {
        x: { time: false },
        y: { distr: this.logY ? 3 : 1, log: 10 },
      },
      axes: [
        { ...axisStyle, values: (u, ticks) => ticks.map(this.xFormat) },
        { ...axisStyle, size: 56, values: (u, ticks) => ticks.map((v) => yFmt(v)) },
      ],
      series: [
        { label: this.x === "tokens" ? "tokens" : "step", value: (u, v, si, idx) => fmtX(idx == null ? latest(u, 0) : v) },
        ...this.series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: s.width ?? 1.5,
          dash: s.dash,
          alpha: s.alpha ?? 1,
          spanGaps: true,
          points: { show: s.points ?? false, size: 5, fill: s.color },
          // Off the plot, the legend shows the latest values rather than dashes.
          value: (u, v, si, idx) => yFmt(idx == null ? latest(u, si) : v),
        })),
      ],
      hooks: {
        draw: [() => this.onDraw && this.onDraw(this)],
        setSelect: [
          (u) => {
            if (u.select.width < 4) return;
            const min = u.posToVal(u.select.left, "x");
            const max = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            this.zoomTo(min, max);
          },
        ],
      },
    };
  }

  zoomTo(min, max) {
    this.zoom = { min, max };
    this.plot.setData(this.view(), false);
    this.plot.setScale("x", this.zoom);
  }

  destroy() {
    if (this.frame) cancelAnimationFrame(this.frame);
    for (const u of this.unsub) u();
    this.resizer.disconnect();
    this.themeWatch.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

/** Sorted union of the groups' x values (one group: its own x values). */
function mergeX(parts) {
  let X = [];
  for (const p of parts) {
    const xs = p.idx.map((i) => p.xs[i]);
    if (!X.length) {
      X = xs;
      continue;
    }
    const out = [];
    let a = 0;
    let b = 0;
    while (a < X.length || b < xs.length) {
      const va = a < X.length ? X[a] : Infinity;
      const vb = b < xs.length ? xs[b] : Infinity;
      if (va < vb) out.push(X[a++]);
      else if (vb < va) out.push(xs[b++]);
      else {
        out.push(va);
        a++;
        b++;
      }
    }
    X = out;
  }
  return X;
}

function latest(u, sidx) {
  const d = u.data[sidx] || [];
  for (let i = d.length - 1; i >= 0; i--) if (d[i] != null) return d[i];
  return null;
}

const fmtX = (v) => (v == null ? "–" : compactTick(v));

function compactTick(v) {
  if (v == null) return "";
  const a = Math.abs(v);
  if (a >= 1e9) return `${+(v / 1e9).toPrecision(3)}B`;
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`;
  return String(+v.toPrecision(6));
}
