"""Gymnasium's v5 MuJoCo tasks on native MuJoCo (C, float64), as ControlEnvs through `ue.host_function`.

The simulator's complete integration state (mjSTATE_INTEGRATION: time, qpos, qvel, act, warm start, ...) lives in
JAX as uint32 words, bit for bit, so the physics is exactly MuJoCo's and exactly Gymnasium's: one batched host
call per inner step loads each running member's state into an MjData, applies the action, runs `frame_skip`
`mj_step`s (and `mj_rnePostConstraint` where the observation reads contact forces), and returns the new state with
the observation, reward and termination of tasks/mujoco_specs.py. Members whose episode ended are not simulated.
Resets seed `np.random.default_rng` with 32 bits of the episode's key (`reset_seed`), so a key reproduces its
episode, and `gymnasium.make(id).reset(seed=reset_seed(key))` starts from the very same state.

Why a loop over MjData rather than `mujoco.rollout`: measured on HalfCheetah-v5, 64 members, 2 shared CPU cores
(benchmarks/env_throughput.py), the loop ran as fast as rollout's C loop (9.4k vs 10.0k env steps/s under load)
and it can read the derived quantities (xpos, contact forces) the rewards need, which rollout does not return.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es.core.host_system import decode, encode, host_function
from unrolled_es_tasks.control_envs import ControlEnv
from unrolled_es_tasks.control_policies import ActionSpace
from unrolled_es_tasks.mujoco_specs import SPECS, MujocoSpec

NATIVE_ENVS = tuple(SPECS)


def _import_mujoco():
  try:
    import gymnasium
    import mujoco
  except ImportError as e:
    raise ImportError("the MuJoCo tasks need mujoco and gymnasium (for its model files): pip install -e '.[rl]'") from e
  return gymnasium, mujoco


def xml_path(spec: MujocoSpec) -> str:
  gymnasium, _ = _import_mujoco()
  return os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", spec.xml)


def reset_seed(key):
  """The 32-bit seed of the numpy generator that draws an episode's initial state from its key."""
  return jax.random.bits(key, (), jnp.uint32)


class Simulator:
  """Batched native MuJoCo for one environment id: `reset(seeds)` and `step(physics, position, action, running)`,
  numpy in and out, float64 state."""

  def __init__(self, env_id: str):
    _, self.mujoco = _import_mujoco()
    self.spec = SPECS[env_id]
    self.model = self.mujoco.MjModel.from_xml_path(xml_path(self.spec))
    self.data = self.mujoco.MjData(self.model)
    self.what = self.mujoco.mjtState.mjSTATE_INTEGRATION
    self.state_size = self.mujoco.mj_stateSize(self.model, self.what)
    self.dt = self.model.opt.timestep * self.spec.frame_skip
    self.constants = {"body_mass": np.array(self.model.body_mass),
                      "body_ids": tuple(self.model.body(name).id for name in self.spec.bodies)}
    self.fields = ("qpos", "qvel") + self.spec.fields

  def _read(self, rows: int):
    return {name: np.empty((rows,) + np.shape(getattr(self.data, name))) for name in self.fields}

  def _record(self, out, i, physics):
    self.mujoco.mj_getState(self.model, self.data, physics[i], self.what)
    for name in self.fields:
      out[name][i] = getattr(self.data, name)

  def reset(self, seeds):
    """(physics [B, S], position [B, k], observation [B, n]) of new episodes, as Gymnasium's reset draws them."""
    m, d, mujoco = self.model, self.data, self.mujoco
    physics, f = np.empty((len(seeds), self.state_size)), self._read(len(seeds))
    for i, seed in enumerate(seeds):
      qpos, qvel = self.spec.reset(np.random.default_rng(int(seed)), np.array(m.qpos0), m.nv)
      mujoco.mj_resetData(m, d)
      d.qpos[:], d.qvel[:] = qpos, qvel
      mujoco.mj_forward(m, d)
      self._record(f, i, physics)
    f.update(self.constants)
    position = self.spec.position(f)
    f["position"] = position
    obs, _, _ = self.spec.outcome(f, position, np.zeros((len(seeds), m.nu)), self.dt)
    return physics, position, obs

  def step(self, physics, position, action):
    """One environment step of every row: (physics, position, observation, reward, terminated)."""
    m, d, mujoco = self.model, self.data, self.mujoco
    new, f = np.empty_like(physics), self._read(len(physics))
    for i in range(len(physics)):
      mujoco.mj_setState(m, d, physics[i], self.what)
      d.ctrl[:] = action[i]
      mujoco.mj_step(m, d, self.spec.frame_skip)
      if self.spec.post_constraint:
        mujoco.mj_rnePostConstraint(m, d)
      self._record(f, i, new)
    f.update(self.constants)
    f["position"] = self.spec.position(f)
    obs, reward, terminated = self.spec.outcome(f, position, np.asarray(action, np.float64), self.dt)
    return new, f["position"], obs, reward, terminated


@functools.lru_cache(maxsize=None)
def simulator(env_id: str) -> Simulator:
  return Simulator(env_id)


def _host_step(sim: Simulator):
  """The host side of one step: only running rows are simulated; the others keep their state."""
  def on_host(physics, position, action, running):
    physics_64, position_64 = decode(physics, np.float64), decode(position, np.float64)
    rows = np.flatnonzero(running)
    obs = np.zeros((len(running), sim.obs_size), np.float32)
    reward, terminated = np.zeros(len(running), np.float32), np.zeros(len(running), bool)
    if len(rows):
      new, pos, obs[rows], reward[rows], terminated[rows] = sim.step(physics_64[rows], position_64[rows],
                                                                     action[rows])
      physics_64[rows], position_64[rows] = new, pos
    return encode(physics_64), encode(position_64), obs, reward, terminated
  return on_host


def native_env(env_id: str) -> ControlEnv:
  """Gymnasium's `env_id` (one of NATIVE_ENVS) on native MuJoCo (module docstring)."""
  sim = simulator(env_id)
  physics, position, obs = sim.reset(np.zeros(1, np.uint32))
  sim.obs_size = obs.shape[1]
  wire = lambda x: jax.ShapeDtypeStruct(x.shape[1:] + (2,), jnp.uint32)
  rows = (wire(physics), wire(position), jax.ShapeDtypeStruct(obs.shape[1:], jnp.float32))
  host_reset = host_function(lambda seeds: _encoded_reset(sim, seeds), rows, name=f"native MuJoCo {env_id}")
  host_step = host_function(_host_step(sim), rows + (jax.ShapeDtypeStruct((), jnp.float32),
                                                    jax.ShapeDtypeStruct((), jnp.bool_)),
                            name=f"native MuJoCo {env_id}")

  def reset(key):
    physics, position, obs = host_reset(reset_seed(key))
    return obs, {"physics": physics, "position": position, "done": jnp.zeros((), bool),
                 "steps": jnp.zeros((), jnp.int32)}

  def step(key, state, action):
    del key   # MuJoCo is deterministic
    running = jnp.logical_not(state["done"])
    physics, position, obs, reward, terminated = host_step(state["physics"], state["position"],
                                                           jnp.asarray(action, jnp.float32), running)
    steps = state["steps"] + running.astype(jnp.int32)
    done = state["done"] | terminated | (steps >= sim.spec.max_steps)   # Gymnasium's TimeLimit truncates too
    return obs, {"physics": physics, "position": position, "done": done, "steps": steps}, reward, done

  ctrl = np.asarray(sim.model.actuator_ctrlrange, np.float32)
  return ControlEnv(name=env_id, reset=reset, step=step, obs_size=sim.obs_size,
                    action_space=ActionSpace(low=ctrl[:, 0], high=ctrl[:, 1]), max_steps=sim.spec.max_steps,
                    differentiable=False)


def _encoded_reset(sim, seeds):
  physics, position, obs = sim.reset(seeds)
  return encode(physics), encode(position), np.asarray(obs, np.float32)
