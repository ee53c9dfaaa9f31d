"""Perturbation noise: drawn from keys, applied to theta, and combined into a gradient.

An ES estimator never stores noise it can regenerate. A `Noise` is four pure functions over a
representation `eps` of one unit-scale draw (ε = σ·eps):

    sample(key, theta)               -> eps     one float32 draw; every leaf gets its own block of the key's stream
    perturb(theta, eps, scale, key)  -> theta'  what `system.step` receives: θ + scale·eps in θ's dtypes
    combine(coeffs, eps_batch)       -> pytree   Σ_i coeffs[i]·eps_i over a leading particle axis, float32
    dense(eps)                       -> pytree   eps materialised in theta's shape (the PES accumulator)

Draws, sums and combinations are float32 whatever θ's dtype. `perturb` forms θ + scale·eps in float32 and rounds
it to a narrow leaf's dtype (bfloat16, float16) stochastically with bits from `key`, so that a small σε is kept in
expectation instead of rounded away (unrolled_es/noise/precision.py); without a key it rounds to nearest.

`gaussian()` is full-rank isotropic noise, Cov(eps) = I (Salimans et al. 2017); `low_rank(r)` is EGGROLL's
abᵀ/√r per matrix. With `factored=True` either hands matrices to `system.step` as `PerturbedMatrix`, for layers
that apply xW + scale·(x eps) without forming W + scale·eps. Draws come from `unrolled_es.core.prng`.

What a noise supports is declared on it, not inferred from its class: `needs` (what its user must guarantee:
every particle drawing at once, each estimate weighting only its own draws, no mask), checked by `check(Use(...))`
when an estimator or a mask is built; `unit` (its draws in coordinates of covariance I, for orthogonal directions);
`compact`, `leafwise` and `joint`; and `multiply`, the product of two draws in a form `combine` sums.

Leaves of rank > 2 (stacked layers, convolution and multi-head kernels) are matrices over the matricisation
(d₁, …, d_k) -> (d₁·…·d_{k-1}, d_k): every axis but the last indexes a row, the last (the output features in the
(…, in, out) layout of JAX, flax and haiku kernels) a column. Low-rank noise draws one rank-r product over it,
with a of shape (d₁, …, d_{k-1}, r) and b of shape (d_k, r), and factored noise hands such leaves over as a
`PerturbedMatrix` too.
"""
from typing import Any, Callable, NamedTuple


import jax
import numpy as np
import jax.numpy as jnp

from unrolled_es.noise.precision import add_scaled, rounding_bits
from unrolled_es.core.prng import draw_blocks
from unrolled_es.core.system import check_bool, check_int


class Use(NamedTuple):
  """How an estimator or wrapper uses a noise, for `Noise.check`: `user` is named in errors; the flags say which
  guarantees it gives the noise."""
  user: str
  draws_together: bool = True    # every particle draws at once, in every estimate (nothing drawn at a lone reset)
  own_draws_only: bool = True    # each estimate weights only the draws made for it (no sum ξ, no draw kept)
  masked: bool = False           # coordinates outside a mask are zeroed in every draw


# What a noise may need of its user (`Noise.needs`), and the words an error gives for it.
NEEDS = {
    "draws_together": ("every particle to draw at once in every estimate (full_es, truncated_es, pes)",
                       lambda use: use.draws_together),
    "own_draws_only": ("each estimate to weight only its own draws (full_es, truncated_es)",
                       lambda use: use.own_draws_only),
    "unmasked": ("every coordinate of θ (no mask)", lambda use: not use.masked),
}


class Noise(NamedTuple):
  """Four pure functions over a draw (see the module docstring), and what the noise declares about itself:

  name      how errors name it, e.g. "orthogonal(low_rank(2))"
  needs     the guarantees it needs of its user (keys of NEEDS), checked by `check` when an estimator is built
  compact   a draw is far smaller than θ (low-rank factors): cheap enough to keep between windows
  leafwise  every function works leaf by leaf, on any sub-pytree of θ (a mask then draws only the live leaves)
  joint     (draws [N, ...], key) -> draws: a transform of a whole population's draws, or None
  unit      (draws [N, ...], inverse) -> the draws in coordinates where their covariance is I (inverse: back), or
            None when the noise has no such fixed map (its covariance changes between estimates)
  """
  sample: Callable[[jax.Array, Any], Any]
  perturb: Callable[..., Any]
  combine: Callable[[jax.Array, Any], Any]
  dense: Callable[[Any], Any]
  name: str = "noise"
  needs: frozenset = frozenset()
  compact: bool = False
  leafwise: bool = True
  joint: Callable | None = None
  unit: Callable | None = None

  def check(self, use: Use) -> None:
    """Raises a ValueError naming this noise and `use.user` when the user lacks a guarantee the noise needs."""
    for need in sorted(self.needs):
      reason, given = NEEDS[need]
      if not given(use):
        raise ValueError(f"noise {self.name} cannot be used with {use.user}: it needs {reason}")

  def multiply(self, x, y):
    """The elementwise product of two batches of draws [N, ...], in a form `combine` sums (diagnostics)."""
    return jax.tree_util.tree_map(_product_leaf, x, y, is_leaf=_is_factors)


def _identity_unit(batch, inverse=False):
  return batch


def _perturb_leaves(perturb_leaf, theta, eps, scale, key):
  """perturb_leaf(x, e, scale, bits) over θ's leaves, with stochastic-rounding bits for the narrow ones."""
  leaves, treedef = jax.tree_util.tree_flatten(theta)
  eps_leaves = treedef.flatten_up_to(eps)
  bits = rounding_bits(key, leaves)
  return jax.tree_util.tree_unflatten(treedef, [perturb_leaf(x, e, scale, b)
                                                for x, e, b in zip(leaves, eps_leaves, bits)])


def _weighted_leaf(coeffs, e):
  return jnp.tensordot(coeffs.astype(e.dtype), e, axes=1)


def weighted_sum(coeffs, batch):
  """Σ_i coeffs[i]·batch_i over the leading axis of every leaf (dense draws, or the PES sum ξ)."""
  return jax.tree_util.tree_map(lambda e: _weighted_leaf(coeffs, e), batch)


def gaussian(factored: bool = False, scale=None) -> Noise:
  """Full-rank Gaussian noise, eps ~ N(0, I) in every leaf's shape (Salimans et al. 2017).

  factored=False: `perturb` forms θ + σ·eps, so any system works.
  factored=True: `perturb` returns matrix leaves as `PerturbedMatrix`, which perturbation-aware layers
  (`unrolled_es.linear`, `unrolled_es.haiku_apply`) apply as xW + σ·(x eps). Under vmap, xW is one GEMM shared
  by every member and each particle's eps is read once for both antithetic members, instead of forming and
  reading W ± σ·eps per member; and in low precision σ·(x eps) is not rounded away against W.
  scale: per-coordinate scales s (a θ-shaped pytree of positive values, or one positive number per leaf): the
  perturbation is σ·s⊙ε and the gradient weights each draw by ε/s (Stein's identity for N(θ, σ² diag s²)), so the
  estimators stay unbiased for the gradient of the loss smoothed with that covariance. A draw is s⊙ε, and
  `combine` divides by s².
  """
  check_bool("factored", factored)
  scales = None if scale is None else _check_scale(scale)

  def sample(key, theta):
    leaves, treedef = jax.tree_util.tree_flatten(theta)
    draws = draw_blocks(key, [jnp.shape(x) for x in leaves])
    if scales is not None:
      draws = [s * e for s, e in zip(_scale_leaves(scales, treedef), draws)]
    return jax.tree_util.tree_unflatten(treedef, draws)

  def perturb_leaf(x, e, scale, bits):
    if factored and _is_matrix(x):
      return PerturbedMatrix(x, e, None, jnp.asarray(scale, jnp.float32))
    return add_scaled(x, e, scale, bits)

  def perturb(theta, eps, scale, key=None):
    return _perturb_leaves(perturb_leaf, theta, eps, scale, key)

  def combine(coeffs, batch):
    total = weighted_sum(coeffs, batch)
    if scales is None:
      return total
    treedef = jax.tree_util.tree_structure(total)
    return jax.tree_util.tree_unflatten(treedef, [t / jnp.square(s) for t, s in zip(
        jax.tree_util.tree_leaves(total), _scale_leaves(scales, treedef))])

  def unit(batch, inverse=False):
    """Draws s⊙ε [N, ...] to ε (inverse: back): orthogonal directions are built for ε, then scaled."""
    treedef = jax.tree_util.tree_structure(batch)
    return jax.tree_util.tree_unflatten(treedef, [e * s if inverse else e / s for e, s in zip(
        jax.tree_util.tree_leaves(batch), _scale_leaves(scales, treedef))])

  parts = (["factored=True"] if factored else []) + (["scale=..."] if scales is not None else [])
  name = f"gaussian({', '.join(parts)})"
  return Noise(sample=sample, perturb=perturb, combine=combine, dense=lambda eps: eps, name=name,
               leafwise=scales is None, unit=_identity_unit if scales is None else unit)


def _check_scale(scale):
  """A pytree of positive finite floats (numbers or arrays), kept as float32 arrays."""
  leaves, treedef = jax.tree_util.tree_flatten(scale)
  out = []
  for leaf in leaves:
    a = np.asarray(leaf, np.float32)
    if not (a.size and np.all(np.isfinite(a)) and np.all(a > 0)):
      raise ValueError(f"scale must be a θ-shaped pytree (or one number per leaf) of finite values > 0; got a leaf "
                       f"{leaf!r}")
    out.append(jnp.asarray(a))
  return treedef, out


def _scale_leaves(scales, theta_treedef):
  treedef, leaves = scales
  if treedef != theta_treedef:
    raise ValueError(f"scale must have theta's pytree structure; got {treedef} for theta {theta_treedef}")
  return leaves


class LowRank(NamedTuple):
  """Factors of one matrix draw: eps = a bᵀ/√r, with a (m×r) and b (n×r) standard normal.

  For a leaf of shape (d₁, …, d_k) with k > 2, a has shape (d₁, …, d_{k-1}, r): the draw is a bᵀ/√r of the
  matricisation (d₁·…·d_{k-1}) × d_k (see the module docstring), and `dense` is already in the leaf's shape."""
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
    return add_scaled(self.w, self.eps(), self.scale)

  def correction(self, x, precision=None):
    """scale·(x eps) in float32 (or x's dtype if wider): one matmul for dense eps, two skinny ones for factors.

    Kept in float32 so that a low-precision x does not round the draw itself, and added to xW before the one
    rounding to the output's dtype (`apply`)."""
    work = jnp.promote_types(jnp.result_type(x), jnp.float32)
    x = x.astype(work)
    xe = jnp.matmul(x, self.a.astype(work), precision=precision)
    factor = self.scale.astype(work)
    if self.b is None:
      return factor * xe
    rank = self.a.shape[-1]
    factor = factor / jnp.sqrt(jnp.asarray(rank, work))
    if rank > _OUTER_PRODUCT_RANK:
      return factor * jnp.matmul(xe, self.b.T.astype(work), precision=precision)
    # (xa)bᵀ as r broadcast products rather than a matmul with r-long contractions: elementwise, so XLA fuses it
    # into whatever consumes the layer's output instead of writing a rows × n product per member to memory.
    b = self.b.astype(work)
    return factor * sum(xe[..., k:k + 1] * b[:, k] for k in range(rank))

  def apply(self, x):
    """x @ (W + scale·eps) without forming a per-particle matrix, rounded once to the dtype of x @ W."""
    out_dtype = jnp.result_type(x, self.w)
    work = jnp.promote_types(out_dtype, jnp.float32)
    return (jnp.matmul(x, self.w, preferred_element_type=work) + self.correction(x)).astype(out_dtype)


_OUTER_PRODUCT_RANK = 4   # up to this rank, PerturbedMatrix.correction forms (xa)bᵀ elementwise


def _is_matrix(x):
  """A leaf that is a matrix, or one over its matricisation (rank > 2; see the module docstring)."""
  return jnp.ndim(x) >= 2


def _dense_leaf(e):
  return e.dense() if isinstance(e, LowRank) else e


def _combine_low_rank_leaf(coeffs, e):
  """Σ_i coeffs[i]·e_i for one leaf: a tensordot for a dense draw, one GEMM (m × N·r)(N·r × n) for factors."""
  if not isinstance(e, LowRank):
    return _weighted_leaf(coeffs, e)
  n, r, rows = e.a.shape[0], e.a.shape[-1], e.a.shape[1:-1]
  a = e.a.reshape(n, -1, r)   # a leaf of rank > 2 over its matricisation
  left = (a * coeffs.astype(e.a.dtype)[:, None, None]).transpose(1, 0, 2).reshape(a.shape[1], n * r)
  right = e.b.transpose(1, 0, 2).reshape(e.b.shape[1], n * r)
  return (left @ right.T / jnp.sqrt(jnp.asarray(r, e.a.dtype))).reshape(rows + e.b.shape[1:2])


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
      shape = jnp.shape(x)
      wanted += [shape[:-1] + (rank,), (shape[-1], rank)] if _is_matrix(x) else [shape]
    blocks = iter(draw_blocks(key, wanted))
    return jax.tree_util.tree_unflatten(
        treedef, [LowRank(next(blocks), next(blocks)) if _is_matrix(x) else next(blocks) for x in leaves])

  def dense(eps):
    return jax.tree_util.tree_map(_dense_leaf, eps, is_leaf=lambda e: isinstance(e, LowRank))

  def perturb_leaf(x, e, scale, bits):
    if isinstance(e, LowRank) and factored:
      return PerturbedMatrix(x, e.a, e.b, jnp.asarray(scale, jnp.float32))
    return add_scaled(x, _dense_leaf(e), scale, bits)

  def perturb(theta, eps, scale, key=None):
    return _perturb_leaves(perturb_leaf, theta, eps, scale, key)

  def combine(coeffs, batch):
    return jax.tree_util.tree_map(lambda e: _combine_low_rank_leaf(coeffs, e), batch,
                                  is_leaf=lambda e: isinstance(e, LowRank))

  name = f"low_rank({rank}{', factored=True' if factored else ''})"
  return Noise(sample=sample, perturb=perturb, combine=combine, dense=dense, name=name, compact=True,
               unit=_identity_unit)


def _is_factors(e):
  return isinstance(e, LowRank)


def _product_leaf(a, b):
  """The elementwise product of two draws of one leaf, in a form `combine` sums: low-rank factors multiply into
  rank r₁·r₂ factors ((a bᵀ/√r)⊙(c dᵀ/√s) = Σ (a_k c_l)(b_k d_l)ᵀ / √(rs)); anything else densely."""
  if isinstance(a, LowRank) and isinstance(b, LowRank):
    lead = a.a.shape[:-2]
    fa = (a.a[..., :, None] * b.a[..., None, :]).reshape(lead + (a.a.shape[-2], -1))
    fb = (a.b[..., :, None] * b.b[..., None, :]).reshape(lead + (a.b.shape[-2], -1))
    return LowRank(fa, fb)
  return _dense_leaf(a) * _dense_leaf(b)


def shares_weights(noise: Noise, theta) -> bool:
  """Whether `noise.perturb` keeps some matrix shared across particles (factored noise: PerturbedMatrix leaves)."""
  eps = jax.eval_shape(noise.sample, jnp.zeros((2,), jnp.uint32), theta)
  perturbed = jax.eval_shape(lambda e: noise.perturb(theta, e, 1.0), eps)
  is_matrix = lambda x: isinstance(x, PerturbedMatrix)
  return any(is_matrix(x) for x in jax.tree_util.tree_leaves(perturbed, is_leaf=is_matrix))
