/**
 * The learning-rate schedule a config describes, plotted on the New run page before launch.
 * The values come from the console (POST /api/config/lr_schedule), which runs the trainer's
 * own schedule function (training/contract/schedule.py): the plot is the curve the trainer
 * follows, step for step, for every shape (constant, cosine, linear, wsd, mlx-lm mappings).
 *
 *   LrPlot(el).update(config, totalSteps) -> Promise<string>: draws it (uPlot, at most 400
 *       points) and resolves to a one-line summary ("" when it cannot be drawn yet); a LoRA
 *       run with train_embeddings also gets the embeddings' and head's rate, dashed
 */
import { cssVar } from "./chart.js";
import { fmt } from "./dom.js";
import { api } from "./api.js";

const POINTS = 400;

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

  /** Resolves to a one-line summary, or "" when the schedule cannot be drawn yet. */
  async update(config, totalSteps) {
    this.last = [config, totalSteps];
    const seq = (this.seq = (this.seq || 0) + 1);
    let res = null;
    if (totalSteps > 0 && window.uPlot) {
      try {
        res = await api.post("/api/config/lr_schedule", { config, total_steps: Math.round(totalSteps), max_points: POINTS });
      } catch {
        res = null; // a setting the validation marks in the form
      }
    }
    if (seq !== this.seq) return this.summary || "";
    const empty = this.el.querySelector(".chart-empty");
    if (!res || !res.steps.length) {
      if (this.plot) this.plot.destroy();
      this.plot = null;
      if (empty) empty.hidden = false;
      return (this.summary = "");
    }
    if (empty) empty.hidden = true;
    const xs = res.steps;
    const values = (list) => list.map((v) => (v == null ? NaN : v));
    const data = [xs, values(res.learning_rates)];
    // train_embeddings: the embeddings' and head's own rate, dashed under the adapters'.
    const embeddings = Array.isArray(res.embedding_learning_rates);
    if (embeddings) data.push(values(res.embedding_learning_rates));
    const n = xs.length;
    const key = JSON.stringify([xs.length, xs[n - 1], embeddings]);
    if (this.plot && key === this.key) this.plot.setData(data);
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
          series: [
            {},
            { stroke: cssVar("--accent"), width: 1.75, fill: cssVar("--accent-soft") },
            ...(embeddings ? [{ stroke: axis, width: 1.5, dash: [5, 4] }] : []),
          ],
        },
        data,
        this.el
      );
    }
    const summary = `peak ${fmt.lr(res.peak)} · ends ${fmt.lr(res.final)}`;
    if (!embeddings) return (this.summary = summary);
    const peak = Math.max(...res.embedding_learning_rates);
    return (this.summary = `${summary} · embeddings and head (dashed): peak ${fmt.lr(peak)}`);
  }
}
