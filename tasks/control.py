"""Reinforcement-learning control: one episode of a policy in an environment is an unrolled system.

    state s_t = (environment state, observation, done flag, observation statistics),
    step:  a_t = π_θ(x̃_t) with x̃_t the normalised observation;  l_t = c − r_t, or 0 once the episode has ended
           (c = `reward_shift`, ARS's survival-bonus shift, 0 unless asked or ARS used one for the task),
    L(θ) = 1/T Σ_t l_t = −E[return]/T,   T = the environment's episode length (e.g. 500 for CartPole-v1).

So online ES (ES-Single, PES) trains policies the way ARS (Mania et al., 2018), the PES paper (Vicol et al.,
2021) and the NRES paper (Li et al., 2023) do, with a linear or MLP policy (tasks/control_policies.py) on gymnax
environments and Gymnasium's v5 MuJoCo tasks on native MuJoCo through one batched host call per step, or Swimmer
on MJX (tasks/control_envs.py, tasks/mujoco_native.py, tasks/mjx_swimmer.py). `evaluate` reports
returns (sums of rewards per episode) beside the per-step meta-loss.

Episodes that end early are frozen, not restarted: after `done` the state stops changing and every remaining
step of the horizon has loss 0, so every episode has exactly T steps. Why: the estimators reset a particle only
when it reaches T, and ES is unbiased for the gradient of the expected (smoothed) mean loss of a fixed-length
unroll. With a frozen absorbing state that mean loss is exactly −E[return]/T, whatever θ does to the episode's
length. Restarting inside the horizon instead would add the returns of extra episodes, whose number depends on
θ (a policy that falls over quickly would collect more first steps), and optimise average reward per step rather
than the return. gymnax's `env.step` auto-resets on done; the adapter uses `step_env`, so it cannot leak.

Observation normalisation (ARS V2, tasks/observation_norm.py) keeps running statistics in θ["obs_norm"];
`Task.mask` excludes them from perturbation and `Task.after_update` (= `update_obs_norm`) merges what the
particles observed into θ after each optimizer step, outside the estimate, which stays pure.
"""
import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es_tasks import observation_norm
from unrolled_es_tasks.base import Task
from unrolled_es_tasks.control_envs import ControlEnv, make_env
from unrolled_es_tasks.control_policies import POLICIES, SQUASHES, apply_policy, init_policy, to_action
from unrolled_es.core.system import UnrolledSystem, check_bool, check_int, check_positive_float, run_episode

update_obs_norm = observation_norm.update_obs_norm

# Estimator settings per environment: with them `unrolled-es train --task control --task-arg env=<id> --estimator
# es_single` trains the policy (Pendulum-v1's are tuned for policy=mlp: the best linear policy scores about −775,
# benchmarks/pendulum_linear.py). Swimmer's are the NRES paper's (Li et al. 2023: N = 30 pairs, K = 100, σ = 0.3,
# SGD, lr 3); the gymnax ones are ours.
SETTINGS = {
    "CartPole-v1": {"sigma": 0.1, "num_particles": 32, "truncation_length": 50, "outer_lr": 0.05,
                    "optimizer": "adam", "steps": 100},
    "Pendulum-v1": {"sigma": 0.05, "num_particles": 64, "truncation_length": 20, "outer_lr": 0.02,
                    "optimizer": "adam", "steps": 1500},
    "Acrobot-v1": {"sigma": 0.1, "num_particles": 32, "truncation_length": 50, "outer_lr": 0.05,
                   "optimizer": "adam", "steps": 300},
    "MountainCarContinuous-v0": {"sigma": 0.1, "num_particles": 32, "truncation_length": 37, "outer_lr": 0.05,
                                 "optimizer": "adam", "steps": 300},
    "Swimmer-v5": {"sigma": 0.3, "num_particles": 30, "truncation_length": 100, "outer_lr": 3.0,
                   "optimizer": "sgd", "steps": 100},
}
# The MuJoCo locomotion tasks: σ is ARS's ν for the same task, and Adam's lr is ARS's step size α over √b: ARS moves
# a coordinate by about α/√b per update (the sum of b kept directions, each weighted by Δr/σ_R ≈ 1, divided by b),
# and Adam by about lr. N pairs and K are ours (N·2·K member steps per update). ARS's ν, α, b (V2-t; its code's
# example commands as copied in third-party repositories, UNVERIFIED against the paper's appendix): Hopper 0.025,
# 0.01, 4; HalfCheetah 0.03, 0.02, 4; Walker2d 0.025, 0.03, 30 (UNVERIFIED); Ant 0.025, 0.015, 20; Humanoid 0.0075,
# 0.02, 230 (UNVERIFIED).
# Bodies that fall (Hopper, Walker2d, Ant, Humanoid) get windows of a whole episode, K = T: a fallen member is frozen
# for the rest of its horizon, so early in training most steps of a K = 100 window carry no loss difference. On
# Hopper, ES-Single from a return of 139-141 reached 1046 with K = 1000 and 268 with K = 100 after the same ~390k
# member steps (one seed each, a shared CPU).
# Hopper also takes ARS's top-b directions (b = N/4, `unrolled_es.fitness.top_directions`) with unstaggered
# particles, so that each window is one whole episode of one draw, as ARS ranks them. With them the command line's
# defaults passed ARS's 3120 at 2.9 M (seed 0) and 1.3 M (seed 1) env steps; without (staggered, every direction,
# the same N, σ, K and Adam step) seed 0 stood at 2445 at 3.15 M and reached 3022 at 18.9 M (benchmarks/RESULTS.md).
# Walker2d and HalfCheetah take the same two choices (and HalfCheetah whole-episode windows): by flag they passed
# ARS's 4390 at 5.0 M env steps on Walker2d and its 3430 at 2.6 M on HalfCheetah (seed 0); HalfCheetah's earlier
# K = 100, staggered, every-direction settings stood at 1853 after 5.0 M. Over three seeds (benchmarks.mujoco_linear)
# HalfCheetah passed on all three and Walker2d on none: two of its seeds stay in a gait that falls near step 220;
# Walker2d without the shift (reward_shift=0) stands still for 1000 steps instead (benchmarks/RESULTS.md).
# Ant takes the same two choices and no survival-bonus shift: so seed 0 went from 995 to 2290 at 9.0 M env steps
# (then about 2280 on whole episodes to 10.8 M), seed 1 passed ARS's 3580 at 10.9 M, seed 2 stood at 1913 at 9.2 M;
# with the shift and the same choices one run reached 1267 at 1.1 M and then 650-965 with episodes ending early,
# another 1269 at 3.15 M (seed 0 each, benchmarks/RESULTS.md).
_LOCOMOTION = {"num_particles": 32, "truncation_length": 1000, "optimizer": "adam", "steps": 400}
SETTINGS.update({
    "Hopper-v5": dict(_LOCOMOTION, sigma=0.025, outer_lr=0.005, stagger=False, shaping="top_directions:8"),
    "HalfCheetah-v5": dict(_LOCOMOTION, sigma=0.03, outer_lr=0.01, stagger=False, shaping="top_directions:8"),
    "Walker2d-v5": dict(_LOCOMOTION, sigma=0.025, outer_lr=0.0055, stagger=False, shaping="top_directions:8"),
    "Ant-v5": dict(_LOCOMOTION, sigma=0.025, outer_lr=0.0034, stagger=False, shaping="top_directions:8"),
    "Humanoid-v5": dict(_LOCOMOTION, sigma=0.0075, outer_lr=0.0013, num_particles=64),
})
# ARS's `shift` (its code's --shift): the survival bonus subtracted from each training reward, so standing still
# is not a local optimum. Training only: `evaluate` reports Gymnasium's own returns.
REWARD_SHIFT = {"Hopper-v5": 1.0, "Walker2d-v5": 1.0, "Humanoid-v5": 5.0}   # Ant: none, see SETTINGS
GENERIC_SETTINGS = {"sigma": 0.1, "num_particles": 32, "truncation_length": 50, "outer_lr": 0.05,
                    "optimizer": "adam", "steps": 300}


def control(env="CartPole-v1", policy="linear", hidden=(32, 32), bias=False, stochastic=False, action_std=0.1,
            squash="clip", normalize_obs=True, horizon=None, num_eval=16, seed=0, backend=None,
            reward_shift=None) -> Task:
  """The control task.

  env:       a gymnax id ("CartPole-v1", "Pendulum-v1", ...), a Gymnasium MuJoCo id ("Hopper-v5", "Ant-v5", ...:
             control_envs.NATIVE_ENVS), or a `ControlEnv`.
  backend:   MuJoCo ids only: "native" (MuJoCo in C on the host, one batched call per step; the default on CPU)
             or "mjx" (Swimmer-v5 in XLA; the default for it on accelerators).
  reward_shift: subtracted from every training reward while the episode runs (ARS's shift; default REWARD_SHIFT
             for the id, else 0); `evaluate` adds it back, so returns are the environment's.
  policy:    "linear" (x̃ W, W = 0 at the start, ARS) or "mlp" (tanh layers of sizes `hidden`).
  bias:      add a bias to the linear policy (ARS has none).
  stochastic: sample discrete actions from softmax(logits) / add N(0, action_std²) to continuous ones.
  squash:    "clip" or "tanh": how continuous outputs are mapped into the action bounds.
  normalize_obs: ARS V2 observation normalisation (θ gets an "obs_norm" entry, and the task a mask and an
             after_update); False is ARS V1.
  horizon:   T, steps per episode (default the environment's own episode length).
  num_eval:  episodes averaged by `evaluate`. seed: the MLP's initial weights.
  evaluate(theta, key) -> {"meta_loss": −mean return / T, "return": mean return over num_eval episodes,
  "return_std", "return_min", "episode_length": mean steps taken before the end (at most T)}.
  """
  cfg = _check_options(policy, hidden, bias, stochastic, action_std, squash, normalize_obs, num_eval, seed)
  cfg["reward_shift"] = _check_shift(env, reward_shift)
  env = env if isinstance(env, ControlEnv) else make_env(env, backend)
  horizon = env.max_steps if horizon is None else check_int("horizon", horizon, 1)
  space = env.action_space
  policy_params = init_policy(policy, jax.random.PRNGKey(cfg["seed"]), env.obs_size, space.size, cfg["hidden"],
                              cfg["bias"])
  theta0 = {"policy": policy_params}
  if cfg["normalize_obs"]:
    theta0["obs_norm"] = observation_norm.init_stats(env.obs_size)
  system = control_system(env, horizon, cfg)
  mask = jax.tree_util.tree_map(lambda x: np.ones(np.shape(x), bool), theta0)
  if cfg["normalize_obs"]:
    mask["obs_norm"] = observation_norm.mask(theta0["obs_norm"])
  settings = dict(SETTINGS.get(env.name, GENERIC_SETTINGS))
  settings["truncation_length"] = min(settings["truncation_length"], horizon)
  return Task(name="control", system=system, theta0=theta0,
              evaluate=make_evaluate(system, cfg["num_eval"], cfg["reward_shift"]),
              settings=settings, mask=mask, after_update=update_obs_norm if cfg["normalize_obs"] else None,
              counters=env_steps if cfg["normalize_obs"] else None)


def env_steps(theta) -> dict:
  """The env steps simulated in training so far (the observation statistics count every running member's step;
  a member frozen after its episode ended adds none): what ARS counts, and what the progress bar shows per second."""
  return {"env_steps": theta["obs_norm"]["count"]}


def _check_shift(env, reward_shift):
  if reward_shift is None:
    return REWARD_SHIFT.get(env, 0.0) if isinstance(env, str) else 0.0
  try:
    shift = float(reward_shift)
  except (TypeError, ValueError):
    shift = float("nan")
  if not np.isfinite(shift):
    raise ValueError(f"reward_shift must be a finite number (or None: ARS's shift for the id); got {reward_shift!r}")
  return shift


def _check_options(policy, hidden, bias, stochastic, action_std, squash, normalize_obs, num_eval, seed):
  if policy not in POLICIES:
    raise ValueError(f"policy must be one of {POLICIES}; got {policy!r}")
  if squash not in SQUASHES:
    raise ValueError(f"squash must be one of {SQUASHES}; got {squash!r}")
  hidden = (hidden,) if isinstance(hidden, int) else hidden
  if not (isinstance(hidden, (tuple, list)) and hidden):
    raise ValueError(f"hidden must be a non-empty tuple of layer sizes; got {hidden!r}")
  hidden = tuple(check_int("hidden", h, 1) for h in hidden)
  return {"policy": policy, "hidden": hidden, "bias": check_bool("bias", bias),
          "stochastic": check_bool("stochastic", stochastic), "action_std": check_positive_float("action_std",
          action_std), "squash": squash, "normalize_obs": check_bool("normalize_obs", normalize_obs),
          "num_eval": check_int("num_eval", num_eval, 1), "seed": check_int("seed", seed, 0)}


def control_system(env: ControlEnv, horizon: int, cfg: dict) -> UnrolledSystem:
  """The episode as an UnrolledSystem (module docstring); cfg holds the checked options of `control`."""
  space, normalize = env.action_space, cfg["normalize_obs"]
  bounded = space.discrete or bool(np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high)))
  if cfg["squash"] == "tanh" and not bounded:
    raise ValueError(f"squash='tanh' needs finite action bounds; {env.name} has low={space.low}, high={space.high}")

  def init(key, theta):
    obs, env_state = env.reset(key)
    state = {"env": env_state, "obs": obs, "done": jnp.zeros((), bool), "length": jnp.zeros((), jnp.int32)}
    if normalize:
      state["obs_stats"] = observation_norm.empty_accumulator(theta["obs_norm"])
    return state

  def step(theta, state, key):
    policy_key, env_key = jax.random.split(key)
    x = state["obs"]
    features = observation_norm.normalize(theta["obs_norm"], x) if normalize else x
    action = to_action(space, apply_policy(theta["policy"], features), policy_key, cfg["stochastic"],
                       cfg["action_std"], cfg["squash"])
    obs, env_state, reward, done = env.step(env_key, state["env"], action)
    running = jnp.logical_not(state["done"])
    moved = {"env": env_state, "obs": obs, "done": done, "length": state["length"] + 1}
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(running, a, b), moved, {k: state[k] for k in moved})
    if normalize:
      new["obs_stats"] = observation_norm.accumulate(state["obs_stats"], theta["obs_norm"], x, running)
    return new, jnp.where(running, cfg.get("reward_shift", 0.0) - reward, 0.0).astype(jnp.float32)

  return UnrolledSystem(init=init, step=step, horizon=horizon)


def make_evaluate(system: UnrolledSystem, num_eval: int, reward_shift: float = 0.0):
  """evaluate(theta, key): the unperturbed policy on `num_eval` episodes, in return units (the environment's own
  rewards, the training shift added back) and as a meta-loss (the training loss)."""

  def evaluate(theta, key):
    final, losses = jax.vmap(lambda k: run_episode(system, theta, k))(jax.random.split(key, num_eval))
    returns = -jnp.sum(losses, axis=1) + reward_shift * final["length"].astype(jnp.float32)
    return {"meta_loss": jnp.mean(losses), "return": jnp.mean(returns), "return_std": jnp.std(returns),
            "return_min": jnp.min(returns), "episode_length": jnp.mean(final["length"].astype(jnp.float32))}

  return evaluate
