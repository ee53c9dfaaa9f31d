"""The interface every population method shares, and what they share beyond it.

A population method moves θ itself, one generation per call, instead of handing a gradient to an optimizer. Like
optax's `GradientTransformation`, it is a NamedTuple of pure, jit-able functions:

    method = unrolled_es.snes(system, population=64, sigma=0.1)      # or deep_ga, int_es
    state = method.init(key, theta)
    theta, state, info = method.step(key, theta, state)              # one generation

θ is the method's current point: the search mean μ (SNES), the int8 weights (integer ES), the elite (the Deep GA,
whose population lives in `state` as genomes relative to the θ given to `init`). `info` holds at least
"inner_steps" (the inner steps the generation ran) and the members' losses or fitness summaries.
`member(state, i)`, where the state holds a population (the Deep GA), decodes member i; it is None where the
population is redrawn every generation (SNES, integer ES).

`as_estimator(method)` turns any of them into a `GradientEstimator` for `unrolled_es.training.loop.train` and the
command line: its "gradient" is the generation's move ĝ = θ − θ', which plain SGD at learning rate 1 (or
`saturating_steps(1)` for int8 θ, exactly) applies.

Shared pieces: `mean_episode_loss`, a member's loss (the mean over whole episodes of each episode's mean step loss,
common episodes for every member when they share keys), and `utilities`, the one fitness ranking (centred ranks of
Salimans et al. 2017, or z-scores; `unrolled_es.fitness`'s transforms applied to the losses themselves).
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.core.system import run_episode
from unrolled_es.options import fitness


class PopulationMethod(NamedTuple):
  """init(key, θ) -> state; step(key, θ, state) -> (θ', state', info); member(state, i) -> θ_i, or None."""
  init: Callable
  step: Callable
  member: Callable | None = None


def mean_episode_loss(system, theta, keys):
  """float32 mean over the episodes keyed by `keys` ([E] keys, typed or raw) of each episode's mean step loss."""
  per_episode = jax.vmap(lambda k: jnp.mean(run_episode(system, theta, k)[1].astype(jnp.float32)))(keys)
  return jnp.mean(per_episode)


def utilities(losses, ranks: bool = True):
  """Zero-mean utilities [P] of P members from their losses [P], the lowest loss highest: centred ranks in
  [−½, ½] when `ranks`, else negated z-scores (0 when every loss is equal)."""
  shape = fitness.centered_ranks() if ranks else fitness.z_scores()
  shaped, _ = shape.transform(losses[:, None], jnp.ones(losses.shape, bool))
  return -shaped[:, 0]


def as_estimator(method: PopulationMethod) -> GradientEstimator:
  """The method as a GradientEstimator whose estimate is the generation's move ĝ = θ − θ' (in θ's dtypes: exact
  for integer θ, whose moves are whole steps; one rounding for float θ): SGD at learning rate 1, or
  `saturating_steps(1)` for int8 θ, takes θ to θ'."""
  if not isinstance(method, PopulationMethod):
    raise TypeError(f"method must be a PopulationMethod (unrolled_es.snes, deep_ga, int_es); got "
                    f"{type(method).__name__}")

  def estimate(key, theta, state):
    new_theta, state, info = method.step(key, theta, state)
    move = jax.tree_util.tree_map(_difference, theta, new_theta)
    return move, state, info

  return GradientEstimator(init=method.init, estimate=estimate)


def _difference(old, new):
  """old − new in old's dtype, formed in a wider type so that an int8 difference of whole steps cannot wrap."""
  dtype = jnp.result_type(old)
  wide = jnp.int32 if jnp.issubdtype(dtype, jnp.integer) else jnp.promote_types(dtype, jnp.float32)
  return (jnp.asarray(old, wide) - jnp.asarray(new, wide)).astype(dtype)
