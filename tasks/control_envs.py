"""JAX environments for the control task behind one small interface, `ControlEnv`.

    obs, env_state = env.reset(key)
    obs, env_state, reward, done = env.step(key, env_state, action)     # no automatic reset

Observations are flat float32 vectors; `done` is the end of the episode (termination or the environment's own
time limit). Sources: gymnax (Lange 2022) by its ids, e.g. "CartPole-v1", "Pendulum-v1", "Acrobot-v1",
"MountainCarContinuous-v0", and Gymnasium's v5 MuJoCo tasks by their ids (`NATIVE_ENVS`: Swimmer, Hopper,
Walker2d, HalfCheetah, Ant, Humanoid, InvertedPendulum, InvertedDoublePendulum, Reacher) on native MuJoCo through
one batched host call per step (tasks/mujoco_native.py), or on mujoco-mjx for those in `MJX_ENVS`
(backend="mjx": the whole step in XLA, for accelerators).
gymnax's `env.step` resets an episode that ended inside the same call; the adapter calls `step_env` instead, so a
new episode never leaks into the old one: the control task decides what happens after `done`.
"""
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from unrolled_es_tasks.control_policies import ActionSpace

MJX_ENVS = ("Swimmer-v5",)
NATIVE_ENVS = ("Swimmer-v5", "Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Ant-v5", "Humanoid-v5",
               "InvertedPendulum-v5", "InvertedDoublePendulum-v5", "Reacher-v5")   # = mujoco_specs.SPECS
BACKENDS = ("native", "mjx")


class ControlEnv(NamedTuple):
  """One environment: reset(key) -> (obs, state); step(key, state, action) -> (obs, state, reward, done).

  max_steps: the environment's own episode length (the task's default horizon).
  differentiable: whether the reward and next state carry gradients of the action (autodiff baselines are
  meaningful only then: discrete actions and gymnax's stop-gradient transitions give zero gradients).
  """
  name: str
  reset: Callable[[Any], tuple]
  step: Callable[[Any, Any, Any], tuple]
  obs_size: int
  action_space: ActionSpace
  max_steps: int
  differentiable: bool


def make_env(env_id: str, backend: str | None = None) -> ControlEnv:
  """The environment called `env_id`: a gymnax id, or a MuJoCo id of NATIVE_ENVS / MJX_ENVS.

  backend (MuJoCo ids only): "native" (MuJoCo's C simulator on the host; the default on CPU, and for ids MJX lacks)
  or "mjx" (the default on accelerators where MJX has the id)."""
  if not isinstance(env_id, str):
    raise ValueError(f"env must be an environment id (a string) or a ControlEnv; got {env_id!r}")
  if backend is not None and backend not in BACKENDS:
    raise ValueError(f"backend must be None (automatic), 'native' or 'mjx'; got {backend!r}")
  if env_id in NATIVE_ENVS or env_id in MJX_ENVS:
    return _mujoco_env(env_id, backend)
  if backend is not None:
    raise ValueError(f"backend applies to the MuJoCo ids {NATIVE_ENVS}; {env_id!r} is not one (leave backend=None)")
  return gymnax_env(env_id)


def _mujoco_env(env_id, backend):
  if backend is None:
    import jax
    backend = "mjx" if (jax.default_backend() != "cpu" and env_id in MJX_ENVS) else "native"
  if backend == "mjx":
    if env_id not in MJX_ENVS:
      raise ValueError(f"backend='mjx' has {MJX_ENVS}; {env_id!r} runs on backend='native'")
    from unrolled_es_tasks import mjx_swimmer
    return mjx_swimmer.swimmer_v5()
  from unrolled_es_tasks import mujoco_native
  return mujoco_native.native_env(env_id)


def _import_gymnax():
  try:
    import gymnax
  except ImportError as e:
    raise ImportError("the control task needs gymnax: pip install -e '.[rl]'") from e
  return gymnax


def gymnax_env(env_id: str, **env_kwargs) -> ControlEnv:
  """A gymnax environment as a ControlEnv, with its default parameters."""
  gymnax = _import_gymnax()
  if env_id not in gymnax.registered_envs:
    choices = ", ".join(list(gymnax.registered_envs) + list(NATIVE_ENVS))
    raise ValueError(f"env must be a gymnax or Gymnasium MuJoCo environment id, one of: {choices}; got {env_id!r}")
  env, params = gymnax.make(env_id, **env_kwargs)
  space = _action_space(env.action_space(params))
  differentiable = (not space.discrete) and getattr(env, "supports_transition_gradients", False)
  if differentiable:
    env = env.with_transition_gradients()
  obs_size = int(np.prod(env.observation_space(params).shape))
  action_shape = () if space.discrete else tuple(env.action_space(params).shape)

  def reset(key):
    obs, state = env.reset_env(key, params)
    return _flat(obs), state

  def step(key, state, action):
    obs, state, reward, terminated, _ = env.step_env(key, state, jnp.reshape(action, action_shape), params)
    done = jnp.logical_or(terminated, env.is_truncated(state, params))
    return _flat(obs), state, jnp.asarray(reward, jnp.float32).reshape(()), done.reshape(())

  return ControlEnv(name=env_id, reset=reset, step=step, obs_size=obs_size, action_space=space,
                    max_steps=int(params.max_steps_in_episode), differentiable=bool(differentiable))


def _flat(obs):
  return jnp.ravel(jnp.asarray(obs)).astype(jnp.float32)


def _action_space(space) -> ActionSpace:
  if hasattr(space, "n"):
    return ActionSpace(num_actions=int(space.n))
  if hasattr(space, "low") and hasattr(space, "high"):
    shape = tuple(space.shape) or (1,)
    low = np.broadcast_to(np.asarray(space.low, np.float32), shape).reshape(-1)
    high = np.broadcast_to(np.asarray(space.high, np.float32), shape).reshape(-1)
    return ActionSpace(low=low, high=high)
  raise ValueError(f"unsupported action space {space!r}: the control task takes Discrete or Box actions")
