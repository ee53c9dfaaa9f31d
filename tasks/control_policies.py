"""Policies for the control task: linear (ARS; Mania et al. 2018) and MLP, and how their output becomes an action.

linear: y = x̃ W (+ b), W (obs × out) initialised to 0 as in ARS, so the first policy is the zero action (or
        action 0 for discrete spaces) and every perturbation direction starts on equal footing.
mlp:    tanh hidden layers with weights N(0, 1/fan_in) from the seed and zero biases; the output layer starts at 0
        like the linear policy.

Discrete actions: y are logits; the action is argmax y (deterministic) or a draw from softmax(y) (stochastic).
Continuous actions: the action is y (+ action_std·N(0, I) when stochastic) mapped into [low, high] by clipping
(ARS's choice; the default) or by low + (high − low)·(tanh y + 1)/2. The stochastic draws come from the step's
key, so antithetic members see the same noise (common random numbers).
Matrices are applied with `unrolled_es.linear`, so factored (low-rank) perturbations work too.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es.layers.plain import linear

POLICIES = ("linear", "mlp")
SQUASHES = ("clip", "tanh")


class ActionSpace(NamedTuple):
  """Discrete (num_actions set) or a box [low, high] of shape (size,)."""
  num_actions: int | None = None
  low: np.ndarray | None = None
  high: np.ndarray | None = None

  @property
  def discrete(self):
    return self.num_actions is not None

  @property
  def size(self):
    return self.num_actions if self.discrete else int(np.size(self.low))


def init_policy(kind, key, obs_size, out_size, hidden=(32, 32), bias=False):
  """Policy parameters: {"w", ("b")} for linear, {"layers": [{"w", "b"}, ...]} for mlp."""
  if kind == "linear":
    params = {"w": jnp.zeros((obs_size, out_size), jnp.float32)}
    if bias:
      params["b"] = jnp.zeros((out_size,), jnp.float32)
    return params
  sizes = (obs_size, *hidden)
  keys = jax.random.split(key, len(hidden))
  layers = [{"w": jax.random.normal(k, (n_in, n_out), jnp.float32) / np.sqrt(n_in),
             "b": jnp.zeros((n_out,), jnp.float32)} for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]
  layers.append({"w": jnp.zeros((sizes[-1], out_size), jnp.float32), "b": jnp.zeros((out_size,), jnp.float32)})
  return {"layers": layers}


def apply_policy(params, x):
  """The policy's output (logits or unsquashed action) for a normalised observation x."""
  if "layers" not in params:
    y = linear(x, params["w"])
    return y + params["b"] if "b" in params else y
  *hidden, last = params["layers"]
  for layer in hidden:
    x = jnp.tanh(linear(x, layer["w"]) + layer["b"])
  return linear(x, last["w"]) + last["b"]


def to_action(space: ActionSpace, y, key, stochastic, action_std, squash):
  """The environment's action from the policy output y (see the module docstring)."""
  if space.discrete:
    return jax.random.categorical(key, y) if stochastic else jnp.argmax(y)
  if stochastic:
    y = y + action_std * jax.random.normal(key, y.shape, y.dtype)
  low, high = jnp.asarray(space.low, y.dtype), jnp.asarray(space.high, y.dtype)
  if squash == "tanh":
    return low + (high - low) * (jnp.tanh(y) + 1.0) / 2.0
  return jnp.clip(y, low, high)
