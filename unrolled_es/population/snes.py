"""Separable NES (SNES; Schaul, Glasmachers & Schmidhuber, "High dimensions and heavy tails for natural evolution
strategies", GECCO 2011): ES whose search distribution N(μ, diag σ²) adapts a scale per coordinate.

Each generation draws P/2 antithetic pairs s, −s ~ N(0, I), evaluates the members μ ± σ⊙s on whole episodes of
the system (common episodes: the same keys for every member), turns their losses into utilities u (centred ranks
when `ranks`, else z-scores; lower loss, higher utility), and follows the natural gradient of the expected utility:

    ∇μ = Σ_k u_k s_k,   ∇log σ = Σ_k u_k (s_k² − 1),
    μ ← μ + η_μ σ⊙∇μ,   σ ← σ⊙exp(½ η_σ ∇log σ).

The per-coordinate σ it ends with is what the signal-to-noise pruning of Lange & Sprekeler (2023) reads: a weight
whose |μ_i|/σ_i is small is one the search could not tell from zero. A `mask` keeps coordinates at their value
(never perturbed, never updated), for training sparse tickets. Defaults follow Schaul et al.: η_μ = 1,
η_σ = (3 + log d)/(5√d).
"""
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from unrolled_es.core import prng
from unrolled_es.noise.masks import check_mask
from unrolled_es.core.system import UnrolledSystem, check_int, check_positive_float, check_system, check_theta, run_episode


class SNESState(NamedTuple):
  mean: Any          # μ, θ's structure
  log_sigma: Any     # log σ, θ's structure (float32)
  generation: jax.Array


class SNES(NamedTuple):
  """init(theta0) -> state; update(key, state) -> (state, info); sigma(state) -> σ pytree."""
  init: Callable
  update: Callable
  sigma: Callable


def _utilities(losses, ranks: bool):
  """Utilities of P members from their losses, zero-mean: centred ranks (best +½) or negated z-scores."""
  if ranks:
    order = jnp.argsort(jnp.argsort(-losses)).astype(jnp.float32)   # the lowest loss gets the highest rank
    return order / (losses.shape[0] - 1) - 0.5
  return -(losses - jnp.mean(losses)) / (jnp.std(losses) + 1e-12)


def snes(system: UnrolledSystem, *, population: int, sigma: float, episodes: int = 1, lr_mean: float = 1.0,
         lr_sigma: float | None = None, ranks: bool = True, mask=None) -> SNES:
  """SNES on `system` (see the module docstring); `population` must be even (antithetic pairs)."""
  check_system(system)
  population = check_int("population", population, 2)
  if population % 2:
    raise ValueError(f"population must be even (antithetic pairs); got {population}")
  sigma0, episodes = check_positive_float("sigma", sigma), check_int("episodes", episodes, 1)
  lr_mean = check_positive_float("lr_mean", lr_mean)
  mask = check_mask(mask)

  def init(theta0):
    check_theta(theta0)
    return SNESState(theta0, jax.tree_util.tree_map(lambda x: jnp.full(jnp.shape(x), math.log(sigma0), jnp.float32),
                                                   theta0), jnp.int32(0))

  def update(key, state):
    flat_mu, unravel = ravel_pytree(jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), state.mean))
    log_sigma = ravel_pytree(state.log_sigma)[0]
    live = jnp.ones_like(flat_mu) if mask is None else ravel_pytree(mask)[0].astype(jnp.float32)
    d = flat_mu.size
    eta_sigma = lr_sigma if lr_sigma is not None else (3 + math.log(d)) / (5 * math.sqrt(d))
    noise_key, episode_key = jax.random.split(prng.raw_key(key))
    half = jax.random.normal(noise_key, (population // 2, d)) * live
    s = jnp.concatenate([half, -half])
    members = flat_mu + jnp.exp(log_sigma) * s
    cast = lambda flat: jax.tree_util.tree_map(lambda v, x: v.astype(jnp.result_type(x)), unravel(flat), state.mean)
    loss_of = lambda flat: jnp.mean(jax.vmap(lambda k: jnp.mean(run_episode(system, cast(flat), k)[1]))(
        jax.random.split(episode_key, episodes)).astype(jnp.float32))
    losses = jax.vmap(loss_of)(members)
    u = _utilities(losses, ranks)
    grad_mu, grad_log_sigma = u @ s, (u @ (s ** 2 - 1.0)) * live
    new_mu = flat_mu + lr_mean * jnp.exp(log_sigma) * grad_mu
    new_log_sigma = log_sigma + 0.5 * eta_sigma * grad_log_sigma
    info = {"mean_loss": jnp.mean(losses), "best_loss": jnp.min(losses), "sigma_mean": jnp.mean(jnp.exp(new_log_sigma)),
            "inner_steps": jnp.int32(population * episodes * system.horizon)}
    return SNESState(cast(new_mu), unravel(new_log_sigma), state.generation + 1), info

  def sigma_of(state):
    return jax.tree_util.tree_map(jnp.exp, state.log_sigma)

  return SNES(init=init, update=update, sigma=sigma_of)
