"""How well can any linear policy do on Pendulum-v1? A global search of the whole affine policy class.

    python -m benchmarks.pendulum_linear [--quick] [--compare RUN_DIR]

Every linear policy of `unrolled_es_tasks.get("control", env="Pendulum-v1")` is a = clip(w·(cos θ, sin θ, θ̇) + b, −2, 2) for
some (w, b) in R⁴, with or without `bias=True` (ARS observation normalisation is an affine change of the
observation, so it adds nothing to the class). This command looks for the best (w, b) directly, scoring each on
the task's own episodes (`bias=True, normalize_obs=False`: gymnax's Pendulum-v1, 200 steps), in three stages:

1. random search: directions uniform on the sphere in R⁴ times scales log-uniform over 10⁻¹ to 10³ (the upper
   end is bang-bang control with a linear switching surface), each scored on the same 64 episodes;
2. CMA-ES (evosax, Hansen & Ostermeier 2001; Wong et al. 2024 use it for linear policies) restarted from each of
   the best candidates, its initial step 0.3 of the start's norm, scored on 256 common episodes;
3. the best restarts re-scored on 1024 held-out episodes: mean return and standard error.

The random search's best policy with an anti-damping velocity gain (w_θ̇ > 0) is re-scored apart. With
--compare, the last θ of an `unrolled-es train --task control --task-arg env=Pendulum-v1` run is scored on the
same held-out episodes, paired against the best affine policy: how far training is from the class's best.

Why the class falls short: at the upright position a linear policy holds the pendulum only if its velocity gain
damps (w_θ̇ < 0, linearising θ̈ = 15 sin θ + 3u), and since clip is monotone that sign then holds at every
angle, so near the bottom the policy also takes energy out of a swing instead of pumping it in; with an
anti-damping gain it pumps, but cannot stop at the top. Writes pendulum_linear.json / .png (…_quick with
--quick) to --out.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import preset_arguments, write_result
from unrolled_es.core.system import run_episode

PRESETS = {
    "default": dict(candidates=16_384, search_episodes=64, restarts=16, generations=60, population=16,
                    cma_episodes=256, final=4, held_out_episodes=1024),
    "quick": dict(candidates=1024, search_episodes=16, restarts=4, generations=10, population=8,
                  cma_episodes=32, final=2, held_out_episodes=128),
}
SOLVED = -200.0


def pendulum_system():
  """The control task's Pendulum-v1 episode with a biased linear policy and no normalisation (the whole class)."""
  import unrolled_es_tasks as tasks  # needs the [rl] extra
  return tasks.get("control", env="Pendulum-v1", policy="linear", bias=True, normalize_obs=False).system


def episode_returns(system, policies, keys):
  """[policy, episode] returns of affine policies (rows of `policies`: w_cos, w_sin, w_θ̇, b) on `keys`."""

  def episode(policy, key):
    theta = {"policy": {"w": policy[:3, None], "b": policy[3:]}}
    return -jnp.sum(run_episode(system, theta, key)[1])

  return jax.vmap(lambda p: jax.vmap(lambda k: episode(p, k))(keys))(policies)


def random_candidates(rng, n):
  directions = rng.normal(size=(n, 4))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  return (directions * 10 ** rng.uniform(-1, 3, size=(n, 1))).astype(np.float32)


def random_search(score, rng, cfg, keys):
  candidates = random_candidates(rng, cfg["candidates"])
  chunks = [np.asarray(score(jnp.asarray(candidates[i:i + 2048]), keys))
            for i in range(0, len(candidates), 2048)]
  return candidates, np.concatenate(chunks)


def cma_restarts(score, starts, cfg, keys, key):
  """CMA-ES from each start (all restarts advance together); returns the best mean of each and its history."""
  from evosax.algorithms import CMA_ES  # the [bench] extra
  strategy = CMA_ES(cfg["population"], jnp.zeros(4))
  params = jax.vmap(lambda s: strategy.default_params.replace(std_init=s))(
      0.3 * jnp.linalg.norm(starts, axis=1))
  states = jax.vmap(strategy.init)(jax.random.split(key, len(starts)), jnp.asarray(starts), params)

  @jax.jit
  def generation(states, key):
    ask_keys, tell_keys = jnp.split(jax.random.split(key, 2 * len(starts)), 2)
    population, states = jax.vmap(strategy.ask)(ask_keys, states, params)
    returns = score(population.reshape(-1, 4), keys).reshape(population.shape[:2])
    states, _ = jax.vmap(strategy.tell)(tell_keys, population, -returns, states, params)  # evosax minimises
    best = jnp.argmax(returns, axis=1)
    return states, (population[jnp.arange(len(starts)), best], returns.max(axis=1))

  bests, best_returns, history = np.array(starts), np.full(len(starts), -np.inf), []
  for g in range(cfg["generations"]):
    states, (members, returns) = generation(states, jax.random.fold_in(key, g))
    members, returns = np.asarray(members), np.asarray(returns)
    improved = returns > best_returns
    bests[improved], best_returns[improved] = members[improved], returns[improved]
    history.append(best_returns.tolist())
  return bests, best_returns, history


def held_out_keys(cfg):
  return jax.random.split(jax.random.key(3), cfg["held_out_episodes"])


def held_out_returns(system, policies, cfg):
  """[policy, episode] returns of affine policies on the held-out episodes."""
  score = jax.jit(lambda p, k: episode_returns(system, p, k))
  return np.asarray(score(jnp.asarray(policies), held_out_keys(cfg)))


def stderr(returns):
  """Standard error of the mean over the last axis."""
  return returns.std(axis=-1, ddof=1) / np.sqrt(returns.shape[-1])


def trained_run_returns(run_dir, keys):
  """Returns on `keys` of the θ that `unrolled-es train --task control --task-arg env=Pendulum-v1 ...` saved last
  in run_dir, under the run's own task options (its policy and normalisation)."""
  import unrolled_es_tasks as tasks
  from unrolled_es.training.checkpoint import restore_latest
  with open(os.path.join(run_dir, "config.json")) as f:
    config = json.load(f)
  if config["task"] != "control" or config["task_args"].get("env") != "Pendulum-v1":
    raise ValueError(f"--compare needs a run of the control task on Pendulum-v1; {run_dir} ran "
                     f"{config['task']} with {config['task_args']}")
  # Scored on the standard 200-step episodes whatever horizon the run trained with, like the affine policies.
  task = tasks.get("control", **{k: v for k, v in config["task_args"].items() if k != "horizon"})
  restored = restore_latest(os.path.join(run_dir, "checkpoints"), task.theta0, part="theta")
  if restored is None:
    raise ValueError(f"--compare: no checkpoint in {run_dir}/checkpoints")
  theta, step, _ = restored
  episode = lambda key: -jnp.sum(run_episode(task.system, theta, key)[1])  # noqa: E731
  return np.asarray(jax.jit(jax.vmap(episode))(keys)), step


def compare(run_dir, best_policy, cfg):
  """The trained run's θ against the best affine policy on the same held-out episodes, paired."""
  keys = held_out_keys(cfg)
  returns, step = trained_run_returns(run_dir, keys)
  diff = returns - held_out_returns(pendulum_system(), [best_policy], cfg)[0]
  return {"run": run_dir, "step": int(step), "held_out_mean": float(returns.mean()),
          "held_out_stderr": float(stderr(returns)), "minus_best": float(diff.mean()),
          "minus_best_stderr": float(stderr(diff))}


def run(cfg):
  system = pendulum_system()
  score = jax.jit(lambda policies, keys: episode_returns(system, policies, keys).mean(axis=1))
  rng, t0 = np.random.default_rng(0), time.perf_counter()
  candidates, search = random_search(score, rng, cfg, jax.random.split(jax.random.key(1), cfg["search_episodes"]))
  order = np.argsort(search)[::-1]
  anti = order[candidates[order, 2] > 0][0]
  starts = candidates[order[:cfg["restarts"]]]
  cma_keys = jax.random.split(jax.random.key(2), cfg["cma_episodes"])
  bests, best_returns, history = cma_restarts(score, starts, cfg, cma_keys, jax.random.key(4))
  top = np.argsort(best_returns)[::-1][:cfg["final"]]
  returns = held_out_returns(system, np.concatenate([bests[top], candidates[anti][None]]), cfg)
  mean, se = returns.mean(axis=1), stderr(returns)
  return {"config": cfg, "seconds": round(time.perf_counter() - t0, 1), "solved_line": SOLVED,
          "random_search_best": search[order[:8]].tolist(), "random_search_best_policy": starts[0].tolist(),
          "cma_best_returns": best_returns.tolist(), "cma_history": history,
          "held_out_policies": bests[top].tolist(), "held_out_mean": mean[:-1].tolist(),
          "held_out_stderr": se[:-1].tolist(),
          "anti_damping_policy": candidates[anti].tolist(), "anti_damping_search_return": float(search[anti]),
          "anti_damping_held_out": [float(mean[-1]), float(se[-1])]}


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  history = np.array(result["cma_history"])
  fig, ax = plt.subplots(figsize=(6.4, 4))
  ax.plot(np.arange(1, len(history) + 1), history, color="C0", alpha=0.5, lw=1)
  ax.plot([], [], color="C0", label="CMA-ES restarts: best so far (256 episodes)")
  ax.axhline(max(result["held_out_mean"]), color="C3", ls="--", label="best linear policy, 1024 held-out episodes")
  ax.axhline(result["solved_line"], color="k", ls=":", label="solved line (−200)")
  ax.set_xlabel("CMA-ES generation")
  ax.set_ylabel("mean return")
  ax.set_title("Pendulum-v1: the affine policy class")
  ax.legend(loc="center right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  args = preset_arguments(__doc__, PRESETS, argv, extra=lambda parser: parser.add_argument(
      "--compare", metavar="RUN_DIR", help="also score this `unrolled-es train` run's last θ on the held-out "
      "episodes, paired against the best affine policy"))
  cfg = PRESETS[args.preset]
  result = run(cfg)
  if args.compare:
    best = result["held_out_policies"][int(np.argmax(result["held_out_mean"]))]
    result["compare"] = compare(args.compare, best, cfg)
  write_result(result, args.out, "pendulum_linear", args.preset, plot)
  print(f"best affine policy: {max(result['held_out_mean']):.1f} on {cfg['held_out_episodes']} held-out "
        f"episodes; random search's best anti-damping policy {result['anti_damping_held_out'][0]:.1f}")
  if args.compare:
    c = result["compare"]
    print(f"{c['run']} (step {c['step']}): {c['held_out_mean']:.1f} ± {c['held_out_stderr']:.1f}, "
          f"{c['minus_best']:.1f} ± {c['minus_best_stderr']:.1f} against the best, paired")


if __name__ == "__main__":
  main()
