/**
 * The learning-rate schedule a config describes, computed in the browser so the New run page
 * can plot it before launch. Mirrors the trainer: linear warmup from 0 (or an mlx-lm
 * mapping's warmup_init) over warmup_steps, then constant, cosine or linear decay to
 * min_learning_rate over the remaining steps; mlx-lm schedule mappings from YAML
 * (cosine_decay, linear_schedule, exponential_decay, step_decay) follow mlx.optimizers.
 *
 *   scheduleFn(config, totalSteps) -> (step) => learning rate, or null if not computable
 *   LrPlot(el).update(config, totalSteps) -> draws it (uPlot, at most 400 points)
 */
import { cssVar } from "./chart.js";
import { fmt } from "./dom.js";

const num = (v, d = NaN) => {
  const x = typeof v === "number" ? v : parseFloat(v);
  return Number.isFinite(x) ? x : d;
};

const MLX = {
  cosine_decay: ([init, decaySteps, end = 0]) => (s) => {
    const t = Math.min(s, decaySteps);
    return end + (init - end) * 0.5 * (1 + Math.cos((Math.PI * t) / decaySteps));
  },
  linear_schedule: ([init, end, steps]) => (s) => init + ((end - init) * Math.min(s, steps)) / steps,
  exponential_decay: ([init, rate]) => (s) => init * rate ** s,
  step_decay: ([init, rate, size]) => (s) => init * rate ** Math.floor(s / size),
};

export function scheduleFn(config, totalSteps) {
  const sched = config.lr_schedule ?? "cosine";
  if (sched && typeof sched === "object") {
    const make = MLX[sched.name];
    if (!make || !Array.isArray(sched.arguments)) return null;
    const after = make(sched.arguments.map(Number));
    const warm = num(sched.warmup, 0);
    const init = num(sched.warmup_init, 0);
    const peak = after(0);
    return (s) => (s < warm ? init + ((peak - init) * s) / warm : after(s - warm));
  }
  const lr = num(config.learning_rate);
  const warm = Math.max(0, num(config.warmup_steps, 0));
  const floor = num(config.min_learning_rate, 0);
  if (!Number.isFinite(lr) || !(totalSteps > 0)) return null;
  const decay = Math.max(1, totalSteps - warm);
  return (s) => {
    if (s < warm) return (lr * s) / warm;
    const t = Math.min(1, (s - warm) / decay);
    if (sched === "cosine") return floor + (lr - floor) * 0.5 * (1 + Math.cos(Math.PI * t));
    if (sched === "linear") return lr + (floor - lr) * t;
    return lr;
  };
}

export class LrPlot {
  constructor(el) {
    this.el = el;
    this.plot = null;
    this.key = "";
    new MutationObserver(() => {
      this.key = "";
      if (this.last) this.update(...this.last);
    }).observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });
    new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: this.width(), height: 150 });
    }).observe(el);
  }

  width() {
    return Math.max(200, this.el.clientWidth - 16);
  }

  /** Returns a one-line summary, or "" when the schedule cannot be drawn yet. */
  update(config, totalSteps) {
    this.last = [config, totalSteps];
    const f = scheduleFn(config, totalSteps);
    const empty = this.el.querySelector(".chart-empty");
    if (!f || !window.uPlot) {
      if (this.plot) this.plot.destroy();
      this.plot = null;
      if (empty) empty.hidden = false;
      return "";
    }
    if (empty) empty.hidden = true;
    const n = Math.min(400, totalSteps + 1);
    const xs = new Array(n);
    const ys = new Array(n);
    for (let i = 0; i < n; i++) {
      const s = Math.round((i * totalSteps) / (n - 1 || 1));
      xs[i] = s;
      ys[i] = f(s);
    }
    const key = JSON.stringify([xs.length, xs[n - 1]]);
    if (this.plot && key === this.key) this.plot.setData([xs, ys]);
    else {
      if (this.plot) this.plot.destroy();
      this.key = key;
      const axis = cssVar("--chart-axis");
      const grid = cssVar("--chart-grid");
      const style = { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 3 } };
      this.plot = new window.uPlot(
        {
          width: this.width(),
          height: 150,
          legend: { show: false },
          cursor: { drag: { x: false, y: false } },
          scales: { x: { time: false } },
          axes: [style, { ...style, size: 56, values: (u, t) => t.map((v) => fmt.lr(v)) }],
          series: [{}, { stroke: cssVar("--accent"), width: 1.75, fill: cssVar("--accent-soft") }],
        },
        [xs, ys],
        this.el
      );
    }
    const peak = Math.max(...ys);
    return `peak ${fmt.lr(peak)} · ends ${fmt.lr(ys[n - 1])}`;
  }
}
