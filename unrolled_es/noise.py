"""Perturbation noise: drawn from keys, applied to theta, and combined into a gradient.

An ES estimator never stores noise it can regenerate. A `Noise` is four pure functions over a
representation `eps` of one unit-scale draw (ε = σ·eps):

    sample(key, theta)          -> eps       one draw; every leaf gets its own key stream
    perturb(theta, eps, scale)  -> theta'    what `system.step` receives: θ + scale·eps
    combine(coeffs, eps_batch)  -> pytree     Σ_i coeffs[i]·eps_i over a leading particle axis, theta-shaped
    dense(eps)                  -> pytree     eps materialised in theta's shape (the PES accumulator)

`gaussian()` is full-rank isotropic noise, Cov(eps) = I (Salimans et al. 2017).
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class Noise(NamedTuple):
  sample: Callable[[jax.Array, Any], Any]
  perturb: Callable[[Any, Any, Any], Any]
  combine: Callable[[jax.Array, Any], Any]
  dense: Callable[[Any], Any]


def leaf_keys(key, tree):
  """One independent key per leaf, so that no two tensors share a noise stream."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return jax.tree_util.tree_unflatten(treedef, list(jax.random.split(key, len(leaves))))


def _weighted_sum(coeffs, batch):
  return jax.tree_util.tree_map(
      lambda e: jnp.tensordot(coeffs.astype(e.dtype), e, axes=1), batch)


def gaussian() -> Noise:
  """Full-rank Gaussian noise, eps ~ N(0, I) in every leaf's shape and dtype."""

  def sample(key, theta):
    return jax.tree_util.tree_map(
        lambda k, x: jax.random.normal(k, jnp.shape(x), jnp.result_type(x)), leaf_keys(key, theta), theta)

  def perturb(theta, eps, scale):
    return jax.tree_util.tree_map(lambda x, e: x + jnp.asarray(scale, e.dtype) * e, theta, eps)

  return Noise(sample=sample, perturb=perturb, combine=_weighted_sum, dense=lambda eps: eps)
