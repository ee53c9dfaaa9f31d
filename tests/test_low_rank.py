"""Low-rank (EGGROLL) noise: covariance I, so the estimators stay unbiased on quadratics; factored application
matches the dense one; the gap to full-rank ES shrinks as the rank grows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import MATRIX_THETA, assert_unbiased, exact_window_gradients, matrix_system, run_windows

NOISES = {"rank1": ue.low_rank(1), "rank2_factored": ue.low_rank(2, factored=True)}


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("name", ["pes", "es_single"])
def test_online_estimators_stay_unbiased_with_low_rank_noise(name, noise):
  system = matrix_system(7)   # K = 3 does not divide T: resets fall inside windows
  est = getattr(ue, name)(system, num_particles=8, sigma=0.1, truncation_length=3, stagger=False,
                          noise=NOISES[noise])
  grads, _ = run_windows(est, MATRIX_THETA, 4, 256)
  exact = exact_window_gradients(system, MATRIX_THETA, 3, 4)
  for w in (0, 2, 3):
    assert_unbiased(jax.tree_util.tree_map(lambda g: g[:, w], grads),
                    jax.tree_util.tree_map(lambda e: e[w], exact), what=f"{name} {noise} window {w}")


def test_full_es_stays_unbiased_with_rank_one_noise():
  system = matrix_system(6)
  grads, _ = run_windows(ue.full_es(system, num_particles=8, sigma=0.1, noise=ue.low_rank(1)), MATRIX_THETA, 1, 256)
  exact = jax.grad(lambda th: ue.evaluate(system, th, jax.random.PRNGKey(0)))(MATRIX_THETA)
  assert_unbiased(jax.tree_util.tree_map(lambda g: g[:, 0], grads), exact)


def test_factored_application_equals_dense_application():
  system, key = matrix_system(7), jax.random.PRNGKey(3)
  out = {}
  for factored in (False, True):
    est = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3,
                       noise=ue.low_rank(2, factored=factored))
    out[factored] = jax.jit(est.estimate)(key, MATRIX_THETA, est.init(key, MATRIX_THETA))
  for a, b in zip(jax.tree_util.tree_leaves(out[False]), jax.tree_util.tree_leaves(out[True])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_low_rank_draws_have_identity_covariance_and_one_stream_per_tensor():
  theta = {"U": jnp.zeros((3, 2)), "V": jnp.zeros((3, 2))}
  noise, n = ue.low_rank(1), 40000
  dense = jax.vmap(lambda k: noise.dense(noise.sample(k, theta)))(jax.random.split(jax.random.PRNGKey(0), n))
  both = np.concatenate([np.asarray(dense["U"]).reshape(n, -1), np.asarray(dense["V"]).reshape(n, -1)], 1)
  cov = np.cov(both.T)
  # SE of a sample covariance entry with these heavy tails (E[a⁴b⁴] = 9): 3/√n; allow 4 SE
  np.testing.assert_allclose(cov, np.eye(12), atol=4 * 3 / np.sqrt(n))


def test_gradient_assembly_is_the_weighted_sum_of_the_dense_draws():
  theta = {"W": jnp.zeros((5, 4)), "b": jnp.zeros(4)}
  noise = ue.low_rank(3)
  eps = jax.vmap(noise.sample, (0, None))(jax.random.split(jax.random.PRNGKey(1), 6), theta)
  coeffs = jnp.linspace(-1.0, 1.0, 6)
  want = jax.tree_util.tree_map(lambda e: jnp.tensordot(coeffs, e, 1), jax.vmap(noise.dense)(eps))
  got = noise.combine(coeffs, eps)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gap_to_full_rank_es_shrinks_as_rank_grows():
  """f(W) = ‖W‖⁴ is quartic, so the ES mean depends on the noise's 4th moments: E[ε(W·ε)‖ε‖²] is 18·W for
  Gaussian noise on a 4×4 W but (4+2)²=36·W at rank 1, and tends to 18·W as O(1/r)."""
  system = ue.UnrolledSystem(lambda k, th: jnp.zeros(()), lambda th, s, k: (s, jnp.sum(th["W"] ** 2) ** 2), 1)
  theta, sigma = {"W": jnp.full((4, 4), 0.25)}, 1.0

  def mean_estimate(noise):
    est = ue.full_es(system, num_particles=20000, sigma=sigma, noise=noise)
    return np.asarray(jax.jit(est.estimate)(jax.random.PRNGKey(7), theta, est.init(jax.random.PRNGKey(0), theta))[0]["W"])
  w = np.asarray(theta["W"])
  smoothed = 4 * w * np.sum(w ** 2) + 4 * sigma ** 2 * (16 + 2) * w   # exact Gaussian-smoothed gradient
  full = mean_estimate(ue.gaussian())
  gaps = [np.abs(mean_estimate(ue.low_rank(r)) - smoothed).mean() for r in (1, 4, 16)]
  assert np.abs(full - smoothed).mean() < 0.1 * gaps[0]
  assert gaps[0] > gaps[1] > gaps[2]
  assert gaps[0] / gaps[2] > 4   # O(1/r): rank 16 is much closer than rank 1


@pytest.mark.parametrize("horizon", [6, 7], ids=["aligned", "mid_window_resets"])
@pytest.mark.parametrize("stagger", [True, False])
def test_kept_draws_give_the_regenerated_estimates_bit_for_bit(horizon, stagger):
  """ES-Single keeps compact (low-rank) draws in its state and draws only the particles that reset (at most the
  budget of a staggered window; all of them otherwise): the same numbers as regenerating every draw, to float32
  rounding (the two are different XLA programs, and on some CPUs XLA fuses their arithmetic differently: measured
  relative differences of 1e-6, where a wrong or stale draw changes the estimate by O(1))."""
  system, key = matrix_system(horizon), jax.random.PRNGKey(3)
  kept_noise = ue.low_rank(1, factored=True)
  regenerated = kept_noise._replace(compact=False)
  out = {}
  for name, noise in (("kept", kept_noise), ("regenerated", regenerated)):
    est = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3, noise=noise, stagger=stagger)
    state, estimate = jax.jit(est.init)(key, MATRIX_THETA), jax.jit(est.estimate)
    assert (state.draws is None) == (name == "regenerated")
    out[name] = []
    for i in range(6):
      g, state, info = estimate(jax.random.fold_in(key, i), MATRIX_THETA, state)
      out[name].append((g, int(info["resets"])))
  assert sum(r for _, r in out["kept"]) > 0
  for (a, ra), (b, rb) in zip(out["kept"], out["regenerated"]):
    assert ra == rb
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)
