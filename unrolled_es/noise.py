"""Perturbation noise: drawn from keys, applied to theta, and combined into a gradient.

An ES estimator never stores noise it can regenerate. A `Noise` is four pure functions over a
representation `eps` of one unit-scale draw (ε = σ·eps):

    sample(key, theta)          -> eps       one draw; every leaf gets its own block of the key's stream
    perturb(theta, eps, scale)  -> theta'    what `system.step` receives: θ + scale·eps
    combine(coeffs, eps_batch)  -> pytree     Σ_i coeffs[i]·eps_i over a leading particle axis, theta-shaped
    dense(eps)                  -> pytree     eps materialised in theta's shape (the PES accumulator)

`gaussian()` is full-rank isotropic noise, Cov(eps) = I (Salimans et al. 2017); `low_rank(r)` is EGGROLL's
abᵀ/√r per matrix. With `factored=True` either hands matrices to `system.step` as `PerturbedMatrix`, for layers
that apply xW + scale·(x eps) without forming W + scale·eps. Draws come from `unrolled_es.prng`.
"""
from typing import Any, Callable, NamedTuple

import math

import jax
import jax.numpy as jnp

from unrolled_es.prng import draw_blocks
from unrolled_es.system import check_bool, check_int


class Noise(NamedTuple):
  sample: Callable[[jax.Array, Any], Any]
  perturb: Callable[[Any, Any, Any], Any]
  combine: Callable[[jax.Array, Any], Any]
  dense: Callable[[Any], Any]


def _weighted_leaf(coeffs, e):
  return jnp.tensordot(coeffs.astype(e.dtype), e, axes=1)


def weighted_sum(coeffs, batch):
  """Σ_i coeffs[i]·batch_i over the leading axis of every leaf (dense draws, or the PES sum ξ)."""
  return jax.tree_util.tree_map(lambda e: _weighted_leaf(coeffs, e), batch)


def gaussian(factored: bool = False) -> Noise:
  """Full-rank Gaussian noise, eps ~ N(0, I) in every leaf's shape and dtype (Salimans et al. 2017).

  factored=False: `perturb` forms θ + σ·eps, so any system works.
  factored=True: `perturb` returns matrix leaves as `PerturbedMatrix`, which perturbation-aware layers
  (`unrolled_es.linear`, `unrolled_es.haiku_apply`) apply as xW + σ·(x eps). Under vmap, xW is one GEMM shared
  by every member and each particle's eps is read once for both antithetic members, instead of forming and
  reading W ± σ·eps per member; and in low precision σ·(x eps) is not rounded away against W.
  """
  check_bool("factored", factored)

  def sample(key, theta):
    leaves, treedef = jax.tree_util.tree_flatten(theta)
    return jax.tree_util.tree_unflatten(
        treedef, draw_blocks(key, [(jnp.shape(x), jnp.result_type(x)) for x in leaves]))

  def perturb_leaf(x, e, scale):
    if factored and _is_matrix(x):
      return PerturbedMatrix(x, e, None, jnp.asarray(scale, e.dtype))
    return x + jnp.asarray(scale, e.dtype) * e

  def perturb(theta, eps, scale):
    return jax.tree_util.tree_map(lambda x, e: perturb_leaf(x, e, scale), theta, eps)

  return Noise(sample=sample, perturb=perturb, combine=weighted_sum, dense=lambda eps: eps)


class LowRank(NamedTuple):
  """Factors of one matrix draw: eps = a bᵀ/√r, with a (m×r) and b (n×r) standard normal."""
  a: jax.Array
  b: jax.Array

  def dense(self):
    return self.a @ self.b.T / jnp.sqrt(jnp.asarray(self.a.shape[-1], self.a.dtype))


class PerturbedMatrix(NamedTuple):
  """A matrix W + scale·eps kept in parts, for layers that apply it as xW + scale·(x eps).

  eps = a bᵀ/√r when b is given (low rank: x eps = (xa)bᵀ/√r, never formed), or eps = a (dense Gaussian).
  """
  w: jax.Array
  a: jax.Array
  b: jax.Array | None
  scale: jax.Array

  def eps(self):
    return self.a if self.b is None else LowRank(self.a, self.b).dense()

  def dense(self):
    return self.w + self.scale * self.eps()

  def correction(self, x, precision=None):
    """scale·(x eps) in x's dtype: one matmul for dense eps, two skinny ones for factors."""
    xe = jnp.matmul(x, self.a.astype(x.dtype), precision=precision)
    factor = self.scale
    if self.b is not None:
      xe = jnp.matmul(xe, self.b.T.astype(x.dtype), precision=precision)
      factor = factor / jnp.sqrt(jnp.asarray(self.a.shape[-1], self.a.dtype))
    return factor.astype(x.dtype) * xe

  def apply(self, x):
    """x @ (W + scale·eps) without forming a per-particle matrix."""
    return jnp.matmul(x, self.w) + self.correction(x)


def _is_matrix(x):
  return jnp.ndim(x) == 2


def low_rank(rank: int = 1, factored: bool = False) -> Noise:
  """EGGROLL-style low-rank noise (Sarkar et al., 2025): for a matrix leaf W (m×n), eps = a bᵀ/√r.

  Entries of a bᵀ/√r have mean 0 and covariance exactly I, so every ES estimator stays unbiased on quadratics;
  beyond them the estimate approaches the full-rank one at rate O(1/r). Vectors and scalars get full Gaussian
  noise. A draw costs (m + n)·r numbers instead of m·n, and the gradient Σ_i c_i a_i b_iᵀ/√r is one GEMM of
  (m × N·r) by (N·r × n).

  factored=False: `perturb` materialises θ + σ·eps, so any system works.
  factored=True: `perturb` returns matrix leaves as `PerturbedMatrix`, which perturbation-aware layers
  (`unrolled_es.linear`, `unrolled_es.haiku_apply`) apply as xW + σ/√r·(xa)bᵀ without forming a matrix.
  """
  rank = check_int("rank", rank, 1)
  check_bool("factored", factored)

  def sample(key, theta):
    leaves, treedef = jax.tree_util.tree_flatten(theta)
    wanted = []
    for x in leaves:
      dtype = jnp.result_type(x)
      wanted += [((jnp.shape(x)[0], rank), dtype), ((jnp.shape(x)[1], rank), dtype)] if _is_matrix(x) else [
          (jnp.shape(x), dtype)]
    blocks = iter(draw_blocks(key, wanted))
    return jax.tree_util.tree_unflatten(
        treedef, [LowRank(next(blocks), next(blocks)) if _is_matrix(x) else next(blocks) for x in leaves])

  def dense_leaf(e):
    return e.dense() if isinstance(e, LowRank) else e

  def dense(eps):
    return jax.tree_util.tree_map(dense_leaf, eps, is_leaf=lambda e: isinstance(e, LowRank))

  def perturb_leaf(x, e, scale):
    if not isinstance(e, LowRank):
      return x + jnp.asarray(scale, e.dtype) * e
    if factored:
      return PerturbedMatrix(x, e.a, e.b, jnp.asarray(scale, e.a.dtype))
    return x + jnp.asarray(scale, e.a.dtype) * dense_leaf(e)

  def perturb(theta, eps, scale):
    return jax.tree_util.tree_map(lambda x, e: perturb_leaf(x, e, scale), theta, eps,
                                  is_leaf=lambda e: isinstance(e, LowRank))

  def combine_leaf(coeffs, e):
    if not isinstance(e, LowRank):
      return _weighted_leaf(coeffs, e)
    n, m, r = e.a.shape
    left = (e.a * coeffs.astype(e.a.dtype)[:, None, None]).transpose(1, 0, 2).reshape(m, n * r)
    right = e.b.transpose(1, 0, 2).reshape(e.b.shape[1], n * r)
    return left @ right.T / jnp.sqrt(jnp.asarray(r, e.a.dtype))

  def combine(coeffs, batch):
    return jax.tree_util.tree_map(lambda e: combine_leaf(coeffs, e), batch,
                                  is_leaf=lambda e: isinstance(e, LowRank))

  return Noise(sample=sample, perturb=perturb, combine=combine, dense=dense)
