"""Perturbation-aware layers: apply θ + σε from factored noise without forming a matrix per particle.

With `low_rank(r, factored=True)` or `gaussian(factored=True)`, `system.step` receives matrix leaves as
`PerturbedMatrix`. Under vmap over particles, x(W + σε) = xW + σ(xε) costs one GEMM shared by all particles plus,
for ε = abᵀ/√r, two skinny batched ones (EGGROLL, Sarkar et al. 2025) instead of a dense matrix per particle; for
dense ε, one batched matmul per particle that both antithetic members share.
"""
import jax
import jax.numpy as jnp

from unrolled_es.noise.base import PerturbedMatrix


def linear(x, w):
  """x @ w for a plain matrix or a `PerturbedMatrix` (any leading batch axes on x)."""
  if isinstance(w, PerturbedMatrix):
    return w.apply(x)
  return jnp.matmul(x, w)


def materialize(theta):
  """θ with every `PerturbedMatrix` formed densely, for code that needs plain arrays."""
  return jax.tree_util.tree_map(lambda w: w.dense() if isinstance(w, PerturbedMatrix) else w, theta,
                                is_leaf=lambda w: isinstance(w, PerturbedMatrix))
