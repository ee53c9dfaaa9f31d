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

It is a `PopulationMethod` (unrolled_es.population.base): θ is the mean μ, the state holds log σ.

    es = unrolled_es.snes(system, population=32, sigma=0.1)
    state = es.init(key, theta)
    theta, state, info = es.step(key, theta, state)    # μ', σ' = state.sigma
"""
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from unrolled_es.core import prng
from unrolled_es.core.system import UnrolledSystem, check_int, check_positive_float, check_system, check_theta
from unrolled_es.noise.masks import check_mask
from unrolled_es.population.base import PopulationMethod, mean_episode_loss, utilities


class SNESState(NamedTuple):
  log_sigma: Any     # log σ, θ's structure (float32)
  generation: jax.Array

  @property
  def sigma(self):
    """σ per coordinate, θ's structure."""
    return jax.tree_util.tree_map(jnp.exp, self.log_sigma)


class _Config(NamedTuple):
  population: int
  sigma: float
  episodes: int
  lr_mean: float
  lr_sigma: float | None
  ranks: bool
  mask: Any


def _generation(system, cfg: _Config, key, theta, state):
  """(μ', log σ', losses [P]) of one generation from μ = θ: antithetic members on common episodes."""
  flat_mu, unravel = ravel_pytree(jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), theta))
  log_sigma = ravel_pytree(state.log_sigma)[0]
  live = jnp.ones_like(flat_mu) if cfg.mask is None else ravel_pytree(cfg.mask)[0].astype(jnp.float32)
  d = flat_mu.size
  eta_sigma = cfg.lr_sigma if cfg.lr_sigma is not None else (3 + math.log(d)) / (5 * math.sqrt(d))
  noise_key, episode_key = jax.random.split(prng.raw_key(key))
  half = jax.random.normal(noise_key, (cfg.population // 2, d)) * live
  s = jnp.concatenate([half, -half])
  cast = lambda flat: jax.tree_util.tree_map(lambda v, x: v.astype(jnp.result_type(x)), unravel(flat), theta)
  episode_keys = jax.random.split(episode_key, cfg.episodes)   # common episodes: every member runs the same ones
  losses = jax.vmap(lambda flat: mean_episode_loss(system, cast(flat), episode_keys))(flat_mu + jnp.exp(log_sigma) * s)
  u = utilities(losses, cfg.ranks)
  new_mu = flat_mu + cfg.lr_mean * jnp.exp(log_sigma) * (u @ s)
  new_log_sigma = log_sigma + 0.5 * eta_sigma * (u @ (s ** 2 - 1.0)) * live
  return cast(new_mu), unravel(new_log_sigma), losses


def snes(system: UnrolledSystem, *, population: int, sigma: float, episodes: int = 1, lr_mean: float = 1.0,
         lr_sigma: float | None = None, ranks: bool = True, mask=None) -> PopulationMethod:
  """SNES on `system` (see the module docstring); `population` must be even (antithetic pairs)."""
  check_system(system)
  population = check_int("population", population, 2)
  if population % 2:
    raise ValueError(f"population must be even (antithetic pairs); got {population}")
  cfg = _Config(population, check_positive_float("sigma", sigma), check_int("episodes", episodes, 1),
                check_positive_float("lr_mean", lr_mean),
                None if lr_sigma is None else check_positive_float("lr_sigma", lr_sigma), bool(ranks),
                check_mask(mask))

  def init(key, theta):
    """σ starts at `sigma` everywhere; the key is not needed (SNES draws its population in `step`)."""
    del key
    check_theta(theta)
    return SNESState(jax.tree_util.tree_map(lambda x: jnp.full(jnp.shape(x), math.log(cfg.sigma), jnp.float32),
                                            theta), jnp.int32(0))

  def step(key, theta, state):
    mean, log_sigma, losses = _generation(system, cfg, key, theta, state)
    info = {"loss": jnp.mean(losses), "mean_loss": jnp.mean(losses), "best_loss": jnp.min(losses),
            "sigma_mean": jnp.mean(ravel_pytree(jax.tree_util.tree_map(jnp.exp, log_sigma))[0]),
            "inner_steps": jnp.int32(population * cfg.episodes * system.horizon)}
    return mean, SNESState(log_sigma, state.generation + 1), info

  return PopulationMethod(init=init, step=step)
