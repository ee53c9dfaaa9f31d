"""Low-rank noise on leaves of rank > 2 (stacked layers, convolution and multi-head kernels): one rank-r draw over
the matricisation (d₁·…·d_{k-1}) × d_k, with covariance exactly I per entry, so estimators stay unbiased; factored
application (batched over the leading axes) equals the dense one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import assert_unbiased, exact_window_gradients, run_windows

SHAPES = [(2, 2, 3), (2, 1, 2, 3)]   # a stack of two 2×3 matrices; a 2×1 "convolution" from 2 to 3 channels


@pytest.mark.parametrize("shape", SHAPES, ids=["3d", "4d"])
def test_draws_of_higher_rank_leaves_have_identity_covariance(shape):
  theta = {"K": jnp.zeros(shape)}
  noise, n = ue.low_rank(1), 40000
  dense = jax.vmap(lambda k: noise.dense(noise.sample(k, theta)))(jax.random.split(jax.random.PRNGKey(0), n))
  flat = np.asarray(dense["K"], np.float64).reshape(n, -1)
  # SE of a sample covariance entry with these heavy tails (E[a⁴b⁴] = 9): 3/√n; allow 4 SE
  np.testing.assert_allclose(np.cov(flat.T), np.eye(flat.shape[1]), atol=4 * 3 / np.sqrt(n))


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=["3d", "4d"])
def test_draw_is_low_rank_over_the_matricisation(shape, rank):
  """(m + n)·r numbers per draw, and the draw has rank r as a (d₁·…·d_{k-1}) × d_k matrix, not full rank."""
  eps = ue.low_rank(rank).sample(jax.random.PRNGKey(1), {"K": jnp.zeros(shape)})["K"]
  assert eps.a.shape == shape[:-1] + (rank,) and eps.b.shape == (shape[-1], rank)
  dense = np.asarray(eps.dense())
  assert dense.shape == shape
  assert np.linalg.matrix_rank(dense.reshape(-1, shape[-1]), tol=1e-5) == rank


@pytest.mark.parametrize("shape", SHAPES, ids=["3d", "4d"])
def test_gradient_assembly_of_higher_rank_leaves_is_the_weighted_sum(shape):
  theta, noise = {"K": jnp.zeros(shape)}, ue.low_rank(2)
  eps = jax.vmap(noise.sample, (0, None))(jax.random.split(jax.random.PRNGKey(2), 5), theta)
  coeffs = jnp.linspace(-1.0, 1.0, 5)
  want = jnp.tensordot(coeffs, jax.vmap(noise.dense)(eps)["K"], 1)
  np.testing.assert_allclose(noise.combine(coeffs, eps)["K"], want, rtol=1e-5, atol=1e-6)


def stacked_system(horizon):
  """s ← 0.5·s + Σ_l x K[l] (two stacked 4×3 matrices applied through ue.linear, batched over l); quadratic loss."""
  x = jnp.cos(jnp.arange(4.0) + 1.0)

  def step(theta, s, key):
    s = 0.5 * s + jnp.sum(ue.linear(x, theta["K"]), axis=0)
    return s, 0.5 * jnp.sum((s - 1.0) ** 2)
  return ue.UnrolledSystem(lambda key, theta: jnp.zeros(3), step, horizon)


STACKED_THETA = {"K": 0.05 * jnp.arange(24.0).reshape(2, 4, 3) / 24}


@pytest.mark.parametrize("factored", [False, True])
def test_es_single_is_unbiased_on_a_stacked_leaf(factored):
  system = stacked_system(5)   # K = 2 does not divide T: resets fall inside windows
  est = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=2, stagger=False,
                     noise=ue.low_rank(1, factored=factored))
  grads, _ = run_windows(est, STACKED_THETA, 3, 256)
  exact = exact_window_gradients(system, STACKED_THETA, 2, 3)
  for w in (0, 2):
    assert_unbiased(jax.tree_util.tree_map(lambda g: g[:, w], grads), jax.tree_util.tree_map(lambda e: e[w], exact),
                    what=f"factored={factored} window {w}")


def test_factored_stacked_leaf_equals_the_dense_one():
  system, key = stacked_system(5), jax.random.PRNGKey(3)
  perturbed = ue.low_rank(2, factored=True).perturb(STACKED_THETA, ue.low_rank(2).sample(key, STACKED_THETA), 0.1)
  assert isinstance(perturbed["K"], ue.PerturbedMatrix)
  out = {}
  for factored in (False, True):
    est = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=2,
                       noise=ue.low_rank(2, factored=factored))
    out[factored] = jax.jit(est.estimate)(key, STACKED_THETA, est.init(key, STACKED_THETA))[0]
  np.testing.assert_allclose(out[True]["K"], out[False]["K"], rtol=2e-5, atol=1e-6)
