// Forgetting beside the domain gain, from a run's evaluations (RunData's eval table): the
// general set's loss change and the validation loss's fall, both since the first evaluation.

/** The held-out set that stands for general text: "general" if there is one, else the first
 * extra set (a replay source or an eval set). */
export function generalSet(sets) {
  return sets.find((name) => name === "val_general") || sets[0] || null;
}

/** First and last finite values of an eval column (null without two evaluations). */
function firstLast(run, key) {
  const e = run.eval;
  const col = e.col(key);
  const steps = e.col("step");
  if (!col || !steps) return null;
  let first = null;
  let last = null;
  for (let i = 0; i < e.n; i++) {
    if (!(col[i] === col[i])) continue;
    if (first === null) first = { v: col[i], step: steps[i] };
    last = { v: col[i], step: steps[i] };
  }
  return first && last && last.step > first.step ? { first, last } : null;
}

/** {set, since, rise (general loss now − at the first evaluation), gain (validation loss
 * at the first evaluation − now)}; rise or gain null when unknown; null without a set. */
export function forgetting(run) {
  const set = generalSet(run.evalSets);
  if (!set) return null;
  const general = firstLast(run, `${set}_loss`);
  const domain = firstLast(run, "val_loss");
  return {
    set: set.replace(/^val_/, ""),
    since: general ? general.first.step : null,
    rise: general ? general.last.v - general.first.v : null,
    gain: domain ? domain.first.v - domain.last.v : null,
  };
}

export const signed = (v) => (v == null ? "–" : `${v >= 0 ? "+" : "−"}${Math.abs(v).toFixed(3)}`);
