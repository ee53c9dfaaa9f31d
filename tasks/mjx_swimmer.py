"""MuJoCo Swimmer-v5 (Gymnasium; Todorov et al. 2012) on mujoco-mjx, MuJoCo's JAX backend, as a ControlEnv.

The model is Gymnasium's own `swimmer.xml`, read from the installed gymnasium package (nothing downloads). One
environment step reproduces Gymnasium's Swimmer-v5 with its defaults:

    ctrl = a ∈ [−1, 1]²,  4 MuJoCo steps of 0.01 s (dt = 0.04),
    reward = (x_after − x_before)/dt − 1e-4·|a|²     (x = qpos[0], the torso's slider position),
    observation = (qpos[2:], qvel) ∈ R⁸,  episodes of 1000 steps that never terminate early,
    reset: qpos = qpos0 + U(−0.1, 0.1)⁵, qvel = U(−0.1, 0.1)⁵.

Differences from Gymnasium's CPU simulator are float32 rounding (MJX runs in float32 unless jax_enable_x64 is
set), about 1e-6 in the observation per step (tests/test_control.py checks a few steps against Gymnasium).
"""
import contextlib
import functools
import io
import os

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es_tasks.control_envs import ControlEnv
from unrolled_es_tasks.control_policies import ActionSpace

FRAME_SKIP = 4
CTRL_COST_WEIGHT = 1e-4
FORWARD_REWARD_WEIGHT = 1.0
RESET_NOISE_SCALE = 0.1
MAX_STEPS = 1000
DYNAMIC_FIELDS = ("qpos", "qvel", "act", "qacc_warmstart", "time")


def _import_mujoco():
  try:
    import gymnasium
    import mujoco
    with contextlib.redirect_stdout(io.StringIO()):  # mjx prints that the optional warp backend is absent
      from mujoco import mjx
  except ImportError as e:
    raise ImportError("Swimmer-v5 needs mujoco, mujoco-mjx and gymnasium: pip install -e '.[rl]'") from e
  return gymnasium, mujoco, mjx


def swimmer_xml_path() -> str:
  gymnasium, _, _ = _import_mujoco()
  return os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", "swimmer.xml")


@functools.lru_cache(maxsize=None)
def _model():
  _, mujoco, mjx = _import_mujoco()
  model = mujoco.MjModel.from_xml_path(swimmer_xml_path())
  return model, mjx.put_model(model)


def dynamic_state(data):
  """What a MuJoCo step reads from the previous one: everything else in mjx.Data is recomputed from it. Keeping
  only these arrays (not the whole mjx.Data, whose pytree carries static model objects) keeps the particles' state
  small and checkpoints portable between processes."""
  return {name: getattr(data, name) for name in DYNAMIC_FIELDS}


def observation(data):
  return jnp.concatenate([data.qpos[2:], data.qvel]).astype(jnp.float32)


def swimmer_v5() -> ControlEnv:
  """Gymnasium's Swimmer-v5 on MJX (module docstring)."""
  _, _, mjx = _import_mujoco()
  model, mx = _model()
  data0 = mjx.make_data(mx)
  qpos0 = jnp.asarray(model.qpos0, jnp.float32)
  dt = float(model.opt.timestep) * FRAME_SKIP

  def reset(key):
    kpos, kvel = jax.random.split(key)
    noise = lambda k, n: jax.random.uniform(k, (n,), jnp.float32, -RESET_NOISE_SCALE, RESET_NOISE_SCALE)
    data = data0.replace(qpos=qpos0 + noise(kpos, model.nq), qvel=noise(kvel, model.nv))
    return observation(data), dynamic_state(data)

  def step(key, state, action):
    del key
    data = data0.replace(**state, ctrl=jnp.asarray(action, data0.ctrl.dtype))
    data, _ = jax.lax.scan(lambda d, _: (mjx.step(mx, d), None), data, None, length=FRAME_SKIP)
    x_velocity = (data.qpos[0] - state["qpos"][0]) / dt
    reward = FORWARD_REWARD_WEIGHT * x_velocity - CTRL_COST_WEIGHT * jnp.sum(jnp.square(action))
    return observation(data), dynamic_state(data), reward.astype(jnp.float32), jnp.zeros((), bool)

  space = ActionSpace(low=np.asarray(model.actuator_ctrlrange[:, 0], np.float32),
                      high=np.asarray(model.actuator_ctrlrange[:, 1], np.float32))
  # Not differentiable: MJX's constraint solver (the joint limits) runs a while_loop, which reverse-mode autodiff
  # rejects.
  return ControlEnv(name="Swimmer-v5", reset=reset, step=step, obs_size=model.nq - 2 + model.nv,
                    action_space=space, max_steps=MAX_STEPS, differentiable=False)
