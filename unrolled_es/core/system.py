"""The unrolled system a user hands to an estimator, and the checks on it.

An `UnrolledSystem` is an inner problem run for `horizon` (T) steps:

    s_0 = init(key, θ),   (s_{t+1}, l_t) = step(θ, s_t, key_t),   L(θ) = 1/T Σ_t l_t.

Estimators never look inside `state`; they only vmap and scan `init` and `step`.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es.core import prng


class _SystemFields(NamedTuple):
  init: Callable[[jax.Array, Any], Any]
  step: Callable[[Any, Any, jax.Array], tuple[Any, jax.Array]]
  horizon: int


class UnrolledSystem(_SystemFields):
  """An inner problem: `init(key, theta) -> state`, `step(theta, state, key) -> (state, loss)`, `horizon`.

  Checked when built (a horizon of 0 would make every mean loss NaN); `_replace` skips the check, and every
  estimator checks the system again."""
  __slots__ = ()

  def __new__(cls, init, step, horizon):
    if not (callable(init) and callable(step)):
      raise TypeError(f"UnrolledSystem takes callables init(key, theta) and step(theta, state, key); got "
                      f"{type(init).__name__} and {type(step).__name__}")
    return super().__new__(cls, init, step, check_int("horizon", horizon, 1))


def episode_keys(key):
  """Splits an episode key into the key for `init` and the base of the per-step keys."""
  return jax.random.split(prng.as_key(key))


def step_key(base, t):
  return prng.fold_in(base, t)


def run_episode(system: UnrolledSystem, theta, key, num_steps: int | None = None):
  """(final state, per-step losses l_0 … l_{n-1}) of one unperturbed episode (n = horizon by default).

  Differentiable in theta: `jax.grad` of the losses' mean is the full-BPTT gradient.
  """
  n = system.horizon if num_steps is None else num_steps
  init_key, base = episode_keys(key)

  def body(state, t):
    state, loss = system.step(theta, state, step_key(base, t))
    check_loss(loss)
    return state, loss

  return jax.lax.scan(body, system.init(init_key, theta), jnp.arange(n))


def check_loss(loss):
  """A step's loss must be a float scalar (checked on its shape when traced; costs nothing at run time)."""
  shape, dtype = jnp.shape(loss), jnp.result_type(loss)
  if shape != () or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"system.step must return a float scalar loss; got shape {shape} dtype {dtype} (reduce it, "
                     f"e.g. with jnp.mean)")


def episode_losses(system: UnrolledSystem, theta, key, num_steps: int | None = None):
  """The per-step losses of one unperturbed episode."""
  return run_episode(system, theta, key, num_steps)[1]


def evaluate(system: UnrolledSystem, theta, key):
  """The unperturbed mean loss L(θ) over one whole episode (Python numbers in θ are taken as arrays; an int key
  as jax.random.key(key))."""
  check_system(system)
  theta = jax.tree_util.tree_map(jnp.asarray, theta)
  check_theta(theta)
  return jnp.mean(episode_losses(system, theta, key))


# ---------------------------------------------------------------- argument checks

def check_int(name: str, value, low: int, high: int | None = None):
  ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
  if ok and value >= low and (high is None or value <= high):
    return int(value)
  allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
  raise ValueError(f"{name} must be {allowed}; got {value!r}")


def check_bool(name: str, value):
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be True or False; got {value!r}")
  return value


def check_positive_float(name: str, value):
  try:
    x = float(value)
  except (TypeError, ValueError):
    x = float("nan")
  if not (np.isfinite(x) and x > 0):
    raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
  return x


def check_system(system):
  if not isinstance(system, UnrolledSystem):
    raise ValueError(f"system must be an unrolled_es.UnrolledSystem(init, step, horizon); got {type(system).__name__}")
  if not (callable(system.init) and callable(system.step)):
    raise ValueError("system.init and system.step must be callables")
  check_int("horizon", system.horizon, 1)
  return system


def check_theta(theta):
  """Theta must be a non-empty pytree of floating-point arrays (ES perturbs it, autodiff differentiates it)."""
  leaves = jax.tree_util.tree_leaves(theta)
  if not leaves:
    raise ValueError("theta must be a non-empty pytree of floating-point arrays; got no leaves")
  for path, leaf in jax.tree_util.tree_leaves_with_path(theta):
    dtype = jnp.result_type(leaf)
    if isinstance(leaf, (int, float, complex)):
      raise TypeError(f"theta leaf {jax.tree_util.keystr(path) or '<root>'} is a Python {type(leaf).__name__}; "
                      f"estimators need arrays (the gradient keeps each leaf's shape and dtype): pass "
                      f"jnp.asarray({leaf!r}, jnp.float32)")
    if not jnp.issubdtype(dtype, jnp.floating):
      where = jax.tree_util.keystr(path) or "<root>"
      raise ValueError(f"theta leaf {where} must have a floating dtype (float16/bfloat16/float32/float64); got {dtype}")


def check_step_contract(system: UnrolledSystem, theta, key):
  """Traces init and one step abstractly; the loss must be a float scalar. Costs no FLOPs."""
  state = jax.eval_shape(system.init, key, theta)
  out = jax.eval_shape(system.step, theta, state, key)
  if not (isinstance(out, tuple) and len(out) == 2):
    raise ValueError("system.step must return a pair (state, loss)")
  new_state, loss = out
  check_loss(loss)
  if jax.tree_util.tree_structure(new_state) != jax.tree_util.tree_structure(state):
    raise ValueError("system.step must return a state with the same pytree structure as system.init")
