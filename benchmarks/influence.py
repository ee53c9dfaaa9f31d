"""Influence balancing (Vicol, Metz & Sohl-Dickstein, ICML 2021, §5.1, Fig. 4): θ over outer steps.

    python -m benchmarks.influence [--quick] [--out DIR] [--horizons 100,1000] [--steps S] [--seeds R]

The task (tasks.influence_balancing) is a linear system whose loss is quadratic in θ, with the exact optimum
θ*(T) = `influence_balancing_optimum(T)`. One step after θ changes, s[0] moves by +θ; in steady state by −6θ.
A truncation much shorter than the system's ~50-step memory misjudges θ's influence: truncated BPTT and truncated
ES converge to a wrong θ (T = 100; K = 100 at T = 1000) or run away from their fixed point (K = 1, 10 at T = 1000).

Every method runs the same outer SGD (same learning rate, steps, particles N and seeds) from θ_0 = 0.5:
truncated BPTT with K = 1, 10, 100 (K ≤ T), and truncated ES, PES and ES-Single with K = `es_truncation`
(σ = 0.1, antithetic, staggered particles). A whole run, all seeds at once, is one jitted `lax.scan` over outer
steps (vmapped over seeds); an update that would make θ non-finite is skipped, as in `unrolled_es.training.loop`.

Because the loss is quadratic and the system deterministic, the mean gradient of a truncated method is affine
in θ, exactly: E ĝ(θ) = a (θ − θ_K), where θ_K is the truncated gradient's zero (for truncated BPTT the mean of
the K-step truncated gradients over an episode; truncated ES has the same mean). With a > 0 SGD converges to θ_K;
with a < 0 it runs away from it. These are reported as "expected_fixed_point" and "expected_slope". PES and
ES-Single are unbiased: their mean gradient is ∇L, with its zero at θ*.

Published: N = 1000, σ = 0.1, SGD lr 1e-4, 3000 steps, T = ∞ (no resets). Here (full mode): the same N, σ and
steps, finite horizons T = 100 and 1000 (θ* exact), K = 10 for the ES methods, and a 10-20× larger lr (`LR`) so
that every method settles within the run. --quick: N = 64, 2 seeds, 1500 steps. Writes influence.json and
influence.png (influence_quick.* with --quick) to --out (default benchmarks/results).
"""
import argparse
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import unrolled_es_tasks as tasks
import unrolled_es as ue
from benchmarks.common import make_taking
from unrolled_es_tasks.influence_balancing import influence_balancing_optimum

METHODS = ("tbptt_k1", "tbptt_k10", "tbptt_k100", "truncated_es", "pes", "es_single")
LABELS = {"tbptt_k1": "truncated BPTT K=1", "tbptt_k10": "truncated BPTT K=10", "tbptt_k100": "truncated BPTT K=100",
          "truncated_es": "truncated ES", "pes": "PES", "es_single": "ES-Single"}
COLORS = {"tbptt_k1": "C3", "tbptt_k10": "C1", "tbptt_k100": "C5", "truncated_es": "C2", "pes": "C0",
          "es_single": "C4"}
# SGD learning rate per horizon. The online estimators' particle states remember ~50 inner steps (5 updates at
# K = 10) of earlier θ, a delay that makes large steps oscillate: at T = 1000, lr 1e-2 diverged for PES and
# ES-Single, and at 2e-3 a rare large PES estimate set off a long excursion; 1e-3 was clean.
LR = {100: 2e-3, 1000: 1e-3}
MAX_POINTS = 300  # θ is saved every max(1, ⌊steps / MAX_POINTS⌋)-th step and at the last, to keep the JSON small
FULL = dict(horizons=(100, 1000), steps=3000, seeds=5, particles=1000, sigma=0.1, lr=None, es_truncation=10)
QUICK = dict(horizons=(100, 1000), steps=1500, seeds=2, particles=64, sigma=0.1, lr=None, es_truncation=10)


def lr_for(horizon, lr=None):
  """The SGD learning rate for a horizon: `lr` if given, else LR's (the smallest of LR's for other T)."""
  return LR.get(horizon, min(LR.values())) if lr is None else lr


def truncation(method, es_truncation):
  return int(method[len("tbptt_k"):]) if method.startswith("tbptt_k") else es_truncation


def make_estimator(method, system, particles, sigma, es_truncation):
  name = "truncated_bptt" if method.startswith("tbptt_k") else method
  return make_taking(name, system, num_particles=particles, sigma=sigma, truncation_length=truncation(method, es_truncation))


def expected_truncated_gradient(system, k):
  """(fixed point θ_K, slope a) of θ ↦ 1/T Σ_t ∇θ l_t with the state entering each K-step window held constant.

  The mean over an episode of the K-step truncated gradients (K divides T), affine in θ; exact since the task
  is deterministic. K = T gives the true gradient, whose zero is θ*.
  """
  key = jax.random.PRNGKey(0)  # the task ignores keys

  def truncated_mean(theta):
    def body(s, t):
      s = jnp.where(t % k == 0, jax.lax.stop_gradient(s), s)
      return system.step(theta, s, key)
    return jnp.mean(jax.lax.scan(body, system.init(key, theta), jnp.arange(system.horizon))[1])

  grad = jax.jit(jax.grad(truncated_mean))
  g0, g1 = float(grad(jnp.float32(0.0))), float(grad(jnp.float32(1.0)))
  return -g0 / (g1 - g0), g1 - g0


def run(estimator, theta0, lr, steps, seeds, key):
  """θ after every outer step of SGD(lr) on the estimator's gradient, for `seeds` runs: [seeds, steps + 1]."""
  opt = optax.sgd(lr)

  def one(key):
    init_key, train_key = jax.random.split(key)
    state = estimator.init(init_key, theta0)

    def body(carry, i):
      theta, opt_state, state = carry
      grad, state, info = estimator.estimate(jax.random.fold_in(train_key, i), theta, state)
      updates, new_opt_state = opt.update(grad, opt_state, theta)
      new_theta = optax.apply_updates(theta, updates)
      ok = jnp.isfinite(new_theta)  # as unrolled_es.training.loop: a non-finite update is skipped
      theta = jnp.where(ok, new_theta, theta)
      return (theta, opt_state, state), (theta, jnp.logical_not(ok), info["num_nonfinite"])

    _, (thetas, skipped, nonfinite) = jax.lax.scan(body, (theta0, opt.init(theta0), state), jnp.arange(steps))
    return jnp.concatenate([theta0[None], thetas]), jnp.sum(skipped), jnp.sum(nonfinite)

  return jax.jit(jax.vmap(one))(jax.random.split(key, seeds))


def _finite(x):
  x = float(x)
  return x if math.isfinite(x) else None


def study(horizon, methods, steps, seeds, particles, sigma, lr, es_truncation, key, progress=True):
  """Runs every method on one horizon; returns the JSON record of that horizon."""
  task = tasks.get("influence_balancing", horizon=horizon)
  star = influence_balancing_optimum(horizon)
  theta0 = task.theta0
  start_distance = abs(float(theta0) - star)
  lr = lr_for(horizon, lr)
  out = {"horizon": horizon, "lr": lr, "theta_star": star, "theta0": float(theta0),
         "start_distance": start_distance, "methods": {}}
  todo = [m for m in methods if truncation(m, es_truncation) <= horizon]
  bar = _bar(progress, len(todo), f"influence T={horizon}")
  for i, method in enumerate(todo):
    k = truncation(method, es_truncation)
    estimator = make_estimator(method, task.system, particles, sigma, es_truncation)
    t0 = time.perf_counter()
    thetas, skipped, nonfinite = jax.block_until_ready(run(estimator, theta0, lr, steps, seeds,
                                                           jax.random.fold_in(key, i)))
    seconds = time.perf_counter() - t0
    thetas = np.asarray(thetas, np.float64)
    final = thetas[:, -1]
    tail = thetas[:, -max(1, steps // 10):]  # the last 10% of steps, to see past the last step's noise
    errors = np.abs(final - star)
    saved = np.unique(np.r_[np.arange(0, steps + 1, max(1, steps // MAX_POINTS)), steps])
    fixed, slope = expected_truncated_gradient(task.system, k) if method.startswith("tbptt") or \
        method == "truncated_es" else (star, None)
    out["methods"][method] = {
        "label": LABELS[method], "truncation_length": k,
        "trajectory_steps": saved.tolist(),
        "trajectory_mean": [_round(x) for x in np.mean(thetas[:, saved], 0)],
        "trajectories": [[_round(x) for x in row] for row in thetas[:, saved]],
        "final_theta": [_finite(x) for x in final],
        "final_theta_mean": _finite(np.mean(final)),
        "final_error": [_finite(x) for x in errors],
        "final_error_mean": _finite(np.mean(errors)),
        "final_error_max": _finite(np.max(errors)),
        "tail_mean_theta": _finite(np.mean(tail)),
        "relative_error": _finite(np.max(errors) / start_distance),
        "diverged": bool(not np.all(np.isfinite(final)) or np.max(errors) > 10 * start_distance),
        "skipped_updates": int(np.sum(skipped)), "nonfinite_pairs": int(np.sum(nonfinite)),
        "expected_fixed_point": fixed, "expected_slope": slope,
        "seconds": seconds}
    if bar is not None:
      bar.set_postfix({"method": method, "final": f"{np.mean(final):.4g}", "theta*": f"{star:.4g}"}, refresh=False)
      bar.update(1)
  if bar is not None:
    bar.close()
  return out


def _round(x):
  x = _finite(x)
  return None if x is None else float(f"{x:.6g}")


def _fmt(x):
  return "non-finite" if x is None else f"{x:.4g}"


def _bar(enabled, total, desc):
  if not enabled:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, desc=desc, unit="method", dynamic_ncols=True)


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  studies = result["studies"]
  fig, axes = plt.subplots(1, len(studies), figsize=(6.5 * len(studies), 4.2), squeeze=False)
  for ax, s in zip(axes[0], studies):
    star, start = s["theta_star"], s["theta0"]
    for method, m in s["methods"].items():
      rows = np.array([[np.nan if x is None else x for x in row] for row in m["trajectories"]])
      label = m["label"] + (" (K = T: full BPTT)" if m["truncation_length"] == s["horizon"] else "")
      label += f" (runs away: θ = {_fmt(m['final_theta_mean'])})" if m["diverged"] else ""
      for j, row in enumerate(rows):
        ax.plot(m["trajectory_steps"], row, color=COLORS[method], lw=1.0, alpha=0.8, label=label if j == 0 else None)
      if m["expected_slope"] is not None and m["expected_slope"] > 0:  # the stable zero of its mean gradient
        ax.axhline(m["expected_fixed_point"], color=COLORS[method], ls=":", lw=0.9)
    ax.axhline(star, color="k", ls="--", lw=1.2, label=f"θ* = {star:.4f} (exact); dotted: truncated fixed points")
    span = abs(start - star)
    ax.set_ylim(star - 1.5 * span, start + 2.0 * span)  # runaway methods leave the plot: see the JSON
    ax.set(title=f"influence balancing, T = {s['horizon']}, SGD lr {s['lr']:g}", xlabel="outer step", ylabel="θ")
    ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="a < 2 minute run (one horizon, fewer seeds and particles)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  p.add_argument("--horizons", type=lambda s: tuple(int(x) for x in s.split(",")), default=None)
  p.add_argument("--methods", type=lambda s: tuple(s.split(",")), default=METHODS)
  for name, kind in (("steps", int), ("seeds", int), ("particles", int), ("sigma", float), ("lr", float),
                     ("es_truncation", int)):
    p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-progress", dest="progress", action="store_false")
  args = p.parse_args(argv)
  unknown = set(args.methods) - set(METHODS)
  if unknown:
    p.error(f"--methods must be drawn from {', '.join(METHODS)}; got {', '.join(sorted(unknown))}")
  config = dict(QUICK if args.quick else FULL)
  config.update({k: getattr(args, k) for k in config if getattr(args, k) is not None})
  return args, config


def main(argv=None):
  args, config = parse_args(argv)
  key = jax.random.PRNGKey(args.seed)
  studies = [study(h, args.methods, config["steps"], config["seeds"], config["particles"], config["sigma"],
                   config["lr"], config["es_truncation"], jax.random.fold_in(key, h), args.progress)
             for h in config["horizons"]]
  lrs = {str(h): lr_for(h, config["lr"]) for h in config["horizons"]}
  result = {"config": {**config, "horizons": list(config["horizons"]), "lr": lrs, "optimizer": "sgd",
                       "theta0": 0.5, "seed": args.seed, "quick": args.quick},
            "jax_version": jax.__version__, "studies": studies}
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, "influence_quick" if args.quick else "influence")
  with open(stem + ".json", "w") as f:
    json.dump(result, f)
  plot(result, stem + ".png")
  for s in studies:
    print(f"T = {s['horizon']}, lr {s['lr']:g}: θ* = {s['theta_star']:.5f} (start {s['theta0']})")
    for method, m in s["methods"].items():
      print(f"  {m['label']:<22} final θ (mean of seeds) {_fmt(m['final_theta_mean']):>11}   "
            f"max |θ − θ*| {_fmt(m['final_error_max']):>10}   expected fixed point {m['expected_fixed_point']:.4f}")
  return result


if __name__ == "__main__":
  main()
