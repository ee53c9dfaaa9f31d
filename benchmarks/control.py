"""Control: ES-Single, PES, full ES and truncated ES train linear policies on gymnax environments and MJX Swimmer.

    python -m benchmarks.control [--quick] [--envs CartPole-v1,Swimmer-v5] [--methods es_single,pes] [--seeds R]

Every method trains the linear policy of `unrolled_es_tasks.get("control", env=...)` (ARS form: W = 0 at the start, observation
normalisation) from the same start, with the task's settings (σ, N pairs, K, optimizer and learning rate; PES on
Swimmer uses the NRES paper's lr 1 instead of 3), and the same budget of environment steps, counted as the
particles' inner steps: the staggering burn-in plus every update's N·2·K (N·2·T for full ES, which therefore makes
T/K times fewer updates). Steps of episodes that already ended count too: the particles computed them. About
`num_evals` times per run θ is scored by the mean return of 16 episodes on fixed keys (the same episodes for every
method, seed and step), so curves show θ's progress, not evaluation noise. On Swimmer the final policy is also
scored in Gymnasium's own Swimmer-v5 (MuJoCo's CPU simulator, 16 episodes): what MJX taught must transfer. Wall
time counts only the compiled updates and the burn-in (compilation, reported apart, and evaluations excluded), on
a 2-core CPU shared with other jobs.

Reference returns (drawn beside the curves): CartPole-v1 at most 500 (Gymnasium's reward threshold 475);
Acrobot-v1 −100 and MountainCarContinuous-v0 90 (Gymnasium's reward thresholds); Pendulum-v1 −200 (Gymnasium
registers no threshold; −200 is this project's solved line; a linear policy of (cos θ, sin θ, θ̇) cannot swing
the pendulum up and stays far below it: benchmarks/pendulum_linear.py finds the best one); Swimmer ≈ 350 (ARS
with linear policies, Mania et al. 2018; Gymnasium's threshold for Swimmer-v5 is 360).

`METHODS` maps a name to `run(task, cfg, key, budget, num_evals, log, cache)`, which trains from task.theta0 and
calls `log(env_steps, wall_seconds, theta)` at its evaluation points (step 0 included); `cache` is a dict kept
per (environment, method) across seeds, for compiled functions. Another method (e.g. a genetic algorithm) plugs in
by adding an entry. Full mode: 3 seeds, 100-1000 ES-Single updates per gymnax environment and 50 on Swimmer (it
passes ARS's 350 after about 20). --quick: 1 seed, a tenth of the budget (a fifth on Swimmer), unstaggered
particles. Writes control.json / control.png (control_quick.* with --quick) to --out; with
--envs only those environments are run and replaced in an existing JSON, and with --methods only those methods
(kept beside the others where the seeds agree), so a long run can be split.
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
import unrolled_es_tasks.control_envs
import unrolled_es as ue
from benchmarks.common import make_taking, check_choices
from unrolled_es_tasks.control_policies import apply_policy, to_action
from unrolled_es_tasks.observation_norm import normalize

ENVS = {
    "CartPole-v1": dict(budget=320_000),
    "Pendulum-v1": dict(budget=1_280_000),
    "Acrobot-v1": dict(budget=960_000),
    # The GA's mutation power is its own: at ES's σ 0.1 (and 0.3) no mutant reaches the goal and selection keeps
    # the do-nothing policy (return 0); 1.0 solved 2 seeds of 3, 2.0 all 3 (98.6-98.8).
    "MountainCarContinuous-v0": dict(budget=710_000, overrides={"deep_ga": {"sigma": 2.0}}),
    "Swimmer-v5": dict(budget=300_000, quick_budget=60_000, num_evals=10, overrides={"pes": {"outer_lr": 1.0}}),
}
REFERENCES = {
    "CartPole-v1": [(500.0, "maximum return"), (475.0, "Gymnasium reward threshold")],
    "Pendulum-v1": [(-200.0, "solved line used here (Gymnasium sets none)")],
    "Acrobot-v1": [(-100.0, "Gymnasium reward threshold")],
    "MountainCarContinuous-v0": [(90.0, "Gymnasium reward threshold")],
    "Swimmer-v5": [(350.0, "ARS linear policy (Mania et al. 2018)"), (360.0, "Gymnasium reward threshold")],
}
GYMNASIUM_IDS = ("Swimmer-v5",)  # MJX environments whose policies are re-scored in Gymnasium itself
LABELS = {"es_single": "ES-Single", "pes": "PES", "full_es": "full ES", "truncated_es": "truncated ES",
          "deep_ga": "Deep GA"}
COLORS = {"es_single": "C4", "pes": "C0", "full_es": "k", "truncated_es": "C2"}
FULL = dict(seeds=3, num_evals=20, stagger=True)
QUICK = dict(seeds=1, num_evals=8, stagger=False)
EVAL_SEED = 10_000


def make_optimizer(name, lr):
  return {"sgd": optax.sgd, "adam": optax.adam}[name](lr)


def outer_step(estimator, optimizer, after_update):
  """One update: estimate, optimizer step, then the task's after_update (the observation statistics)."""

  def step(theta, opt_state, est_state, key, i):
    grad, est_state, info = estimator.estimate(jax.random.fold_in(key, i), theta, est_state)
    updates, opt_state = optimizer.update(grad, opt_state, theta)
    theta = optax.apply_updates(theta, updates)
    if after_update is not None:
      theta = after_update(theta, est_state)
    return theta, opt_state, est_state, info

  return step


def _compile(estimator, optimizer, task, key):
  init_key, train_key = jax.random.split(key)
  init = jax.jit(estimator.init).lower(init_key, task.theta0).compile()
  state = jax.eval_shape(estimator.init, init_key, task.theta0)
  opt_state = optimizer.init(task.theta0)
  step = jax.jit(outer_step(estimator, optimizer, task.after_update)).lower(
      task.theta0, opt_state, state, train_key, jnp.int32(0)).compile()
  return init, step


def es_method(name):
  """An unrolled_es estimator trained with the task's optimizer (a METHODS entry)."""

  def run(task, cfg, key, budget, num_evals, log, cache):
    if "compiled" not in cache:
      t0 = time.perf_counter()
      settings = dict(num_particles=cfg["num_particles"], sigma=cfg["sigma"],
                      truncation_length=cfg["truncation_length"], stagger=cfg["stagger"], mask=task.mask)
      if cfg.get("shaping") is not None:   # the task's published fitness (ARS's top-b directions on Hopper)
        settings["fitness"] = ue.fitness.named(cfg["shaping"])
      # full ES runs whole episodes: it takes no K and no stagger
      est = make_taking(name, task.system, **settings)
      cache["optimizer"] = make_optimizer(cfg["optimizer"], cfg["outer_lr"])
      cache["compiled"] = _compile(est, cache["optimizer"], task, key)
      cache["compile_seconds"] = time.perf_counter() - t0
    (init, step), optimizer = cache["compiled"], cache["optimizer"]
    init_key, train_key = jax.random.split(key)
    t0 = time.perf_counter()
    state = jax.block_until_ready(init(init_key, task.theta0))
    wall, env_steps = time.perf_counter() - t0, int(state.init_steps)
    theta, opt_state = task.theta0, optimizer.init(task.theta0)
    log(env_steps, wall, theta)
    i, updates, every = 0, None, None
    while updates is None or i < updates:
      t0 = time.perf_counter()
      theta, opt_state, state, info = step(theta, opt_state, state, train_key, jnp.int32(i))
      info = jax.device_get(info)
      wall += time.perf_counter() - t0
      i += 1
      if updates is None:  # the budget fixes the number of updates, given what one costs
        updates = max(1, (budget - env_steps) // int(info["inner_steps"]))
        every = max(1, updates // num_evals)
      env_steps += int(info["inner_steps"])
      if i % every == 0 or i == updates:
        log(env_steps, wall, theta)
    return {"updates": updates, "inner_steps_per_update": int(info["inner_steps"]),
            "init_steps": int(state.init_steps), "compile_seconds": cache["compile_seconds"]}

  return run


def ga_method(task, cfg, key, budget, num_evals, log, cache):
  """The Deep GA (unrolled_es.deep_ga): as many members as the ES methods' 2N, the best 10% as parents, σ the
  task's, mutations outside the observation statistics (which it leaves at their start: it has no particles'
  windows to gather them from); θ logged is the elite."""
  population = 2 * cfg["num_particles"]
  per_generation = (population + 6 * 3) * task.system.horizon
  generations = max(1, budget // per_generation)
  if "compiled" not in cache:
    t0 = time.perf_counter()
    ga = ue.deep_ga(task.system, population=population, parents=max(2, population // 10), sigma=cfg["sigma"],
                    elite_candidates=5, elite_episodes=3, max_generations=generations + 1, mask=task.mask)
    init, step = jax.jit(ga.init), jax.jit(ga.step)
    state = init(key, task.theta0)
    jax.block_until_ready(step(key, task.theta0, state))
    cache.update(compiled=(init, step), compile_seconds=time.perf_counter() - t0)
  init, step = cache["compiled"]
  t0 = time.perf_counter()
  theta = task.theta0
  state = jax.block_until_ready(init(key, theta))
  wall, env_steps = time.perf_counter() - t0, 0
  log(env_steps, wall, theta)
  every = max(1, generations // num_evals)
  for g in range(generations):
    t0 = time.perf_counter()
    theta, state, info = jax.block_until_ready(step(jax.random.fold_in(key, g), theta, state))
    wall += time.perf_counter() - t0
    env_steps += int(info["inner_steps"])
    if (g + 1) % every == 0 or g + 1 == generations:
      log(env_steps, wall, theta)
  genome_bytes = state.genomes[0].nbytes + state.length[0].nbytes
  theta_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(task.theta0))
  return {"updates": generations, "inner_steps_per_update": int(info["inner_steps"]),
          "compile_seconds": cache["compile_seconds"], "genome_bytes_per_member": int(genome_bytes),
          "genome_bytes_per_generation": 8, "theta_bytes": int(theta_bytes), "population": population}


METHODS = {name: es_method(name) for name in ("es_single", "pes", "full_es", "truncated_es")}
METHODS["deep_ga"] = ga_method


def make_evaluate(task):
  """θ -> (mean, std, min) of the return over the task's evaluation episodes, on fixed keys."""
  evaluate = jax.jit(lambda theta: task.evaluate(theta, jax.random.PRNGKey(EVAL_SEED)))
  return lambda theta: {k: _float(v) for k, v in jax.device_get(evaluate(theta)).items()}


def _float(v):
  x = float(np.asarray(v).reshape(-1)[0])
  return x if math.isfinite(x) else None


def study(env_id, methods, seeds, budget, stagger, num_evals, overrides=None):
  task = tasks.get("control", env=env_id)
  evaluate = make_evaluate(task)
  out = {}
  for name in methods:
    cfg = dict({"stagger": stagger}, **task.settings, **(overrides or {}).get(name, {}))   # a task's own stagger wins
    runs, cache = [], {}
    for seed in range(seeds):
      rec = {"env_steps": [], "wall_time": [], "eval": []}
      last = {}

      def log(env_steps, wall, theta):
        rec["env_steps"].append(int(env_steps))
        rec["wall_time"].append(float(wall))
        rec["eval"].append(evaluate(theta))
        last["theta"] = theta
      extra = dict(METHODS[name](task, cfg, jax.random.PRNGKey(seed), budget, num_evals, log, cache) or {})
      if env_id in GYMNASIUM_IDS:
        extra["gymnasium_return"] = gymnasium_returns(env_id, last["theta"])
      runs.append(dict(rec, seed=seed, **extra))
      check = f", Gymnasium {_fmt(np.mean(extra['gymnasium_return']))}" if "gymnasium_return" in extra else ""
      print(f"  {env_id} {name} seed {seed}: return {_fmt(rec['eval'][0]['return'])} -> "
            f"{_fmt(rec['eval'][-1]['return'])}{check} in {rec['env_steps'][-1]} env steps, "
            f"{rec['wall_time'][-1]:.1f} s", flush=True)
    final = [r["eval"][-1]["return"] for r in runs]
    out[name] = {"label": LABELS.get(name, name), "settings": {k: v for k, v in cfg.items()}, "runs": runs,
                 "final_return": final, "final_return_mean": float(np.mean([x for x in final if x is not None]))}
    if all("gymnasium_return" in r for r in runs):
      out[name]["gymnasium_return_mean"] = float(np.mean([np.mean(r["gymnasium_return"]) for r in runs]))
  return out


def gymnasium_returns(env_id, theta, episodes=16):
  """Returns of θ's deterministic linear policy in Gymnasium's own environment (MuJoCo's CPU simulator, float64):
  the check that what was learned on MJX transfers."""
  import gymnasium
  space = tasks.control_envs.make_env(env_id).action_space
  policy = jax.jit(lambda x: to_action(space, apply_policy(theta["policy"], normalize(theta["obs_norm"], x)),
                                       jax.random.PRNGKey(0), False, 1.0, "clip"))
  env = gymnasium.make(env_id)
  returns = []
  for seed in range(episodes):
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
      obs, reward, terminated, truncated, _ = env.step(np.asarray(policy(jnp.asarray(obs, jnp.float32)), np.float64))
      total, done = total + float(reward), terminated or truncated
    returns.append(total)
  return returns


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  envs = list(result["envs"])
  fig, axes = plt.subplots(len(envs), 2, figsize=(12, 3.2 * len(envs)), squeeze=False)
  for row, env_id in zip(axes, envs):
    e = result["envs"][env_id]
    for name, m in e["methods"].items():
      n = min(len(r["eval"]) for r in m["runs"])
      ret = np.array([[np.nan if v["return"] is None else v["return"] for v in r["eval"][:n]] for r in m["runs"]])
      for ax, axis in zip(row, ("env_steps", "wall_time")):
        x = np.mean([r[axis][:n] for r in m["runs"]], axis=0)
        ax.plot(x, np.nanmean(ret, 0), color=COLORS.get(name), lw=1.6, label=f"{m['label']} ({len(m['runs'])} seeds)")
        ax.fill_between(x, np.nanmin(ret, 0), np.nanmax(ret, 0), color=COLORS.get(name), alpha=0.2, lw=0)
    for ax in row:
      for j, (value, source) in enumerate(e["references"]):
        ax.axhline(value, color="grey", ls="--", lw=0.9)
        ax.annotate(f"{value:g}: {source}", (0.01 + 0.5 * j, value), xycoords=("axes fraction", "data"),
                    fontsize=7, color="dimgrey", va="bottom")
      ax.grid(alpha=0.3)
    row[0].set(xlabel="environment steps (burn-in included)", ylabel="return (16 fixed episodes)", title=env_id)
    row[0].ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    row[1].set(xlabel="wall time, s (updates only; shared 2-core CPU)", title="mean, min-max over seeds")
    row[0].legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="1 seed, a tenth of the budget (Swimmer: a fifth), no stagger")
  p.add_argument("--envs", type=lambda s: tuple(s.split(",")), default=tuple(ENVS))
  p.add_argument("--methods", type=lambda s: tuple(s.split(",")), default=tuple(METHODS))
  p.add_argument("--seeds", type=int, default=None)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)
  check_choices(p, (("envs", args.envs, ENVS), ("methods", args.methods, METHODS)))
  return args


def main(argv=None):
  args = parse_args(argv)
  mode = QUICK if args.quick else FULL
  seeds = args.seeds or mode["seeds"]
  config = {"seeds": seeds, "stagger": mode["stagger"], "policy": "linear", "eval_episodes": 16,
            "jax_version": jax.__version__}
  stem = os.path.join(args.out, "control" + ("_quick" if args.quick else ""))
  result = _load(stem + ".json")  # environments run earlier keep their entries: runs can be split by --envs
  for env_id in args.envs:
    spec = ENVS[env_id]
    budget = spec.get("quick_budget", spec["budget"] // 10) if args.quick else spec["budget"]
    t0 = time.perf_counter()
    num_evals = min(mode["num_evals"], spec.get("num_evals", mode["num_evals"]))
    methods = study(env_id, args.methods, seeds, budget, mode["stagger"], num_evals, spec.get("overrides"))
    earlier = result["envs"].get(env_id, {})
    if set(args.methods) != set(METHODS) and earlier.get("config", {}).get("seeds") == seeds:
      # a run of some methods adds them beside those run earlier with the same seeds (same file: same budget)
      methods = {**earlier.get("methods", {}), **methods}
      t0 -= earlier.get("seconds", 0.0)   # the environment's seconds count every method's run
    result["envs"][env_id] = {"config": dict(config, num_evals=num_evals), "budget_env_steps": budget, "references": REFERENCES[env_id],
                              "seconds": time.perf_counter() - t0, "methods": methods}
  result["envs"] = {e: result["envs"][e] for e in ENVS if e in result["envs"]}
  os.makedirs(args.out, exist_ok=True)
  with open(stem + ".json", "w") as f:
    json.dump(result, f, indent=1)
  plot(result, stem + ".png")
  print(f"final mean return after each environment's budget (written to {stem}.json/.png)")
  for env_id, e in result["envs"].items():
    refs = ", ".join(f"{v:g} ({s})" for v, s in e["references"])
    cells = "  ".join(f"{m['label']} {_fmt(m['final_return_mean'])}" + (
        f" (Gymnasium {_fmt(m['gymnasium_return_mean'])})" if "gymnasium_return_mean" in m else "")
        for m in e["methods"].values())
    print(f"  {env_id:<26} {cells}   [{e['config']['seeds']} seeds, {e['seconds']:.0f} s]   reference: {refs}")
  return result


def _load(path):
  try:
    with open(path) as f:
      result = json.load(f)
    if isinstance(result, dict) and isinstance(result.get("envs"), dict):
      return result
  except (OSError, ValueError):
    pass
  return {"envs": {}}


def _fmt(x):
  return "n/a" if x is None else f"{x:.1f}"


if __name__ == "__main__":
  main()
