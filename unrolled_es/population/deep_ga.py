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

It is a `PopulationMethod` (unrolled_es.population.base): θ is the elite, which `step` returns; the population
lives in the state, relative to the θ₀ given to `init`, so `step` reads the θ it is given only for its structure.

    ga = unrolled_es.deep_ga(system, population=256, parents=20, sigma=0.02)
    state = ga.init(key, theta0)
    theta, state, info = ga.step(key, theta, state)   # one generation; info: best/median/elite fitness
    theta_3 = ga.member(state, 3)                       # any member, decoded from its genome
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from unrolled_es.core import prng
from unrolled_es.core.system import UnrolledSystem, check_int, check_positive_float, check_system, check_theta
from unrolled_es.noise.base import Noise, gaussian
from unrolled_es.noise.masks import check_mask, masked
from unrolled_es.population.base import PopulationMethod, mean_episode_loss


class GAState(NamedTuple):
  theta0: Any             # the starting θ every genome is relative to
  genomes: jax.Array      # [P, G, 2] uint32: the keys of each member's mutations, in order
  length: jax.Array       # [P] int32: how many of the G keys are in use
  generation: jax.Array   # int32
  elite_fitness: jax.Array  # the elite's mean fitness on its re-evaluation episodes


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


def _evaluate(system, cfg, state, members, key, episodes):
  """Fitness [len(members)] of the given members, on common episodes (the same keys for every member)."""
  def one(m):
    theta = decode(cfg.noise, cfg.sigma, state.theta0, state.genomes[m], state.length[m])
    return -mean_episode_loss(system, theta, jax.random.split(key, episodes))
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


def _config(population, parents, sigma, episodes, elite_candidates, elite_episodes, max_generations, noise, mask):
  population = check_int("population", population, 2)
  cfg = _Config(population, check_int("parents", parents, 1, population), check_positive_float("sigma", sigma),
                check_int("episodes", episodes, 1), check_int("elite_candidates", elite_candidates, 1, population),
                check_int("elite_episodes", elite_episodes, 1), check_int("max_generations", max_generations, 1),
                gaussian() if noise is None else noise)
  if not isinstance(cfg.noise, Noise):
    raise ValueError(f"noise must be an unrolled_es noise (gaussian() or low_rank(rank)); got {noise!r}")
  mask = check_mask(mask)
  return cfg if mask is None else cfg._replace(noise=masked(cfg.noise, mask))


def _generation(system, cfg: _Config, key, state):
  """(next state, info) of one generation: evaluate, select the elite, breed the children."""
  eval_key, elite_key, child_key = jax.random.split(prng.raw_key(key), 3)
  fitness = _evaluate(system, cfg, state, jnp.arange(cfg.population), eval_key, cfg.episodes)
  ranked = jnp.argsort(-fitness)
  elite, elite_fitness = _select_elite(system, cfg, state, fitness, elite_key)
  genomes, length, parents, full = _children(cfg, state, ranked[:cfg.parents], elite, child_key)
  info = {"loss": -jnp.mean(fitness), "best_fitness": fitness[ranked[0]], "median_fitness": jnp.median(fitness),
          "mean_fitness": jnp.mean(fitness), "elite_fitness": elite_fitness, "parents": parents, "full": full,
          "inner_steps": jnp.int32((cfg.population * cfg.episodes + (cfg.elite_candidates + 1)
                                    * cfg.elite_episodes) * system.horizon)}
  return GAState(state.theta0, genomes, length, state.generation + 1, elite_fitness), info


def deep_ga(system: UnrolledSystem, *, population: int, parents: int, sigma: float, episodes: int = 1,
            elite_candidates: int = 10, elite_episodes: int = 5, max_generations: int = 1000,
            noise: Noise | None = None, mask=None) -> PopulationMethod:
  """The Deep GA of Such et al. (2017) on `system` (see the module docstring). Settings of the paper's Atari runs:
  population 1000, parents 20, σ = 0.002, elite re-evaluated on 30 episodes. `mask`: θ-shaped booleans; coordinates
  outside it are never mutated."""
  check_system(system)
  cfg = _config(population, parents, sigma, episodes, elite_candidates, elite_episodes, max_generations, noise, mask)

  def member(state, i):
    return decode(cfg.noise, cfg.sigma, state.theta0, state.genomes[i], state.length[i])

  def init(key, theta):
    """Member 0 is θ itself; the others one mutation away from it."""
    check_theta(theta)
    genomes = jnp.zeros((cfg.population, cfg.max_generations, 2), jnp.uint32)
    genomes = genomes.at[:, 0].set(prng.split(prng.raw_key(key), cfg.population))
    length = jnp.ones((cfg.population,), jnp.int32).at[0].set(0)
    return GAState(theta, genomes, length, jnp.int32(0), jnp.float32(-jnp.inf))

  def step(key, theta, state):
    # θ is the elite the previous step returned (member 0 of the state's population): only its structure is read
    if jax.tree_util.tree_structure(theta) != jax.tree_util.tree_structure(state.theta0):
      raise ValueError(f"theta must have the structure of the θ given to init; got "
                       f"{jax.tree_util.tree_structure(theta)}")
    state, info = _generation(system, cfg, key, state)
    return member(state, 0), state, info

  return PopulationMethod(init=init, step=step, member=member)
