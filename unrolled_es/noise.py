"""Perturbation noise: drawn from keys, applied to theta, and combined into a gradient.

An ES estimator never stores noise it can regenerate. A `Noise` is four pure functions over a
representation `eps` of one unit-scale draw (ε = σ·eps):

    sample(key, theta)          -> eps       one draw; every leaf gets its own block of the key's stream
    perturb(theta, eps, scale)  -> theta'    what `system.step` receives: θ + scale·eps
    combine(coeffs, eps_batch)  -> pytree     Σ_i coeffs[i]·eps_i over a leading particle axis, theta-shaped
    dense(eps)                  -> pytree     eps materialised in theta's shape (the PES accumulator)

`gaussian()` is full-rank isotropic noise, Cov(eps) = I (Salimans et al. 2017).
"""
from typing import Any, Callable, NamedTuple

import math

import jax
import jax.numpy as jnp


class Noise(NamedTuple):
  sample: Callable[[jax.Array, Any], Any]
  perturb: Callable[[Any, Any, Any], Any]
  combine: Callable[[jax.Array, Any], Any]
  dense: Callable[[Any], Any]


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(key, x0, x1):
  """Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
  bit for bit the hash of `jax.random`, written out unrolled so XLA fuses all 20 rounds into the consumer's
  loop. (jax lowers it on CPU as a 5-trip loop that writes both words to memory every 4 rounds.)"""
  k0, k1 = key[0], key[1]
  ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))) ^ x0
    x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x0, x1


def random_bits(key, size: int, offset: int = 0):
  """uint32[size] = jax.extend.random.threefry_2x32(key, offset + arange(size)): counters are hashed in pairs
  (i, i + ⌈size/2⌉), so every hash yields two output words."""
  if offset + size > 2 ** 32:
    raise ValueError(f"a draw covers at most 2**32 numbers per particle (32-bit counters); got {offset + size}")
  key = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  half = (size + 1) // 2
  first = jax.lax.iota(jnp.uint32, half) + jnp.uint32(offset)
  second = first + jnp.uint32(half)
  if size % 2:   # an odd count is padded with a zero counter, as jax does
    second = jnp.where(jax.lax.iota(jnp.uint32, half) == half - 1, jnp.uint32(0), second)
  a, b = threefry2x32(key, first, second)
  return jnp.concatenate([a, b])[:size]


def standard_normal(key, size: int, offset: int = 0):
  """`size` float32 standard normals from one key: Threefry-2x32 over the counters offset … offset+size−1,
  both output words of every hash used, then the inverse-CDF transform √2·erf⁻¹(u).

  jax.random.normal (partitionable Threefry, jax's default) hashes one counter pair per output word and keeps
  32 of its 64 bits; hashing the counters pairwise keeps both, so a draw costs half the hashes, which dominate
  ES's noise cost on CPU. Same generator, same key discipline.
  """
  bits = random_bits(key, size, offset)
  # The top 23 bits as the mantissa of a float in [1, 2), mapped onto (−1, 1): erf⁻¹ stays finite.
  unit = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0
  u = jnp.maximum(jnp.nextafter(jnp.float32(-1.0), jnp.float32(0.0)), 2.0 * unit - 1.0)
  return jnp.float32(math.sqrt(2.0)) * jax.lax.erf_inv(u)


def draw_blocks(key, shapes_dtypes):
  """Standard normals for several tensors from one key: one Threefry stream, cut into disjoint blocks.

  Threefry is counter-based, so blocks at different counters are independent: no two tensors share noise
  (the mistake of reusing one seed per tensor). One draw per particle rather than one per tensor keeps the
  compiled program small: the hash is emitted once, not once per leaf.
  """
  sizes = [math.prod(shape) for shape, _ in shapes_dtypes]
  flat = standard_normal(key, sum(sizes))
  out, start = [], 0
  for (shape, dtype), size in zip(shapes_dtypes, sizes):
    out.append(flat[start:start + size].reshape(shape).astype(dtype))
    start += size
  return out


def weighted_sum(coeffs, batch):
  """Σ_i coeffs[i]·batch_i over the leading axis of every leaf (dense draws, or the PES sum ξ)."""
  return jax.tree_util.tree_map(
      lambda e: jnp.tensordot(coeffs.astype(e.dtype), e, axes=1), batch)


def gaussian(factored: bool = False) -> Noise:
  """Full-rank Gaussian noise, eps ~ N(0, I) in every leaf's shape and dtype (Salimans et al. 2017).

  factored=False: `perturb` forms θ + σ·eps, so any system works.
  factored=True: `perturb` returns matrix leaves as `PerturbedMatrix`, which perturbation-aware layers
  (`unrolled_es.linear`, `unrolled_es.haiku_apply`) apply as xW + σ·(x eps). Under vmap, xW is one GEMM shared
  by every member and each particle's eps is read once for both antithetic members, instead of forming and
  reading W ± σ·eps per member; and in low precision σ·(x eps) is not rounded away against W.
  """
  _check_flag("factored", factored)

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


class PerturbedMatrix(NamedTuple):
  """A matrix W + scale·eps kept in parts, for layers that apply it as xW + scale·(x eps).

  eps = a bᵀ/√r when b is given (low rank: x eps = (xa)bᵀ/√r, never formed), or eps = a (dense Gaussian).
  """
  w: jax.Array
  a: jax.Array
  b: jax.Array | None
  scale: jax.Array

  def eps(self):
    return self.a if self.b is None else self.a @ self.b.T / jnp.sqrt(jnp.asarray(self.a.shape[-1], self.a.dtype))

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


def _check_flag(name, value):
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be True or False; got {value!r}")


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
  if not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
    raise ValueError(f"rank must be an integer >= 1; got {rank!r}")
  _check_flag("factored", factored)

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
    return e.a @ e.b.T / jnp.sqrt(jnp.asarray(rank, e.a.dtype)) if isinstance(e, LowRank) else e

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
      return jnp.tensordot(coeffs.astype(e.dtype), e, axes=1)
    n, m, r = e.a.shape
    left = (e.a * coeffs.astype(e.a.dtype)[:, None, None]).transpose(1, 0, 2).reshape(m, n * r)
    right = e.b.transpose(1, 0, 2).reshape(e.b.shape[1], n * r)
    return left @ right.T / jnp.sqrt(jnp.asarray(r, e.a.dtype))

  def combine(coeffs, batch):
    return jax.tree_util.tree_map(lambda e: combine_leaf(coeffs, e), batch,
                                  is_leaf=lambda e: isinstance(e, LowRank))

  return Noise(sample=sample, perturb=perturb, combine=combine, dense=dense)
