"""The integer noise and vote of integer low-rank ES (EGGROLL's integer training: Sarkar et al., "Evolution
Strategies at the Hyperscale", 2025); unrolled_es.population.int_es runs them as an estimator.

A particle's draw, from its own key (one Threefry stream cut into blocks, so every tensor has its own noise), is
int8 ε = round(16·N(0, 1)) clipped to ±127:

  matrix W [m, n]   factors a [m, r], b [n, r]: member ± applies W ± ⌊a bᵀ / 2^s⌋ inside the int32 matmul
                    (an IntPerturbedMatrix for integer_layers), never forming it;
  vector v          u, v of v's shape: member ± runs sat(v ± ⌊u·v / 2^s⌋).

The draw δ (a bᵀ or u·v) has mean 0 and variance r·2⁸ per entry (r = 1 for vectors). With fitness f_i per pair,
the vote is Z = Σ_i f_i δ_i in int32, and a weight moves by sign(Z) where |Z| > τ = Φ⁻¹(1 − α/2)·2⁸·√(r·Σ f²):
a two-sided z-test at level α against the null that fitness is independent of the draws (under which Z has
standard deviation 2⁸·√(r·Σ f²)), so a fraction α of the weights would move by chance.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from unrolled_es.core import prng
from unrolled_es.layers.integer import MAX, ONE, IntPerturbedMatrix, saturate

FITNESS = ("sign", "difference")
DIFFERENCE_LIMIT = 64            # |f| ≤ 64 with "difference" fitness: 4 RMS in 1/16ths


class IntLowRank(NamedTuple):
  """A matrix draw δ = a bᵀ (int8 factors a [m, r], b [n, r])."""
  a: jax.Array
  b: jax.Array


class IntDense(NamedTuple):
  """A vector draw δ = u·v (elementwise; int8)."""
  u: jax.Array
  v: jax.Array


def _is_matrix(x):
  return jnp.ndim(x) == 2


def sample(key, theta, rank: int):
  """One particle's int8 draw for every leaf of θ, from one Threefry stream cut into blocks (prng.draw_blocks)."""
  leaves, treedef = jax.tree_util.tree_flatten(theta)
  shapes = []
  for x in leaves:
    m_n = jnp.shape(x)
    shapes += [(m_n[0], rank), (m_n[1], rank)] if _is_matrix(x) else [m_n, m_n]
  blocks = iter([jnp.clip(jnp.round(z * ONE), -MAX, MAX).astype(jnp.int8)
                 for z in prng.draw_blocks(key, shapes)])
  draws = [IntLowRank(next(blocks), next(blocks)) if _is_matrix(x) else IntDense(next(blocks), next(blocks))
           for x in leaves]
  return jax.tree_util.tree_unflatten(treedef, draws)


def _is_draw(x):
  return isinstance(x, (IntLowRank, IntDense))


def perturb(theta, eps, sign, shift: int):
  """Member `sign` (±1) of a particle: matrices as IntPerturbedMatrix (applied by integer_layers), vectors formed."""
  sign = jnp.asarray(sign, jnp.int8)
  shift = jnp.asarray(shift, jnp.int32)

  def leaf(x, e):
    if isinstance(e, IntLowRank):
      return IntPerturbedMatrix(x, e.a * sign, e.b, shift)
    delta = sign.astype(jnp.int32) * e.u.astype(jnp.int32) * e.v.astype(jnp.int32)
    return saturate(x.astype(jnp.int32) + jnp.right_shift(delta, shift))
  return jax.tree_util.tree_map(leaf, theta, eps, is_leaf=_is_draw)


# ---------------------------------------------------------------- fitness, vote, update

def pair_fitness(losses, kind: str):
  """int32 [N] fitness of each pair from losses [N, 2] (θ + ε, θ − ε), 0 where a loss is not finite; and the
  validity mask."""
  valid = jnp.all(jnp.isfinite(losses), axis=1)
  diff = jnp.where(valid, losses[:, 1] - losses[:, 0], 0.0)
  if kind == "sign":
    return jnp.sign(diff).astype(jnp.int32), valid
  rms = jnp.sqrt(jnp.sum(diff ** 2) / jnp.maximum(jnp.sum(valid), 1))
  scaled = jnp.where(rms > 0, diff / jnp.where(rms > 0, rms, 1.0), 0.0)
  return jnp.clip(jnp.round(ONE * scaled), -DIFFERENCE_LIMIT, DIFFERENCE_LIMIT).astype(jnp.int32), valid


def alpha_at(step, start: float, end: float, decay_steps: int):
  """α_t with 1/α_t = 1/start + (1/end − 1/start)·t/decay_steps."""
  slope = (1.0 / end - 1.0 / start) / decay_steps
  return 1.0 / (1.0 / start + slope * step.astype(jnp.float32))


def _threshold(alpha, rank: int, fitness):
  """τ = ⌈Φ⁻¹(1 − α/2)·2⁸·√(r·Σ f²)⌉ as int32 (0 when no pair has a fitness)."""
  z = jax.scipy.special.ndtri(1.0 - alpha / 2.0)
  spread = jnp.sqrt(rank * jnp.sum(fitness.astype(jnp.float32) ** 2))
  return jnp.ceil(z * ONE * ONE * spread).astype(jnp.int32)


def votes(eps, fitness):
  """Z = Σ_i f_i δ_i per leaf (int32), from a batch of draws [N, ...] and fitness int32 [N]."""
  def leaf(e):
    if isinstance(e, IntLowRank):
      n, m, r = e.a.shape
      left = (e.a.astype(jnp.int32) * fitness[:, None, None]).transpose(1, 0, 2).reshape(m, n * r)
      right = e.b.astype(jnp.int32).transpose(1, 0, 2).reshape(e.b.shape[1], n * r)
      return jnp.matmul(left, right.T)
    product = e.u.astype(jnp.int32) * e.v.astype(jnp.int32)
    return jnp.tensordot(fitness, product, axes=1)
  return jax.tree_util.tree_map(leaf, eps, is_leaf=_is_draw)


def moves(theta, eps, fitness, alpha, rank: int):
  """int8 moves in {−1, 0, 1} per weight: sign(Z) where |Z| > τ (τ with r = rank for matrices, 1 for vectors)."""
  z_tree = votes(eps, fitness)

  def leaf(x, z):
    tau = _threshold(alpha, rank if _is_matrix(x) else 1, fitness)
    return jnp.where(jnp.abs(z) > tau, jnp.sign(z), 0).astype(jnp.int8)
  return jax.tree_util.tree_map(leaf, theta, z_tree)


def apply_moves(theta, step):
  """sat(θ + step) in int32, back to int8: weights move by whole steps and never wrap."""
  return jax.tree_util.tree_map(lambda x, s: saturate(x.astype(jnp.int32) + s.astype(jnp.int32)), theta, step)
