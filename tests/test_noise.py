"""Gaussian noise: the draws are standard normal and independent (within a draw, across tensors, across
particles), and factored application (xW + σ·(x eps)) gives the estimate that forming W + σ·eps gives."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import unrolled_es as ue
from jax.extend.random import threefry_2x32

from unrolled_es.core.prng import fold_in, random_bits, split, standard_normal
from systems import MATRIX_THETA, matrix_system

N = 1 << 20


@pytest.fixture(scope="module")
def draw():
  return np.asarray(jax.jit(standard_normal, static_argnums=1)(jax.random.PRNGKey(0), N), np.float64)


@pytest.mark.parametrize("size,offset", [(1, 0), (10, 0), (11, 0), (1000, 7), (4097, 123456)])
def test_our_unrolled_threefry_is_jax_threefry_bit_for_bit(size, offset):
  key = jax.random.PRNGKey(11)
  want = threefry_2x32((key[0], key[1]), jnp.arange(offset, offset + size, dtype=jnp.uint32))
  np.testing.assert_array_equal(jax.jit(random_bits, static_argnums=(1, 2))(key, size, offset), want)


def test_key_derivation_is_jax_threefry_bit_for_bit():
  key = jax.random.PRNGKey(13)
  data = jnp.array([0, 1, 7, 2 ** 31 + 5], jnp.uint32)
  np.testing.assert_array_equal(jax.jit(jax.vmap(fold_in, (None, 0)))(key, data),
                                jax.vmap(jax.random.fold_in, (None, 0))(key, data))
  typed = jax.random.key(13)
  assert jax.random.key_data(fold_in(typed, 7)).tolist() == jax.random.fold_in(key, 7).tolist()
  # jax's original (non-partitionable) split: the hash of the counters 0 … 2·num−1, two words per key.
  np.testing.assert_array_equal(split(key, 5), threefry_2x32((key[0], key[1]), jnp.arange(10, dtype=jnp.uint32)).reshape(5, 2))


def test_draws_have_standard_normal_moments_and_tails(draw):
  # Tolerances: 4 standard errors of each statistic under N(0, 1) with n = 2^20 draws.
  n = len(draw)
  assert abs(draw.mean()) < 4 / np.sqrt(n)
  assert abs(draw.var() - 1) < 4 * np.sqrt(2 / n)
  assert abs(stats.skew(draw)) < 4 * np.sqrt(6 / n)
  assert abs(stats.kurtosis(draw)) < 4 * np.sqrt(24 / n)
  for q in (1.0, 2.0, 3.0, 4.0):
    p = 2 * stats.norm.sf(q)
    assert abs(np.mean(np.abs(draw) > q) - p) < 4 * np.sqrt(p * (1 - p) / n), q
  assert stats.kstest(draw, "norm").pvalue > 1e-3
  assert np.all(np.isfinite(draw))


def test_draws_are_uncorrelated_at_the_hash_pairing_and_across_keys(draw):
  """Threefry hashes counters i and i + n/2 together: those, neighbours, and other particles' keys must be
  uncorrelated (4 SE of a correlation, 1/√n)."""
  half = len(draw) // 2
  other = np.asarray(standard_normal(jax.random.fold_in(jax.random.PRNGKey(0), 1), N), np.float64)
  for a, b in [(draw[:half], draw[half:]), (draw[:-1], draw[1:]), (draw, other), (draw ** 2, draw[::-1] ** 2)]:
    assert abs(np.corrcoef(a, b)[0, 1]) < 4 / np.sqrt(len(a))


def test_gaussian_draws_have_identity_covariance_across_tensors():
  theta = {"U": jnp.zeros((3, 2)), "b": jnp.zeros(2), "V": jnp.zeros((2,), jnp.bfloat16)}
  n = 40000
  eps = jax.vmap(ue.gaussian().sample, (0, None))(jax.random.split(jax.random.PRNGKey(1), n), theta)
  assert eps["V"].dtype == jnp.float32   # drawn in float32 whatever θ's dtype (rounded only when θ ± σε is formed)
  flat = np.concatenate([np.asarray(e, np.float64).reshape(n, -1) for e in jax.tree_util.tree_leaves(eps)], 1)
  # SE of a covariance entry of standard normals: ≤ √2/√n (diagonal).
  np.testing.assert_allclose(np.cov(flat.T), np.eye(flat.shape[1]), atol=4 * np.sqrt(2 / n))


def test_typed_and_raw_keys_give_the_same_draw():
  theta = {"W": jnp.zeros((4, 3))}
  a = ue.gaussian().sample(jax.random.key(5), theta)
  b = ue.gaussian().sample(jax.random.PRNGKey(5), theta)
  np.testing.assert_array_equal(a["W"], b["W"])


# K = 3 divides T = 6 (the whole-window path); T = 7 puts resets inside windows (the per-slot path).
@pytest.mark.parametrize("name,horizon", [("es_single", 6), ("es_single", 7), ("pes", 7), ("truncated_es", 6)])
def test_factored_gaussian_gives_the_dense_gaussian_estimate(name, horizon):
  system, key = matrix_system(horizon), jax.random.PRNGKey(3)
  out = {}
  for factored in (False, True):
    est = getattr(ue, name)(system, num_particles=8, sigma=0.1, truncation_length=3,
                            noise=ue.gaussian(factored=factored))
    state, estimate = jax.jit(est.init)(key, MATRIX_THETA), jax.jit(est.estimate)
    for i in range(4):
      g, state, info = estimate(jax.random.fold_in(key, i), MATRIX_THETA, state)
    out[factored] = (g, info["loss"])
  for a, b in zip(jax.tree_util.tree_leaves(out[False]), jax.tree_util.tree_leaves(out[True])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  assert np.abs(np.asarray(out[True][0]["W"])).max() > 0


def test_factored_gaussian_hands_the_step_perturbed_matrices():
  eps = ue.gaussian().sample(jax.random.PRNGKey(0), MATRIX_THETA)
  perturbed = ue.gaussian(factored=True).perturb(MATRIX_THETA, eps, 0.1)
  assert isinstance(perturbed["W"], ue.PerturbedMatrix) and perturbed["W"].b is None
  np.testing.assert_allclose(perturbed["W"].dense(), MATRIX_THETA["W"] + 0.1 * eps["W"], rtol=1e-6)
  x = jnp.arange(2.0 * MATRIX_THETA["W"].shape[0]).reshape(2, -1)
  np.testing.assert_allclose(ue.linear(x, perturbed["W"]), x @ perturbed["W"].dense(), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="factored must be True or False"):
    ue.gaussian(factored="yes")
