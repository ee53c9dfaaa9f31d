"""A Deep GA (Such et al., "Deep Neuroevolution", 2017) on the same systems and the same unrolls as the estimators.

A population of P members, each a θ, evolves by generations:

  1. every member runs `episodes` whole episodes of the system (the engine's unroll, one member per θ); its
     fitness is minus its mean loss (for a control task, the return per step);
  2. truncation selection: the best `parents` members are the parents;
  3. elitism with re-evaluation: the previous elite and the generation's best `elite_candidates` run
     `elite_episodes` further episodes, and the best of them on those is the new elite, kept unchanged as member 0;
  4. every other member is a child of a parent drawn uniformly: θ_child = θ_parent + σ·ε, ε a fresh draw.

No member is stored as numbers: a genome is the list of keys that made it (Such et al.'s compact encoding), so
θ_m = θ₀ + σ·Σ_g ε(key_m,g), regenerated from the keys when the member is evaluated. The population costs
8 bytes per generation per member (a key) instead of θ's size; the genome's capacity, `max_generations` keys,
is fixed so that everything is jit-able (past it, children are copies of their parents: `info["full"]`).
Mutations use any unrolled_es noise (Gaussian, or low rank for matrices).

    ga = unrolled_es.deep_ga(system, population=256, parents=20, sigma=0.02)
    state = ga.init(key, theta0)
    state, info = ga.update(key, state)          # one generation; info: best/median/elite fitness
    theta = ga.decode(state, 0)                  # the elite
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from unrolled_es.core import prng
from unrolled_es.noise.masks import check_mask, masked
from unrolled_es.noise.base import Noise, gaussian
from unrolled_es.core.system import (UnrolledSystem, check_int, check_positive_float, check_system, check_theta,
                                run_episode)


class GAState(NamedTuple):
  theta0: Any             # the starting θ every genome is relative to
  genomes: jax.Array      # [P, G, 2] uint32: the keys of each member's mutations, in order
  length: jax.Array       # [P] int32: how many of the G keys are in use
  generation: jax.Array   # int32
  elite_fitness: jax.Array  # the elite's mean fitness on its re-evaluation episodes


class GeneticAlgorithm(NamedTuple):
  """init(key, theta0) -> state; update(key, state) -> (state, info); decode(state, member) -> θ."""
  init: Callable
  update: Callable
  decode: Callable


class _Config(NamedTuple):
  population: int
  parents: int
  sigma: float
  episodes: int
  elite_candidates: int
  elite_episodes: int
  max_generations: int
  noise: Noise


def decode(noise: Noise, sigma: float, theta0, genome, length):
  """θ₀ + σ·Σ_{g < length} ε(genome[g]): the member a genome encodes (float32 sums, cast to θ₀'s dtypes)."""
  def add(total, g):
    eps = noise.dense(noise.sample(genome[g], theta0))
    keep = g < length
    return jax.tree_util.tree_map(lambda t, e: t + jnp.where(keep, sigma * e, 0.0), total, eps), None
  start = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), theta0)
  total, _ = jax.lax.scan(add, start, jnp.arange(genome.shape[0]))
  return jax.tree_util.tree_map(lambda t, x: t.astype(jnp.result_type(x)), total, theta0)


def _fitness(system, theta, key, episodes):
  """Minus the mean loss of `episodes` whole episodes of one member."""
  losses = jax.vmap(lambda k: run_episode(system, theta, k)[1])(jax.random.split(key, episodes))
  return -jnp.mean(losses.astype(jnp.float32))


def _evaluate(system, cfg, state, members, key, episodes):
  """Fitness [len(members)] of the given members, on common episodes (the same keys for every member)."""
  def one(m):
    theta = decode(cfg.noise, cfg.sigma, state.theta0, state.genomes[m], state.length[m])
    return _fitness(system, theta, key, episodes)
  return jax.vmap(one)(members)


def _select_elite(system, cfg, state, fitness, key):
  """The best of the previous elite (member 0) and the generation's top candidates, on fresh episodes."""
  top = jnp.argsort(-fitness)[:cfg.elite_candidates]
  candidates = jnp.concatenate([jnp.zeros((1,), top.dtype), top])
  scores = _evaluate(system, cfg, state, candidates, key, cfg.elite_episodes)
  best = jnp.argmax(scores)
  return candidates[best], scores[best]


def _children(cfg, state, ranked, elite, key):
  """Genomes of the next population: the elite first, then children of uniformly drawn parents, each with one
  new key appended. Returns (genomes, lengths, parent of each member, whether genomes were full)."""
  p, g = state.genomes.shape[:2]
  parent_key, mutation_key = jax.random.split(key)
  parents = ranked[jax.random.randint(parent_key, (p,), 0, cfg.parents)].at[0].set(elite)
  genomes, length = state.genomes[parents], state.length[parents]
  new_keys = prng.split(prng.raw_key(mutation_key), p)
  full = length >= g
  append = (jnp.arange(p) > 0) & ~full
  slot = jnp.minimum(length, g - 1)
  genomes = genomes.at[jnp.arange(p), slot].set(jnp.where(append[:, None], new_keys, genomes[jnp.arange(p), slot]))
  return genomes, length + append, parents, jnp.any(full[1:])


def deep_ga(system: UnrolledSystem, *, population: int, parents: int, sigma: float, episodes: int = 1,
            elite_candidates: int = 10, elite_episodes: int = 5, max_generations: int = 1000,
            noise: Noise | None = None, mask=None) -> GeneticAlgorithm:
  """The Deep GA of Such et al. (2017) on `system` (see the module docstring). Settings of the paper's Atari runs:
  population 1000, parents 20, σ = 0.002, elite re-evaluated on 30 episodes. `mask`: θ-shaped booleans; coordinates
  outside it are never mutated."""
  check_system(system)
  population = check_int("population", population, 2)
  cfg = _Config(population, check_int("parents", parents, 1, population), check_positive_float("sigma", sigma),
                check_int("episodes", episodes, 1), check_int("elite_candidates", elite_candidates, 1, population),
                check_int("elite_episodes", elite_episodes, 1), check_int("max_generations", max_generations, 1),
                gaussian() if noise is None else noise)
  if not isinstance(cfg.noise, Noise):
    raise ValueError(f"noise must be an unrolled_es noise (gaussian() or low_rank(rank)); got {noise!r}")
  mask = check_mask(mask)
  if mask is not None:
    cfg = cfg._replace(noise=masked(cfg.noise, mask))

  def init(key, theta0):
    """Member 0 is θ₀ itself; the others one mutation away from it."""
    check_theta(theta0)
    genomes = jnp.zeros((cfg.population, cfg.max_generations, 2), jnp.uint32)
    genomes = genomes.at[:, 0].set(prng.split(prng.raw_key(key), cfg.population))
    length = jnp.ones((cfg.population,), jnp.int32).at[0].set(0)
    return GAState(theta0, genomes, length, jnp.int32(0), jnp.float32(-jnp.inf))

  def update(key, state):
    eval_key, elite_key, child_key = jax.random.split(prng.raw_key(key), 3)
    fitness = _evaluate(system, cfg, state, jnp.arange(cfg.population), eval_key, cfg.episodes)
    ranked = jnp.argsort(-fitness)
    elite, elite_fitness = _select_elite(system, cfg, state, fitness, elite_key)
    genomes, length, parents, full = _children(cfg, state, ranked[:cfg.parents], elite, child_key)
    info = {"best_fitness": fitness[ranked[0]], "median_fitness": jnp.median(fitness),
            "mean_fitness": jnp.mean(fitness), "elite_fitness": elite_fitness, "parents": parents, "full": full,
            "inner_steps": jnp.int32((cfg.population * cfg.episodes + (cfg.elite_candidates + 1)
                                      * cfg.elite_episodes) * system.horizon)}
    return GAState(state.theta0, genomes, length, state.generation + 1, elite_fitness), info

  def decode_member(state, member):
    return decode(cfg.noise, cfg.sigma, state.theta0, state.genomes[member], state.length[member])

  return GeneticAlgorithm(init=init, update=update, decode=decode_member)
