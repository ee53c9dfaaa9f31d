"""Our PES and ES-Single beside evosax's PersistentES and NoiseReuseES: same estimates, and how fast.

    python -m benchmarks.evosax_compare [--quick | --tiny] [--task rnn_char | influence_balancing] [--out DIR]

Both sides run the same task with the same N (antithetic pairs), σ and K, in lockstep (stagger=False: every
particle starts an episode at step 0 of the first window; K divides T, so episodes end at window boundaries,
as evosax requires). Pairs: pes ↔ persistent_es, es_single ↔ noise_reuse_es.

(a) Agreement in distribution. Each side is run R times independently for W windows (W > T/K, so a reset is
covered); per window w and coordinate j, z_wj = (ḡ_ours − ḡ_evosax)/√(se_ours² + se_evosax²). Reported: the
max |z| over the m = W·d comparisons, with its Bonferroni p-value min(1, 2m·Φ(−max|z|)), the fraction of
|z| > 1.96 and the mean z² (≈ 1 when they agree); and a two-sample Hotelling T² test on the W·P projections of
the window estimates onto P fixed random directions (all coordinates when d ≤ P), with its F p-value. As a
check that the test has power, our truncated ES (biased: it ignores θ's effect on each window's starting
state) is compared with evosax's PersistentES the same way.
(b) Time per estimate. Every estimator's `estimate` is jitted and warmed up; repeats are interleaved (one call
of each in turn, blocking on the result) and the median is reported, with ours/evosax ratios, per N.
"""
import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy import stats

import unrolled_es_tasks as tasks
import unrolled_es as ue
from benchmarks.common import make_taking
from benchmarks.evosax_peer import evosax_estimator

PAIRS = (("pes", "persistent_es"), ("es_single", "noise_reuse_es"))
PRESETS = {
    "full": dict(task="rnn_char", horizon=40, k=10, windows=6, particles=16, repeats=512, sigma=1e-3,
                 timing_particles=(64, 1024), timing_reps=21, control=True),
    "quick": dict(task="rnn_char", horizon=40, k=10, windows=5, particles=16, repeats=128, sigma=1e-3,
                  timing_particles=(64, 1024), timing_reps=5, control=False),
    "tiny": dict(task="influence_balancing", horizon=20, k=5, windows=6, particles=8, repeats=512, sigma=0.1,
                 timing_particles=(64,), timing_reps=3, control=True),
}
TASK_KW = {"rnn_char": dict(hidden=5, data="real"), "influence_balancing": {}}
DEFAULT_SIGMA = {"rnn_char": 1e-3, "influence_balancing": 0.1}


def build(name, system, particles, sigma, k):
  if name in ("persistent_es", "noise_reuse_es"):
    return evosax_estimator(name, system, num_particles=particles, sigma=sigma, truncation_length=k)
  return make_taking(name, system, num_particles=particles, sigma=sigma, truncation_length=k, stagger=False)


def window_estimates(est, theta, windows, repeats, seed):
  """[repeats, windows, d] float64: R independent runs of `windows` consecutive estimates (flattened θ)."""
  def one(key):
    state = est.init(jax.random.fold_in(key, 1 << 30), theta)

    def body(state, w):
      g, state, _ = est.estimate(jax.random.fold_in(key, w), theta, state)
      return state, ravel_pytree(g)[0]
    return jax.lax.scan(body, state, jnp.arange(windows))[1]
  keys = jax.random.split(jax.random.PRNGKey(seed), repeats)
  return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


def agreement(a, b, projections=4, seed=0, alpha=0.01):
  """Two-sample comparison of window estimates a, b [R, W, d] (see the module docstring)."""
  r, w, d = a.shape
  se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
  ok = se > 0
  z = np.where(ok, (a.mean(0) - b.mean(0)) / np.where(ok, se, 1.0), 0.0)
  m = int(ok.sum())
  max_z = float(np.abs(z).max())
  out = {"comparisons": m, "max_abs_z": max_z,
         "bonferroni_p": float(min(1.0, 2 * m * stats.norm.sf(max_z))),
         "z_threshold": float(stats.norm.isf(alpha / (2 * m))), "alpha": alpha,
         "frac_abs_z_over_1.96": float(np.mean(np.abs(z[ok]) > 1.96)), "mean_z_sq": float(np.mean(z[ok] ** 2)),
         "max_abs_z_per_window": np.abs(z).max(1).tolist()}
  if d <= projections:
    fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
  else:
    dirs = np.random.default_rng(seed).standard_normal((d, projections))
    fa, fb = (a @ dirs).reshape(len(a), -1), (b @ dirs).reshape(len(b), -1)
  out.update(hotelling(fa, fb))
  return out


def hotelling(x, y):
  """Two-sample Hotelling T² for equal means, pooled covariance; F = (n−q−1)/(q(n−2))·T² ~ F(q, n−q−1)."""
  nx, ny, q = len(x), len(y), x.shape[1]
  diff = x.mean(0) - y.mean(0)
  pooled = ((nx - 1) * np.cov(x, rowvar=False) + (ny - 1) * np.cov(y, rowvar=False)) / (nx + ny - 2)
  t2 = float(nx * ny / (nx + ny) * diff @ np.linalg.solve(np.atleast_2d(pooled), diff))
  f = (nx + ny - q - 1) / (q * (nx + ny - 2)) * t2
  return {"hotelling_dims": q, "hotelling_t2": t2, "hotelling_p": float(stats.f.sf(f, q, nx + ny - q - 1))}


def timings(system, theta, particles, sigma, k, reps, seed=0):
  """Median seconds per `estimate` call of each estimator, interleaved after a jit warm-up."""
  names = [n for pair in PAIRS for n in pair]
  fns, states = {}, {}
  for n in names:
    est = build(n, system, particles, sigma, k)
    fns[n] = jax.jit(est.estimate)
    states[n] = est.init(jax.random.PRNGKey(seed), theta)
    for i in range(2):  # compile, then one more call with the post-first-window state
      g, states[n], _ = fns[n](jax.random.PRNGKey(i), theta, states[n])
      jax.block_until_ready(g)
  times = {n: [] for n in names}
  for rep in range(reps):
    key = jax.random.PRNGKey(100 + rep)
    for n in names[rep % len(names):] + names[:rep % len(names)]:   # rotate who goes first
      start = time.perf_counter()
      g, states[n], _ = fns[n](key, theta, states[n])
      jax.block_until_ready(g)
      times[n].append(time.perf_counter() - start)
  med = {n: float(np.median(t)) for n, t in times.items()}
  out = {"median_seconds": med, "iqr_seconds": {n: [float(v) for v in np.percentile(t, [25, 75])]
                                                for n, t in times.items()}}
  out["ratio_ours_over_evosax"] = {f"{o}/{e}": med[o] / med[e] for o, e in PAIRS}
  return out


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for pair, rec in results["agreement"].items():
    z = rec["max_abs_z_per_window"]
    axes[0].plot(np.arange(len(z)), z, "-o", label=pair)
  thr = next(iter(results["agreement"].values()))["z_threshold"]
  axes[0].axhline(thr, color="k", ls="--", label=f"Bonferroni threshold (α={results['agreement_alpha']})")
  axes[0].set_xlabel("window")
  axes[0].set_ylabel("max |z| over coordinates")
  axes[0].set_ylim(0, 1.15 * max(thr, max(max(r["max_abs_z_per_window"]) for r in results["agreement"].values())))
  axes[0].set_title("ours vs evosax: mean estimates per window")
  axes[0].legend(fontsize=8)
  ns = sorted(results["timing"], key=int)
  x = np.arange(len(ns))
  names = [n for pair in PAIRS for n in pair]
  for i, n in enumerate(names):
    axes[1].bar(x + (i - 1.5) * 0.2, [results["timing"][k]["median_seconds"][n] * 1e3 for k in ns], width=0.2,
                label=n)
  axes[1].set_xticks(x, [f"N={k}" for k in ns])
  axes[1].set_yscale("log")
  axes[1].set_ylabel("ms per estimate (median)")
  axes[1].set_title(f"time per estimate (K={results['settings']['k']})")
  axes[1].legend(fontsize=8)
  fig.suptitle(f"{results['settings']['task']}: T={results['settings']['horizon']}, K={results['settings']['k']}, "
               f"σ={results['settings']['sigma']}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--quick", action="store_true", help="fewer repeats (< 2 minutes on 2 CPU cores)")
  mode.add_argument("--tiny", action="store_true", help="influence balancing, small sizes (for tests)")
  parser.add_argument("--task", choices=tuple(TASK_KW), default=None, help="override the preset's task")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  preset = "tiny" if args.tiny else "quick" if args.quick else "full"
  cfg = dict(PRESETS[preset])
  if args.task is not None and args.task != cfg["task"]:
    cfg.update(task=args.task, sigma=DEFAULT_SIGMA[args.task])
  os.makedirs(args.out, exist_ok=True)
  from tqdm import tqdm

  start = time.perf_counter()
  task = tasks.get(cfg["task"], horizon=cfg["horizon"], **TASK_KW[cfg["task"]])
  theta, system = task.theta0, task.system
  comparisons = list(PAIRS) + ([("truncated_es", "persistent_es")] if cfg["control"] else [])
  names = list(dict.fromkeys(n for pair in comparisons for n in pair))
  samples = {}
  for i, n in enumerate(tqdm(names, desc="agreement")):
    samples[n] = window_estimates(build(n, system, cfg["particles"], cfg["sigma"], cfg["k"]), theta,
                                  cfg["windows"], cfg["repeats"], args.seed + 1000 * (i + 1))
  alpha = 0.01
  results = {"preset": preset, "jax": jax.__version__, "settings": dict(cfg, dim=int(samples[names[0]].shape[-1])),
             "agreement_alpha": alpha, "agreement": {}, "timing": {}}
  for ours, theirs in comparisons:
    key = f"{ours}_vs_{theirs}"
    results["agreement"][key] = agreement(samples[ours], samples[theirs], seed=args.seed, alpha=alpha)
  for n in tqdm(cfg["timing_particles"], desc="timing"):
    results["timing"][str(n)] = timings(system, theta, n, cfg["sigma"], cfg["k"], cfg["timing_reps"])
  results["seconds"] = round(time.perf_counter() - start, 1)
  suffix = "" if preset == "full" else f"_{preset}"
  if cfg["task"] != PRESETS[preset]["task"]:   # keep the preset's own files
    suffix += f"_{cfg['task']}"
  path = os.path.join(args.out, f"evosax_compare{suffix}.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  plot(results, os.path.join(args.out, f"evosax_compare{suffix}.png"))
  for key, rec in results["agreement"].items():
    print(f"{key}: max|z| = {rec['max_abs_z']:.2f} over {rec['comparisons']} (Bonferroni p = "
          f"{rec['bonferroni_p']:.3g}), Hotelling p = {rec['hotelling_p']:.3g}")
  for n, rec in results["timing"].items():
    print(f"N={n}: " + ", ".join(f"{k} {v:.2f}" for k, v in rec["ratio_ours_over_evosax"].items()))
  print(f"wrote {path} in {results['seconds']} s")
  return results


if __name__ == "__main__":
  main()
