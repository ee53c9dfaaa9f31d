"""Per-episode horizons ("truncation schedules" in learned_optimization, Metz et al. 2022): each episode's length
T is drawn when it starts, per particle, inside the compiled scan.

Meta-training a learned optimizer on one fixed T teaches it that T (its schedule, its end-of-training behaviour);
drawing T per episode trains it for a range. The objective is the expected meta-loss over the drawn lengths,

    J(θ) = E_T[ L_T(θ) ],   L_T = 1/T Σ_{t<T} l_t,

and the estimators stay unbiased for ∇J: a particle sits in an episode of length T with probability ∝ T·p(T) (a
long episode holds more windows), so each step's loss is weighted by E[T]/T, which turns the windows' average
into E_T[L_T] exactly. A constant schedule weighs every step 1.

A schedule draws T from the key the engine hands `system.init` for that episode, so a system whose steps need T
(e.g. a learned optimizer's time features) computes the same value with `schedule.sample(key)` in its `init`.
"""
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es.core.system import check_int

_TAG = 0x4A7E  # folded into the init key, so T is independent of whatever the system draws from that key


class Horizons(NamedTuple):
  """A distribution of episode lengths on [low, high]: `sample(key) -> int32`, its mean, and `pmf()`, the exact
  probabilities (values, probabilities) for tests and for computing J exactly."""
  sample: Callable[[jax.Array], jax.Array]
  low: int
  high: int
  mean: float
  pmf: Callable[[], tuple]


def constant(length: int) -> Horizons:
  """Every episode has `length` steps."""
  length = check_int("length", length, 1)
  return Horizons(lambda key: jnp.int32(length), length, length, float(length),
                  lambda: (np.array([length]), np.array([1.0])))


def _log_uniform_pmf(low, high):
  values = np.arange(low, high)
  span = math.log(high) - math.log(low)
  return values, (np.log(values + 1.0) - np.log(values)) / span


def log_uniform(low: int, high: int) -> Horizons:
  """T = ⌊exp(U)⌋, U ~ Uniform[log low, log high): lengths low … high − 1, short ones more often (learned_optimization's
  LogUniformLength). P(T = t) = log((t + 1)/t) / log(high/low)."""
  low = check_int("low", low, 1)
  high = check_int("high", high, low + 1)
  values, probs = _log_uniform_pmf(low, high)
  log_low, log_high = math.log(low), math.log(high)

  def sample(key):
    u = jax.random.uniform(jax.random.fold_in(key, _TAG), (), jnp.float32, log_low, log_high)
    return jnp.clip(jnp.floor(jnp.exp(u)), low, high - 1).astype(jnp.int32)
  return Horizons(sample, low, high - 1, float(np.dot(values, probs)), lambda: (values, probs))


def check(horizons, truncation_length: int):
  """None, or a schedule whose shortest episode holds at least one window (one reset per window at most)."""
  if horizons is None:
    return None
  if not isinstance(horizons, Horizons):
    raise ValueError(f"horizons must be None or a schedule from unrolled_es.options.horizons (constant, log_uniform); "
                     f"got {horizons!r}")
  if truncation_length > horizons.low:
    raise ValueError(f"truncation_length ({truncation_length}) must be at most the shortest horizon of the "
                     f"schedule ({horizons.low}): a window may hold one reset at most")
  return horizons
