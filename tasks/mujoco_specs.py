"""The Gymnasium v5 MuJoCo tasks (Todorov et al. 2012; Gymnasium, Towers et al. 2024), defined over batches.

Each `MujocoSpec` says what one environment step is, as Gymnasium 1.x's `*_v5.py` score it with their default
arguments: the model (Gymnasium's own XML, read from the installed package), the frame skip, the episode length,
the reset distribution, and the observation, reward and termination read from MjData after the step. The functions
take a batch: `f` maps MjData field names to arrays with a leading row axis (qpos [B, nq], cfrc_ext [B, nbody, 6]).

    Swimmer       r = ẋ − 1e-4|a|²;                                  obs (qpos[2:], qvel); frame skip 4
    Hopper        r = ẋ + 1 − 1e-3|a|², ends unless z > 0.7, |angle| < 0.2, |state[2:]| < 100;
                  obs (qpos[1:], clip(qvel, ±10)); frame skip 4
    Walker2d      as Hopper with 0.8 < z < 2, |angle| < 1 and no state bound (walker2d_v5.xml)
    HalfCheetah   r = ẋ − 0.1|a|²;                                   obs (qpos[1:], qvel); frame skip 5
    Ant           r = ẋ + 1 − 0.5|a|² − 5e-4|clip(cfrc_ext, ±1)|², ends unless 0.2 ≤ z ≤ 1 (and finite);
                  ẋ from the torso's xpos; obs adds clip(cfrc_ext[1:], ±1); frame skip 5
    Humanoid      r = 1.25ẋ + 5 − 0.1|ctrl|² − min(5e-7|cfrc_ext|², 10), ends unless 1 < z < 2; ẋ from the
                  centre of mass; obs adds cinert[1:], cvel[1:], qfrc_actuator[6:], cfrc_ext[1:]; frame skip 5
    InvertedPendulum         r = 1 while |qpos[1]| ≤ 0.2 (ends otherwise); obs (qpos, qvel); frame skip 2
    InvertedDoublePendulum   r = 10·alive − 0.01x² − (y − 2)² − 1e-3 v1² − 5e-3 v2², (x, y) the tip
                             site, ends when y ≤ 1; frame skip 5
    Reacher       r = −|fingertip − target| − |a|², 50 steps; frame skip 2

ẋ is the change of the position over the step divided by dt = timestep·frame skip. Positions read from xpos or
xipos after `mj_step` are those of the last substep's forward pass, exactly as Gymnasium reads them, so the
position before a step is the one reported after the previous step (carried in the state). Ant and Humanoid read
contact forces, for which Gymnasium calls `mj_rnePostConstraint` after stepping (`post_constraint`). Resets draw
from `np.random.default_rng(seed)` in Gymnasium's order, so `reset(seed)` here and Gymnasium's `env.reset(seed=...)`
start from the same state.
"""
from typing import Callable, NamedTuple

import numpy as np


class MujocoSpec(NamedTuple):
  """One environment: see the module docstring. `position(f)` [B, k] and `outcome(f, before, action, dt)` ->
  (observation [B, n], reward [B], terminated [B]); `reset(rng, qpos0, nv)` -> (qpos, qvel)."""
  xml: str
  frame_skip: int
  max_steps: int
  fields: tuple
  position: Callable
  outcome: Callable
  reset: Callable
  post_constraint: bool = False
  bodies: tuple = ()        # body names whose ids `outcome` needs (reacher), passed as f["body_ids"]


def _uniform_reset(scale):
  def reset(rng, qpos0, nv):
    return qpos0 + rng.uniform(-scale, scale, len(qpos0)), rng.uniform(-scale, scale, nv)
  return reset


def _normal_velocity_reset(scale):
  def reset(rng, qpos0, nv):
    return qpos0 + rng.uniform(-scale, scale, len(qpos0)), scale * rng.standard_normal(nv)
  return reset


def _reacher_reset(rng, qpos0, nv):
  qpos = rng.uniform(-0.1, 0.1, len(qpos0)) + qpos0
  while True:   # Gymnasium's rejection sampling of the goal, draw for draw
    goal = rng.uniform(-0.2, 0.2, 2)
    if np.linalg.norm(goal) < 0.2:
      break
  qpos[-2:] = goal
  qvel = rng.uniform(-0.005, 0.005, nv)
  qvel[-2:] = 0.0
  return qpos, qvel


def _x(f):
  return f["qpos"][:, :1]


def _none(f):
  return np.zeros((len(f["qpos"]), 1))


def _speed(f, before, dt):
  return (f["position"][:, 0] - before[:, 0]) / dt


def _sq(x):
  return np.sum(np.square(x.reshape(len(x), -1)), axis=1)


def _swimmer(f, before, action, dt):
  obs = np.concatenate([f["qpos"][:, 2:], f["qvel"]], axis=1)
  return obs, _speed(f, before, dt) - 1e-4 * _sq(action), np.zeros(len(obs), bool)


def _half_cheetah(f, before, action, dt):
  obs = np.concatenate([f["qpos"][:, 1:], f["qvel"]], axis=1)
  return obs, _speed(f, before, dt) - 0.1 * _sq(action), np.zeros(len(obs), bool)


def _between(x, low, high):
  return (low < x) & (x < high)


def _legged(f, before, action, dt, healthy):
  obs = np.concatenate([f["qpos"][:, 1:], np.clip(f["qvel"], -10.0, 10.0)], axis=1)
  return obs, _speed(f, before, dt) + healthy - 1e-3 * _sq(action), ~healthy


def _hopper(f, before, action, dt):
  state = np.concatenate([f["qpos"], f["qvel"]], axis=1)[:, 2:]
  healthy = (np.all(_between(state, -100.0, 100.0), axis=1) & (f["qpos"][:, 1] > 0.7)
             & _between(f["qpos"][:, 2], -0.2, 0.2))
  return _legged(f, before, action, dt, healthy)


def _walker(f, before, action, dt):
  healthy = _between(f["qpos"][:, 1], 0.8, 2.0) & _between(f["qpos"][:, 2], -1.0, 1.0)
  return _legged(f, before, action, dt, healthy)


def _ant(f, before, action, dt):
  contact = np.clip(f["cfrc_ext"], -1.0, 1.0)
  state = np.concatenate([f["qpos"], f["qvel"]], axis=1)
  healthy = np.all(np.isfinite(state), axis=1) & (0.2 <= f["qpos"][:, 2]) & (f["qpos"][:, 2] <= 1.0)
  reward = _speed(f, before, dt) + healthy - 0.5 * _sq(action) - 5e-4 * _sq(contact)
  obs = np.concatenate([f["qpos"][:, 2:], f["qvel"], contact[:, 1:].reshape(len(contact), -1)], axis=1)
  return obs, reward, ~healthy


def _humanoid(f, before, action, dt):
  healthy = _between(f["qpos"][:, 2], 1.0, 2.0)
  contact_cost = np.minimum(5e-7 * _sq(f["cfrc_ext"]), 10.0)
  reward = 1.25 * _speed(f, before, dt) + 5.0 * healthy - 0.1 * _sq(f["ctrl"]) - contact_cost
  flat = lambda x: x[:, 1:].reshape(len(x), -1)
  obs = np.concatenate([f["qpos"][:, 2:], f["qvel"], flat(f["cinert"]), flat(f["cvel"]), f["qfrc_actuator"][:, 6:],
                        flat(f["cfrc_ext"])], axis=1)
  return obs, reward, ~healthy


def _mass_centre(f):
  mass = f["body_mass"]
  return (np.sum(mass[None, :, None] * f["xipos"], axis=1) / np.sum(mass))[:, :2]


def _inverted_pendulum(f, before, action, dt):
  obs = np.concatenate([f["qpos"], f["qvel"]], axis=1)
  terminated = ~np.all(np.isfinite(obs), axis=1) | (np.abs(obs[:, 1]) > 0.2)
  return obs, (~terminated).astype(np.float64), terminated


def _inverted_double_pendulum(f, before, action, dt):
  x, y = f["site_xpos"][:, 0, 0], f["site_xpos"][:, 0, 2]
  v1, v2 = f["qvel"][:, 1], f["qvel"][:, 2]
  terminated = y <= 1.0
  reward = 10.0 * ~terminated - (0.01 * x ** 2 + (y - 2.0) ** 2) - (1e-3 * v1 ** 2 + 5e-3 * v2 ** 2)
  obs = np.concatenate([f["qpos"][:, :1], np.sin(f["qpos"][:, 1:]), np.cos(f["qpos"][:, 1:]),
                        np.clip(f["qvel"], -10.0, 10.0), np.clip(f["qfrc_constraint"], -10.0, 10.0)[:, :1]], axis=1)
  return obs, reward, terminated


def _reacher(f, before, action, dt):
  fingertip, target = f["body_ids"]
  gap = f["xpos"][:, fingertip] - f["xpos"][:, target]
  reward = -np.linalg.norm(gap, axis=1) - _sq(action)
  angles = f["qpos"][:, :2]
  obs = np.concatenate([np.cos(angles), np.sin(angles), f["qpos"][:, 2:], f["qvel"][:, :2], gap[:, :2]], axis=1)
  return obs, reward, np.zeros(len(obs), bool)


SPECS = {
    "Swimmer-v5": MujocoSpec("swimmer.xml", 4, 1000, (), _x, _swimmer, _uniform_reset(0.1)),
    "Hopper-v5": MujocoSpec("hopper.xml", 4, 1000, (), _x, _hopper, _uniform_reset(5e-3)),
    "Walker2d-v5": MujocoSpec("walker2d_v5.xml", 4, 1000, (), _x, _walker, _uniform_reset(5e-3)),
    "HalfCheetah-v5": MujocoSpec("half_cheetah.xml", 5, 1000, (), _x, _half_cheetah, _normal_velocity_reset(0.1)),
    "Ant-v5": MujocoSpec("ant.xml", 5, 1000, ("xpos", "cfrc_ext"), lambda f: f["xpos"][:, 1, :2], _ant,
                         _normal_velocity_reset(0.1), post_constraint=True),
    "Humanoid-v5": MujocoSpec("humanoid.xml", 5, 1000, ("xipos", "cinert", "cvel", "qfrc_actuator", "cfrc_ext",
                                                        "ctrl"), _mass_centre, _humanoid, _uniform_reset(1e-2),
                              post_constraint=True),
    "InvertedPendulum-v5": MujocoSpec("inverted_pendulum.xml", 2, 1000, (), _none, _inverted_pendulum,
                                      _uniform_reset(0.01)),
    "InvertedDoublePendulum-v5": MujocoSpec("inverted_double_pendulum.xml", 5, 1000, ("site_xpos", "qfrc_constraint"),
                                            _none, _inverted_double_pendulum, _normal_velocity_reset(0.1)),
    "Reacher-v5": MujocoSpec("reacher.xml", 2, 50, ("xpos",), _none, _reacher, _reacher_reset,
                             bodies=("fingertip", "target")),
}
