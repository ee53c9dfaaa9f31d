"""From a window's losses to the gradient estimate: per-particle coefficients, then one weighted sum per draw.

With Δ_ij the loss difference of particle i at slot j (the rule's pairing) and n the particles whose losses
were all finite,

    c_i^pre  = 1/(σ n K) Σ_{j before i's reset} Δ_ij,     c_i^post = 1/(σ n K) Σ_{j from the reset on} Δ_ij,
    ĝ = Σ_i c_i^pre w_i + Σ_i c_i^post ε_i^post,

w_i the rule's weighting (ε_i, or ξ_i) and ε_i^post the new episode's draw. Both sums are `noise.combine`: a
tensordot for dense draws, one GEMM per matrix for low-rank ones. Everything is float32; the result is cast to
θ's dtypes at the very end.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from unrolled_es.noise.masks import apply_mask


class Coefficients(NamedTuple):
  pre: jax.Array    # [N] weight of the draw before the reset
  post: jax.Array   # [N] weight of the new episode's draw


def finite_particles(losses, grads=None):
  """[N] bool: all of the particle's losses (and autodiff gradients, if given) are finite."""
  valid = jnp.all(jnp.isfinite(losses), axis=tuple(range(1, losses.ndim)))
  for g in jax.tree_util.tree_leaves(grads):
    valid &= jnp.all(jnp.isfinite(g), axis=tuple(range(1, g.ndim)))
  return valid


def coefficients(differences, after_reset, valid, sigma: float, truncation_length: int) -> Coefficients:
  """Each particle's summed loss differences before and after its reset, scaled by 1/(σ n K)."""
  denom = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  scale = 1.0 / (sigma * denom * truncation_length)
  pre = jnp.sum(jnp.where(after_reset, 0.0, differences), axis=1) * scale
  post = jnp.sum(jnp.where(after_reset, differences, 0.0), axis=1) * scale
  return Coefficients(pre, post)


def combine(noise, c: Coefficients, weight_pre, eps_post, theta):
  """ĝ = Σ_i c_i^pre w_i + Σ_i c_i^post ε_i^post, in θ's structure and dtypes."""
  if weight_pre is eps_post:
    # One draw weights both sums (aligned windows of ES-Single and truncated ES): by linearity one sum over
    # c^pre + c^post, half the work (one GEMM per matrix for low-rank factors instead of two and an add).
    return cast_like(noise.combine(c.pre + c.post, eps_post), theta)
  g = jax.tree_util.tree_map(jnp.add, noise.combine(c.pre, weight_pre), noise.combine(c.post, eps_post))
  return cast_like(g, theta)


def mean_gradient(grads, valid, theta, mask=None):
  """The mean of the valid particles' autodiff gradients [N, θ] (BPTT), zero outside `mask`."""
  coeff = jnp.where(valid, 1.0, 0.0) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  def leaf(g):
    keep = jnp.reshape(valid, valid.shape + (1,) * (g.ndim - 1))
    return jnp.tensordot(coeff, jnp.where(keep, g, 0).astype(jnp.float32), axes=1)
  return cast_like(apply_mask(jax.tree_util.tree_map(leaf, grads), mask), theta)


def cast_like(tree, theta):
  return jax.tree_util.tree_map(lambda g, x: g.astype(jnp.result_type(x)), tree, theta)


def info(losses, valid, resets, num_particles: int, members: int, truncation_length: int) -> dict:
  """The scalars every estimate reports."""
  n_valid = jnp.sum(valid)
  per_member = jnp.mean(losses, axis=2)
  member_loss = jnp.sum(jnp.where(valid[:, None], per_member, 0.0), axis=0) / n_valid  # NaN when nothing was finite
  return {"loss": jnp.mean(member_loss),
          "member_loss": member_loss,
          "num_nonfinite": (num_particles - n_valid).astype(jnp.int32),
          "num_valid": n_valid.astype(jnp.int32),
          "resets": jnp.sum(resets).astype(jnp.int32),
          "inner_steps": jnp.asarray(num_particles * members * truncation_length, jnp.int32),
          "sequential_inner_steps": jnp.asarray(truncation_length, jnp.int32)}


def _ravel_sq(tree):
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree))


def diagnostics(noise, c: Coefficients, weight_pre, eps_post, grad, valid) -> dict:
  """How noisy this estimate is, from its own particles (cheap: about one more `combine`).

  ĝ is the mean of n per-particle estimates h_i = n·(c_i^pre w_i + c_i^post ε_i^post). Per coordinate,
  Var(ĝ_j) = (Σ_i h_ij² − n ĝ_j²) / (n(n − 1)); "gradient_variance" is that θ-shaped pytree, "variance_ratio" its
  sum over ‖ĝ‖² (≫ 1: the estimate is mostly noise; more particles or a larger σ help), and
  "effective_particles" (Σ_i |c_i|)² / Σ_i c_i² with c_i = |c_i^pre| + |c_i^post|: how many particles the
  estimate effectively rests on (n when every particle's loss difference is alike, 1 when one dominates).
  """
  n = jnp.sum(valid).astype(jnp.float32)
  ones = jnp.ones((1,), jnp.float32)
  terms = [noise.combine(c.pre ** 2, noise.multiply(weight_pre, weight_pre)),
           noise.combine(c.post ** 2, noise.multiply(eps_post, eps_post)),
           noise.combine(2 * c.pre * c.post, noise.multiply(weight_pre, eps_post))]
  # combine divides by the noise's scale once (gradient units); a square needs it twice.
  second = jax.tree_util.tree_map(lambda *t: sum(t), *terms)
  second = noise.combine(ones, jax.tree_util.tree_map(lambda x: x[None], second))
  g32 = jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grad)
  variance = jax.tree_util.tree_map(lambda s2, g: (n * n * s2 - n * g * g) / jnp.maximum(n * (n - 1), 1.0),
                                    second, g32)
  magnitude = jnp.abs(c.pre) + jnp.abs(c.post)
  total = sum(jnp.sum(v) for v in jax.tree_util.tree_leaves(variance))
  return {"gradient_variance": variance, "variance_ratio": total / jnp.maximum(_ravel_sq(g32), 1e-30),
          "effective_particles": jnp.sum(magnitude) ** 2 / jnp.maximum(jnp.sum(magnitude ** 2), 1e-30)}


def sample_diagnostics(per_particle, valid, grad) -> dict:
  """The diagnostics of `diagnostics` for an estimate that is the mean of per-particle gradients [N, θ] (BPTT):
  Var(ĝ_j) = sample variance of the valid particles' g_ij / n."""
  n = jnp.sum(valid).astype(jnp.float32)

  def variance(g, mean):
    keep = jnp.reshape(valid, valid.shape + (1,) * (g.ndim - 1))
    centred = jnp.where(keep, g.astype(jnp.float32) - mean.astype(jnp.float32), 0.0)
    return jnp.sum(centred ** 2, axis=0) / jnp.maximum(n * (n - 1), 1.0)
  var = jax.tree_util.tree_map(variance, per_particle, grad)
  total = sum(jnp.sum(v) for v in jax.tree_util.tree_leaves(var))
  g32 = jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grad)
  return {"gradient_variance": var, "variance_ratio": total / jnp.maximum(_ravel_sq(g32), 1e-30),
          "effective_particles": n}
