"""The held-out suite's statistics, in numpy: paired intervals, VeLO's speed-up, the interquartile mean.

- Paired difference (learned − tuned baseline) over seeds that share the problem draw, the initialisation and
  the minibatches: mean ± t_{0.975, n−1}·s/√n (Student t). "Significantly better" means the interval lies below
  0, "worse" above 0, otherwise "not different".
- Speed-up (Metz et al., "VeLO", 2022, §5): the steps the baseline needs to reach the learned optimizer's final
  training loss, over the learned optimizer's steps, capped at `cap`. Curves are the seed-mean training losses
  smoothed by a trailing moving average (per-step minibatch losses are noisy); the learned optimizer's final
  loss is its smoothed curve's last value; the baseline runs `cap` times as long, and never reaching it counts
  as `cap`.
- Interquartile mean (Agarwal et al., "Deep RL at the edge of the statistical precipice", 2021): the mean of
  the middle half of the sorted values, the ends weighted fractionally when n is not a multiple of 4.
"""
import math

import numpy as np
from scipy import stats


def paired_ci(a, b, level=0.95):
  """(mean, low, high) of a − b over paired samples (NaN interval when fewer than 2 or any non-finite)."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  n, mean = d.size, float(np.mean(d))
  if n < 2 or not np.all(np.isfinite(d)):
    return mean, float("nan"), float("nan")
  half = float(stats.t.ppf((1 + level) / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
  return mean, mean - half, mean + half


def verdict(ci) -> str:
  """"better" (interval below 0: lower loss), "worse" (above 0) or "not different"."""
  _, low, high = ci
  if not (math.isfinite(low) and math.isfinite(high)):
    return "not different"
  return "better" if high < 0 else "worse" if low > 0 else "not different"


def smooth(curve, window):
  """Trailing moving average (the first values average what there is so far)."""
  c = np.cumsum(np.asarray(curve, np.float64))
  w = max(1, int(window))
  out = c.copy()
  out[w:] = c[w:] - c[:-w]
  return out / np.minimum(np.arange(1, len(c) + 1), w)


def speedup(learned_curve, baseline_curve, cap=4.0, window=None):
  """Baseline steps to reach the learned optimizer's final (smoothed) training loss / the learned steps."""
  steps = len(learned_curve)
  window = max(1, steps // 20) if window is None else window
  target = smooth(learned_curve, window)[-1]
  reached = np.nonzero(smooth(baseline_curve, window) <= target)[0]
  if not np.isfinite(target) or reached.size == 0:
    return float(cap)
  return float(min(cap, (reached[0] + 1) / steps))


def iqm(values):
  """Interquartile mean of `values`."""
  x = np.sort(np.asarray(values, np.float64))
  n = x.size
  lo, hi = 0.25 * n, 0.75 * n
  weights = np.clip(np.minimum(np.arange(1, n + 1), hi) - np.maximum(np.arange(n), lo), 0.0, 1.0)
  return float(np.sum(weights * x) / np.sum(weights))


def counts(verdicts) -> dict:
  return {v: sum(1 for x in verdicts if x == v) for v in ("better", "not different", "worse")}
