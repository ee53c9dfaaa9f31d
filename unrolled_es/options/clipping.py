"""Gradient clipping as part of an estimator: any GradientEstimator whose estimate's global norm is limited.

    est = unrolled_es.clip_gradient(unrolled_es.es_single(system, ...), max_norm=1.0)

ĝ ← ĝ · min(1, max_norm / ‖ĝ‖), ‖·‖ the global norm over θ's leaves in float32. The outer optimizer then never
sees a step larger than it was tuned for, whatever one bad window did (learned_optimization clips the outer
gradient for the same reason). `info` reports the norm before clipping, "grad_norm_raw", and whether it was
clipped, "grad_clipped". optax.clip_by_global_norm does the same inside the optimizer, without the report.
"""
import jax
import jax.numpy as jnp

from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.core.system import check_positive_float


def global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))


def clip_gradient(estimator: GradientEstimator, max_norm: float) -> GradientEstimator:
  """`estimator` with its estimate scaled down to global norm `max_norm` when it is larger."""
  if not isinstance(estimator, GradientEstimator):
    raise ValueError(f"estimator must be a GradientEstimator; got {type(estimator).__name__}")
  max_norm = check_positive_float("max_norm", max_norm)

  def estimate(key, theta, state):
    grad, state, info = estimator.estimate(key, theta, state)
    norm = global_norm(grad)
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    grad = jax.tree_util.tree_map(lambda g: (g.astype(jnp.float32) * scale).astype(g.dtype), grad)
    return grad, state, dict(info, grad_norm_raw=norm, grad_clipped=norm > max_norm)

  return estimator._replace(estimate=estimate)
