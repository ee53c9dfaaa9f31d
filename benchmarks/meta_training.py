"""Meta-training with PES, ES-Single, truncated ES and full ES at equal compute: meta-loss against inner steps.

    python -m benchmarks.meta_training [--quick] [--task lr_schedule|learned_optimizer] [--out DIR] [--seeds R]

After the meta-training comparisons of Vicol, Kolter & Swersky (ES-Single, ICML 2023) and Li et al. (NRES,
NeurIPS 2023): every estimator gets the same particles N, σ, outer optimizer (Adam) and the same budget of
total inner steps, counted honestly: the staggering burn-in of `init` (state.init_steps) plus every update's
info["inner_steps"] (N·2·K for the online estimators, N·2·T for full ES, which unrolls whole episodes). So
full ES makes T/K times fewer updates. Every `eval_every`-th outer step (about `num_evals` times per run) θ is
scored by the unperturbed meta-loss, Task.evaluate's "meta_loss" averaged over `eval_keys` fixed keys (the
same inner problems for every estimator, seed and step: common random numbers).

Wall time counts only the compiled updates and the burn-in (compilation and evaluations excluded), measured on a
CPU shared with other jobs; total inner steps are the machine-independent axis. Sequential inner steps (the
latency: K per update, T for full ES; the burn-in not counted) are in the JSON.

CPU-sized settings (`TASKS`; the published ones are in each task's `settings`):
  lr_schedule:        T = 100, MLP 64-32-10, batch 64; σ = 0.1, N = 32, K = 10, Adam 0.05.
  learned_optimizer:  T = 100, inner MLP 64-16-10, batch 64, lopt 19-32-32-2 (1762 params); σ = 0.01, N = 16,
                      K = 10, Adam 1e-3.
Full mode: 3 seeds. --quick: 1 seed, a tenth of the budget, and unstaggered particles (skips the burn-in's
compilation). Writes meta_training_<task>.json / .png (…_quick.* with --quick) to --out.
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
from unrolled_es.training.loop import make_outer_step

ESTIMATORS = ("pes", "es_single", "truncated_es", "full_es")
LABELS = {"pes": "PES", "es_single": "ES-Single", "truncated_es": "truncated ES", "full_es": "full ES"}
COLORS = {"pes": "C0", "es_single": "C4", "truncated_es": "C2", "full_es": "k"}
TASKS = {
    "lr_schedule": dict(task_kwargs=dict(horizon=100, hidden=(32,), batch_size=64), sigma=0.1, particles=32,
                        truncation=10, outer_lr=0.05, budget=800_000, eval_keys=8),
    "learned_optimizer": dict(task_kwargs=dict(horizon=100, hidden=(16,), batch_size=64), sigma=0.01,
                              particles=16, truncation=10, outer_lr=1e-3, budget=150_000, eval_keys=4),
}
FULL = dict(seeds=3, num_evals=20, stagger=True, budget_scale=1.0)
QUICK = dict(seeds=1, num_evals=10, stagger=False, budget_scale=0.1)


def make_estimator(name, system, particles, sigma, truncation, stagger=True):
  return make_taking(name, system, num_particles=particles, sigma=sigma, truncation_length=truncation, stagger=stagger)


def make_evaluate(task, num_keys, seed=10_000):
  """θ -> Task.evaluate's scalars, averaged over `num_keys` fixed keys (the same inner problems every call)."""
  keys = jax.random.split(jax.random.PRNGKey(seed), num_keys)
  return jax.jit(lambda theta: jax.tree_util.tree_map(
      jnp.mean, jax.vmap(task.evaluate, (None, 0))(theta, keys)))


def _floats(tree):
  out = {}
  for k, v in jax.device_get(tree).items():
    x = float(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size == 1 else None
    out[k] = x if x is not None and math.isfinite(x) else None
  return out


def run(estimator, optimizer, theta0, key, budget, evaluate, num_evals, sequential_per_update, compiled=None,
        progress=None):
  """One meta-training run of `budget` total inner steps (burn-in included). Returns (record, compiled).

  `compiled` caches (init, outer step) compiled for this estimator, so that later seeds don't recompile and no
  compilation lands in the timings.
  """
  init_key, train_key = jax.random.split(key)
  if compiled is None:
    init = jax.jit(estimator.init).lower(init_key, theta0).compile()
    state_shape = jax.eval_shape(estimator.init, init_key, theta0)
    outer = make_outer_step(estimator, optimizer).lower(
        theta0, optimizer.init(theta0), state_shape, train_key, jnp.int32(0)).compile()
    compiled = (init, outer)
  init, outer = compiled
  t0 = time.perf_counter()
  state = jax.block_until_ready(init(init_key, theta0))
  wall = time.perf_counter() - t0
  total, sequential = int(state.init_steps), 0
  theta, opt_state = theta0, optimizer.init(theta0)
  rec = {"step": [], "total_inner_steps": [], "sequential_inner_steps": [], "wall_time": [], "eval": []}

  def log(step):
    rec["step"].append(step)
    rec["total_inner_steps"].append(total)
    rec["sequential_inner_steps"].append(sequential)
    rec["wall_time"].append(wall)
    rec["eval"].append(_floats(evaluate(theta)))

  log(0)
  step, skipped, nonfinite, steps, every, per_update = 0, 0, 0, None, None, None
  while steps is None or step < steps:
    t0 = time.perf_counter()
    theta, opt_state, state, info = outer(theta, opt_state, state, train_key, jnp.int32(step))
    info = jax.device_get(info)  # waits for the update
    wall += time.perf_counter() - t0
    step += 1
    if steps is None:  # the budget fixes the number of updates, given what one update costs
      per_update = int(info["inner_steps"])
      steps = max(1, (budget - total) // per_update)
      every = max(1, steps // num_evals)
      if progress is not None:
        progress.reset(total=steps)
    total += int(info["inner_steps"])
    sequential += sequential_per_update
    skipped += int(info["skipped"])
    nonfinite += int(info["num_nonfinite"])
    if step % every == 0 or step == steps:
      log(step)
    if progress is not None:
      progress.update(1)
      progress.set_postfix({"meta_loss": f"{rec['eval'][-1]['meta_loss']:.4g}"}, refresh=False)
  rec.update(per_update_inner_steps=per_update, init_steps=int(state.init_steps), outer_steps=steps,
             skipped_updates=skipped, nonfinite_pairs=nonfinite)
  return rec, compiled


def _summary(runs):
  """Per-estimator figures over seeds: the meta-loss at the start and at the end of each run."""
  first = [r["eval"][0]["meta_loss"] for r in runs]
  final = [r["eval"][-1]["meta_loss"] for r in runs]
  ok = [x for x in final if x is not None]
  out = {"initial_meta_loss": first, "final_meta_loss": final,
         "final_meta_loss_mean": float(np.mean(ok)) if ok else None,
         "final_meta_loss_min": float(np.min(ok)) if ok else None,
         "final_meta_loss_max": float(np.max(ok)) if ok else None,
         "best_meta_loss": [min((e["meta_loss"] for e in r["eval"] if e["meta_loss"] is not None), default=None)
                            for r in runs]}
  out["final_eval"] = {k: [r["eval"][-1][k] for r in runs] for k in runs[0]["eval"][-1]}
  return out


def study(task_name, estimators, seeds, budget, stagger, num_evals, particles, sigma, truncation, outer_lr,
          eval_keys, task_kwargs, progress=True):
  task = tasks.get(task_name, **task_kwargs)
  evaluate = make_evaluate(task, eval_keys)
  optimizer = optax.adam(outer_lr)
  out = {}
  for name in estimators:
    estimator = make_estimator(name, task.system, particles, sigma, truncation, stagger)
    sequential = task.system.horizon if name == "full_es" else truncation
    runs, compiled = [], None
    for seed in range(seeds):
      bar = _bar(progress, f"{task_name} {name} seed {seed}")
      rec, compiled = run(estimator, optimizer, task.theta0, jax.random.PRNGKey(seed), budget, evaluate, num_evals,
                          sequential, compiled, bar)
      if bar is not None:
        bar.close()
      runs.append(dict(rec, seed=seed))
    out[name] = {"label": LABELS[name], "runs": runs, **_summary(runs)}
  return out


def _bar(enabled, desc):
  if not enabled:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=None, desc=desc, unit="update", dynamic_ncols=True, leave=False, mininterval=2.0)


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
  for name, e in result["estimators"].items():
    n = min(len(r["eval"]) for r in e["runs"])  # seeds log at the same steps; guard anyway
    loss = np.array([[np.nan if v["meta_loss"] is None else v["meta_loss"] for v in r["eval"][:n]]
                     for r in e["runs"]])
    for ax, axis in zip(axes, ("total_inner_steps", "wall_time")):
      x = np.mean([r[axis][:n] for r in e["runs"]], axis=0)
      ax.plot(x, np.nanmean(loss, 0), color=COLORS[name], lw=1.6, label=f"{e['label']} ({len(e['runs'])} seeds)")
      ax.fill_between(x, np.nanmin(loss, 0), np.nanmax(loss, 0), color=COLORS[name], alpha=0.2, lw=0)
  cfg = result["config"]
  title = (f"{result['task']}: T = {cfg['task_kwargs']['horizon']}, N = {cfg['particles']}, K = {cfg['truncation']}, "
           f"σ = {cfg['sigma']:g}, Adam {cfg['outer_lr']:g}")
  axes[0].set(xlabel="total inner steps (burn-in included)", ylabel="meta-loss (unperturbed, fixed eval keys)",
              title=title)
  axes[0].ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
  axes[1].set(xlabel="wall time, s (updates only; shared CPU)", ylabel="meta-loss", title="mean, min-max over seeds")
  for ax in axes:
    ax.set_yscale("log")  # the estimators differ by a few percent near the end; a log axis shows it
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="a < 2 minute run: 1 seed, a tenth of the budget, no stagger")
  p.add_argument("--task", choices=tuple(TASKS), default="lr_schedule")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  p.add_argument("--estimators", type=lambda s: tuple(s.split(",")), default=ESTIMATORS)
  p.add_argument("--seeds", type=int, default=None)
  p.add_argument("--budget", type=int, default=None, help="total inner steps per run (burn-in included)")
  p.add_argument("--num-evals", dest="num_evals", type=int, default=None)
  p.add_argument("--particles", type=int, default=None)
  p.add_argument("--outer-lr", dest="outer_lr", type=float, default=None)
  p.add_argument("--stagger", dest="stagger", action="store_true", default=None)
  p.add_argument("--no-stagger", dest="stagger", action="store_false")
  p.add_argument("--task-arg", dest="task_args", action="append", default=[],
                 help="task option NAME=VALUE (a Python literal), e.g. horizon=20 or hidden=(8,)")
  p.add_argument("--no-progress", dest="progress", action="store_false")
  args = p.parse_args(argv)
  unknown = set(args.estimators) - set(ESTIMATORS)
  if unknown:
    p.error(f"--estimators must be drawn from {', '.join(ESTIMATORS)}; got {', '.join(sorted(unknown))}")
  mode = QUICK if args.quick else FULL
  config = {**TASKS[args.task], **mode}
  config["budget"] = int(config["budget"] * config.pop("budget_scale"))
  config["task_kwargs"] = dict(config["task_kwargs"], **_task_args(p, args.task_args))
  for k in ("seeds", "budget", "num_evals", "particles", "outer_lr", "stagger"):
    if getattr(args, k) is not None:
      config[k] = getattr(args, k)
  return args, config


def _task_args(parser, items):
  import ast
  out = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep:
      parser.error(f"--task-arg must be NAME=VALUE; got {item!r}")
    try:
      out[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[name] = value
  return out


def main(argv=None):
  args, config = parse_args(argv)
  estimators = study(args.task, args.estimators, config["seeds"], config["budget"], config["stagger"],
                     config["num_evals"], config["particles"], config["sigma"], config["truncation"],
                     config["outer_lr"], config["eval_keys"], config["task_kwargs"], args.progress)
  result = {"task": args.task, "config": {**config, "optimizer": "adam", "quick": args.quick,
                                          "estimators": list(args.estimators)},
            "jax_version": jax.__version__, "estimators": estimators}
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, f"meta_training_{args.task}" + ("_quick" if args.quick else ""))
  with open(stem + ".json", "w") as f:
    json.dump(result, f, indent=1)
  plot(result, stem + ".png")
  print(f"{args.task}: meta-loss after {config['budget']} total inner steps per run ({config['seeds']} seeds)")
  for name, e in estimators.items():
    r = e["runs"][0]
    print(f"  {e['label']:<13} {r['outer_steps']:>5} updates of {r['per_update_inner_steps']} inner steps"
          f"  start {_fmt(e['initial_meta_loss'][0])}  final mean {_fmt(e['final_meta_loss_mean'])}"
          f"  [{_fmt(e['final_meta_loss_min'])}, {_fmt(e['final_meta_loss_max'])}]")
  return result


def _fmt(x):
  return "non-finite" if x is None else f"{x:.4g}"


if __name__ == "__main__":
  main()
