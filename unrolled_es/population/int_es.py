"""Integer low-rank ES: int8 parameters trained by a thresholded vote of the ES gradient (EGGROLL's integer
training: Sarkar et al., "Evolution Strategies at the Hyperscale", 2025).

θ is a pytree of int8 arrays: matrices [m, n] (applied by `integer_layers.linear` / `embed`) and vectors or
scalars. Every step, each of N particles draws int8 noise from its own key (unrolled_es.noise.integer: low-rank
factors for matrices, applied inside the int32 matmuls; an elementwise product of two draws for vectors), with a
perturbation of √r·2^(−sigma_shift) in real units (weights are 16× their real values). Its two members θ ± ε run
the same `episodes` whole episodes (common random numbers), and its fitness is

  "sign"        f = sign(L⁻ − L⁺) ∈ {−1, 0, 1} (EGGROLL's integer runs), or
  "difference"  f = round(16·(L⁻ − L⁺)/rms) clipped to ±64: the loss difference in 1/16ths of its RMS over pairs,

0 for a pair with a non-finite loss. The update is the vote: Z = Σ_i f_i δ_i in int32, and a weight moves by
sign(Z) where |Z| clears a z-test at level α_t against the null that fitness is independent of the draws (a
fraction α_t of the weights would move by chance), else stays; results saturate at ±127. α_t falls from
`alpha_start` to `alpha_end` at step `decay_steps` and on, harmonically (1/α_t = 1/α_start + (1/α_end −
1/α_start)·t/decay_steps), as in EGGROLL's integer runs: early steps move many weights, later ones only those with
strong evidence (the threshold rises). The only float arithmetic is the loss readout and one threshold per leaf;
weights, draws, Z and the moves are integers.

It is a `PopulationMethod` (unrolled_es.population.base):

    es = unrolled_es.int_es(system, num_particles=128)
    state = es.init(key, theta)                       # theta: int8 pytree
    theta, state, info = es.step(key, theta, state)

The registered estimator "int_es" (`unrolled_es.make("int_es", ...)`, `unrolled-es train --estimator int_es`) is
the same method as a GradientEstimator (`as_estimator`): its direction ĝ = θ − θ' (int8, whole steps) is applied by
optax with `unrolled_es.saturating_steps(1)` (`--optimizer integer`), which lands exactly on θ'.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unrolled_es.core import prng
from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.core.system import UnrolledSystem, check_int, check_positive_float, check_system
from unrolled_es.estimators.registry import register
from unrolled_es.layers.integer import FIXED_POINT, MAX, check_fan_in
from unrolled_es.population.base import PopulationMethod, as_estimator, mean_episode_loss
from unrolled_es.noise.integer import (DIFFERENCE_LIMIT, FITNESS, alpha_at, apply_moves, moves, pair_fitness,
                                                 perturb, sample)

_Z_BOUND = 2 ** 31 - 1            # N·r·127²·max|f| must stay below it


class IntESState(NamedTuple):
  step: jax.Array    # int32: updates done (drives α_t)


class _Config(NamedTuple):
  num_particles: int
  rank: int
  shift: int
  alpha_start: float
  alpha_end: float
  decay_steps: int
  fitness: str
  episodes: int


def _pair_losses(system, cfg: _Config, theta, key):
  """(draws [N, ...], losses [N, 2]): every particle's draw and its two members' mean losses on common episodes."""
  noise_key, episode_key = prng.split(prng.raw_key(key), 2)
  n = cfg.num_particles
  eps = jax.vmap(lambda k: sample(k, theta, cfg.rank))(prng.split(noise_key, n))
  keys = prng.split(episode_key, n * cfg.episodes).reshape(n, cfg.episodes, 2)
  signs = jnp.array([1, -1], jnp.int8)

  def particle(e, k):
    return jax.vmap(lambda sign: mean_episode_loss(system, perturb(theta, e, sign, cfg.shift), k))(signs)
  return eps, jax.vmap(particle)(eps, keys)


def _info(system, cfg: _Config, theta, losses, valid, step_moves, alpha):
  finite = jnp.where(valid[:, None], losses, 0.0)
  num_valid = jnp.sum(valid)
  leaves = jax.tree_util.tree_leaves(theta)
  size = sum(x.size for x in leaves)
  moved = sum(jnp.sum(s != 0) for s in jax.tree_util.tree_leaves(step_moves))
  pinned = sum(jnp.sum(jnp.abs(x.astype(jnp.int32)) >= MAX) for x in leaves)
  return {"loss": jnp.sum(finite) / jnp.maximum(2 * num_valid, 1), "member_loss": losses,
          "num_valid": num_valid.astype(jnp.int32),
          "num_nonfinite": (cfg.num_particles - num_valid).astype(jnp.int32),
          "alpha": alpha, "moved_fraction": moved / size, "saturated_fraction": pinned / size,
          "inner_steps": jnp.int32(2 * cfg.num_particles * cfg.episodes * system.horizon),
          "sequential_inner_steps": jnp.int32(cfg.episodes * system.horizon)}


def check_int_theta(theta, rank: int):
  """θ must be a non-empty pytree of int8 arrays of rank ≤ 2, with matrices small enough for exact int32."""
  leaves = jax.tree_util.tree_leaves_with_path(theta)
  if not leaves:
    raise ValueError("theta must be a non-empty pytree of int8 arrays; got no leaves")
  for path, leaf in leaves:
    where = jax.tree_util.keystr(path) or "<root>"
    if jnp.result_type(leaf) != jnp.int8 or jnp.ndim(leaf) > 2:
      raise ValueError(f"theta leaf {where} must be an int8 scalar, vector or matrix; got {jnp.result_type(leaf)} "
                       f"of shape {jnp.shape(leaf)}")
    if jnp.ndim(leaf) == 2:
      check_fan_in(f"theta leaf {where}", jnp.shape(leaf)[0], rank)


def _check_config(system, num_particles, rank, sigma_shift, alpha_start, alpha_end, decay_steps, fitness,
                  episodes):
  check_system(system)
  if fitness not in FITNESS:
    raise ValueError(f"fitness must be one of {', '.join(FITNESS)}; got {fitness!r}")
  n, rank = check_int("num_particles", num_particles, 1), check_int("rank", rank, 1)
  start, end = check_positive_float("alpha_start", alpha_start), check_positive_float("alpha_end", alpha_end)
  if not (start <= 1 and end <= start):
    raise ValueError(f"alpha_start and alpha_end must satisfy 0 < alpha_end <= alpha_start <= 1; got {start}, {end}")
  largest = 1 if fitness == "sign" else DIFFERENCE_LIMIT
  if n * rank * MAX * MAX * largest > _Z_BOUND:
    raise ValueError(f"num_particles × rank must be at most {_Z_BOUND // (MAX * MAX * largest)} with fitness "
                     f"{fitness!r} so that the int32 vote cannot overflow; got {n} × {rank}")
  shift = FIXED_POINT + check_int("sigma_shift", sigma_shift, 0, 31 - FIXED_POINT)
  return _Config(n, rank, shift, start, end, check_int("decay_steps", decay_steps, 1), fitness,
                 check_int("episodes", episodes, 1))


def int_es(system: UnrolledSystem, *, num_particles: int, rank: int = 1, sigma_shift: int = 4,
           alpha_start: float = 1.0, alpha_end: float = 1 / 16, decay_steps: int = 1000, fitness: str = "sign",
           episodes: int = 1) -> PopulationMethod:
  """Integer low-rank ES on a system whose θ is int8 (see the module docstring). num_particles antithetic pairs,
  each running `episodes` whole episodes per member; perturbation 2^(−sigma_shift) real units per rank.
  Defaults are EGGROLL's integer runs' (rank 1, sigma_shift 4, α from 1 to 1/16 over 1000 steps, sign fitness)."""
  cfg = _check_config(system, num_particles, rank, sigma_shift, alpha_start, alpha_end, decay_steps, fitness,
                      episodes)

  def init(key, theta):
    del key   # every draw is made in `step`, from its key
    check_int_theta(theta, cfg.rank)
    return IntESState(jnp.int32(0))

  def step(key, theta, state):
    check_int_theta(theta, cfg.rank)
    eps, losses = _pair_losses(system, cfg, theta, key)
    fit, valid = pair_fitness(losses, cfg.fitness)
    alpha = alpha_at(state.step, cfg.alpha_start, cfg.alpha_end, cfg.decay_steps)
    step_moves = moves(theta, eps, fit, alpha, cfg.rank)
    info = _info(system, cfg, theta, losses, valid, step_moves, alpha)
    return apply_moves(theta, step_moves), IntESState(state.step + 1), info

  return PopulationMethod(init=init, step=step)


def int_es_estimator(system: UnrolledSystem, *, num_particles: int, rank: int = 1, sigma_shift: int = 4,
                     alpha_start: float = 1.0, alpha_end: float = 1 / 16, decay_steps: int = 1000,
                     fitness: str = "sign", episodes: int = 1) -> GradientEstimator:
  """Integer low-rank ES on int8 θ (EGGROLL): direction θ − θ', applied by saturating_steps(1).

  `as_estimator(int_es(...))`, registered as "int_es" for `unrolled_es.make` and the command line."""
  return as_estimator(int_es(system, num_particles=num_particles, rank=rank, sigma_shift=sigma_shift,
                             alpha_start=alpha_start, alpha_end=alpha_end, decay_steps=decay_steps, fitness=fitness,
                             episodes=episodes))


def saturating_steps(step_size: int = 1) -> optax.GradientTransformation:
  """An optax transformation for integer θ: θ ← sat(θ − step_size·ĝ) in int32, returned as the update
  u = sat(θ − step_size·ĝ) − θ in θ's dtype. u may not fit int8 (e.g. −127 → 127 is +254), but it is exact
  modulo 2⁸, and so is the int8 sum θ + u that optax.apply_updates forms: it lands exactly on the saturated value."""
  if not (isinstance(step_size, (int, np.integer, float)) and float(step_size).is_integer() and step_size >= 1):
    raise ValueError(f"step_size must be a whole number >= 1 (integer weights move by whole steps); got {step_size!r}")
  step_size = int(step_size)

  def leaf(g, p):
    if not (jnp.issubdtype(g.dtype, jnp.integer) and jnp.issubdtype(p.dtype, jnp.integer)):
      raise ValueError(f"saturating_steps takes integer updates and parameters; got {g.dtype} and {p.dtype}")
    target = jnp.clip(p.astype(jnp.int32) - step_size * g.astype(jnp.int32), -MAX, MAX)
    return (target - p.astype(jnp.int32)).astype(p.dtype)

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("saturating_steps needs params (the update saturates at the int8 range)")
    return jax.tree_util.tree_map(leaf, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


register("int_es", int_es_estimator)
