"""Gymnasium's v5 MuJoCo tasks on native MuJoCo through ue.host_function: the same linear policy and seed give
Gymnasium's own rewards, terminations and returns; Swimmer agrees with MJX; estimators run on them."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("mujoco")
gymnasium = pytest.importorskip("gymnasium")
pytest.importorskip("gymnasium.envs.mujoco")

import unrolled_es as ue  # noqa: E402
import unrolled_es_tasks as tasks  # noqa: E402
from unrolled_es.core.system import episode_keys, run_episode  # noqa: E402
from unrolled_es_tasks import mujoco_native  # noqa: E402
from unrolled_es_tasks.control_envs import NATIVE_ENVS, make_env  # noqa: E402
from unrolled_es_tasks.control_policies import apply_policy, to_action  # noqa: E402

HORIZON = 150


def _linear_policies():
  """A fixed random linear policy per environment, and its task (no normalisation, no shift: plain rewards)."""
  out = {}
  for i, env_id in enumerate(NATIVE_ENVS):
    task = tasks.get("control", env=env_id, normalize_obs=False, reward_shift=0.0, horizon=HORIZON, num_eval=1)
    w = task.theta0["policy"]["w"]
    scale = 0.5 / np.sqrt(w.shape[0])
    out[env_id] = (task, {"policy": {"w": jnp.asarray(np.random.default_rng(i).normal(size=w.shape) * scale,
                                                      jnp.float32)}})
  return out


def _gymnasium_episode(env_id, w, seed, horizon):
  """Gymnasium's own episode under the linear policy clip(obs·w): (actions, rewards, observations), to the end.
  The policy is the control task's own, compiled by XLA, so both sides round its float32 matmul alike."""
  env = gymnasium.make(env_id)
  obs, _ = env.reset(seed=seed)
  space = make_env(env_id).action_space
  policy = jax.jit(lambda x: to_action(space, apply_policy({"w": jnp.asarray(w)}, x), None, False, 0.0, "clip"))
  actions, rewards, observations = [], [], []
  for _ in range(horizon):
    actions.append(np.asarray(policy(jnp.asarray(obs, jnp.float32))))
    obs, reward, terminated, truncated, _ = env.step(actions[-1])
    rewards.append(reward)
    observations.append(obs)
    if terminated or truncated:
      break
  return np.array(actions), np.array(rewards), np.array(observations)


def _replay(env_id, key, actions):
  env = make_env(env_id, "native")

  def run(key, actions):
    _, state = env.reset(key)

    def body(state, a):
      obs, state, reward, done = env.step(key, state, a)
      return state, (obs, reward, done)
    return jax.lax.scan(body, state, actions)[1]
  return jax.jit(run)(key, jnp.asarray(actions, jnp.float32))


@pytest.mark.parametrize("env_id", NATIVE_ENVS)
def test_gymnasiums_actions_replayed_give_its_rewards_observations_and_end(env_id):
  """The physics is MuJoCo's in float64, bit for bit: Gymnasium's whole episode (up to its 1000 steps) replayed
  from the same seed gives its rewards and observations to float32 rounding, and ends at the same step."""
  key = jax.random.PRNGKey(3)
  _, theta = _linear_policies()[env_id]
  actions, rewards, observations = _gymnasium_episode(env_id, np.asarray(theta["policy"]["w"]),
                                                      int(mujoco_native.reset_seed(key)), 1000)
  obs, reward, done = _replay(env_id, key, actions)
  np.testing.assert_allclose(reward, rewards, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(obs, observations, rtol=1e-5, atol=1e-5)
  assert list(np.flatnonzero(np.asarray(done))) == [len(rewards) - 1]   # terminated, or truncated at the limit


def test_returns_equal_gymnasiums_for_the_same_policy_and_seed():
  """The control task's episodes (JAX policy, one host call per step for the whole episode program) against
  Gymnasium stepping the same policy from the same seed: every reward, the end and the return agree."""
  policies = _linear_policies()
  key = jax.random.PRNGKey(11)
  episodes = jax.jit(lambda k: {env_id: run_episode(task.system, theta, k)
                                for env_id, (task, theta) in policies.items()})(key)
  seed = int(mujoco_native.reset_seed(episode_keys(key)[0]))
  for env_id, (final, losses) in episodes.items():
    _, expected, _ = _gymnasium_episode(env_id, np.asarray(policies[env_id][1]["policy"]["w"]), seed, HORIZON)
    rewards, length = -np.asarray(losses, np.float64), int(final["length"])
    assert length == len(expected), (env_id, length, len(expected))   # the same termination step
    np.testing.assert_allclose(rewards[:length], expected, rtol=1e-4, atol=1e-4, err_msg=env_id)
    assert np.all(rewards[length:] == 0), env_id   # frozen after the end
    np.testing.assert_allclose(rewards.sum(), expected.sum(), rtol=1e-5, atol=1e-3, err_msg=env_id)
  lengths = {env_id: int(f["length"]) for env_id, (f, _) in episodes.items()}
  assert lengths["Reacher-v5"] == 50 and lengths["HalfCheetah-v5"] == HORIZON
  assert min(lengths.values()) < HORIZON   # some policy falls over: terminations are compared too


def test_native_swimmer_agrees_with_mjx_from_the_same_state():
  # Compiling MJX's step takes 30-90 s on 2 cores; native equals Gymnasium exactly (above) and MJX equals Gymnasium
  # step by step (tests/test_control.py::test_swimmer_matches_gymnasium, always run), so this runs on request.
  if not os.environ.get("UNROLLED_ES_SLOW_TESTS"):
    pytest.skip("set UNROLLED_ES_SLOW_TESTS=1 to compile MJX Swimmer beside native Swimmer (30-90 s)")
  pytest.importorskip("unrolled_es_tasks.mjx_swimmer")
  native, mjx_env = make_env("Swimmer-v5", "native"), make_env("Swimmer-v5", "mjx")
  sim = mujoco_native.simulator("Swimmer-v5")
  _, state = native.reset(jax.random.PRNGKey(4))
  physics = mujoco_native.decode(np.asarray(state["physics"]), np.float64)
  sim.mujoco.mj_setState(sim.model, sim.data, physics, sim.what)
  _, mjx_state = mjx_env.reset(jax.random.PRNGKey(0))
  mjx_state = dict(mjx_state, qpos=jnp.asarray(sim.data.qpos, jnp.float32), qvel=jnp.asarray(sim.data.qvel,
                                                                                            jnp.float32))
  actions = np.random.default_rng(2).uniform(-1, 1, (20, 2)).astype(np.float32)

  def roll(env, s):
    def body(s, a):
      obs, s, reward, _ = env.step(jax.random.PRNGKey(0), s, a)
      return s, (obs, reward)
    return jax.lax.scan(body, s, jnp.asarray(actions))[1]
  (obs_n, rew_n), (obs_m, rew_m) = jax.jit(lambda a, b: (roll(native, a), roll(mjx_env, b)))(state, mjx_state)
  np.testing.assert_allclose(obs_n, obs_m, atol=1e-4)
  np.testing.assert_allclose(rew_n, rew_m, atol=1e-3)


def test_native_is_the_cpu_default_and_backends_are_checked():
  assert make_env("Hopper-v5").name == "Hopper-v5" and "physics" in jax.eval_shape(
      make_env("Hopper-v5").reset, jax.random.PRNGKey(0))[1]
  with pytest.raises(ValueError, match="backend='mjx' has"):
    make_env("Hopper-v5", "mjx")
  with pytest.raises(ValueError, match="backend must be"):
    tasks.get("control", env="Hopper-v5", backend="gpu")
  with pytest.raises(ValueError, match="backend applies to the MuJoCo ids"):
    make_env("CartPole-v1", "native")
  with pytest.raises(ValueError, match="reward_shift must be"):
    tasks.get("control", env="Hopper-v5", reward_shift="x")


def test_es_single_on_hopper_is_deterministic_and_evaluate_reports_gymnasium_returns():
  task = tasks.get("control", env="Hopper-v5", horizon=40, num_eval=2)
  assert task.settings["sigma"] == 0.025
  est = ue.es_single(task.system, num_particles=4, sigma=0.025, truncation_length=20, mask=task.mask)
  run = jax.jit(lambda k, th: est.estimate(k, th, est.init(k, th)))
  first, second = run(jax.random.PRNGKey(0), task.theta0), run(jax.random.PRNGKey(0), task.theta0)
  for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  grad, _, info = first
  assert int(info["num_nonfinite"]) == 0 and np.any(np.asarray(grad["policy"]["w"]) != 0)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree_util.tree_leaves(grad["obs_norm"]))
  # The zero policy stands until it falls: Gymnasium's return counts its alive bonus, the shifted loss does not.
  result = jax.jit(task.evaluate)(task.theta0, jax.random.PRNGKey(1))
  shifted = -float(result["meta_loss"]) * 40   # the mean shifted return over the 2 episodes
  assert float(result["return"]) == pytest.approx(shifted + float(result["episode_length"]), rel=1e-4)
  assert float(result["return"]) > float(result["episode_length"]) * 0.5
