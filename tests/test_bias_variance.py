"""Truncated estimators are biased on a system with memory; PES variance grows with windows, ES-Single's does not."""
import jax
import jax.numpy as jnp
import numpy as np

import unrolled_es as ue
from systems import THETA, assert_unbiased, distance_in_se, exact_window_gradients, linear_system, run_windows
from unrolled_es.core.system import episode_losses

T, K, W = 12, 3, 4


def truncated_gradients(system, theta):
  """∇θ of each window's mean loss with the window's starting state held constant (the exact TBPTT answer)."""
  key = jax.random.PRNGKey(0)
  states = [system.init(key, theta)]
  for t in range(T):
    states.append(system.step(theta, states[-1], key)[0])

  def window_loss(th, w):
    if w == 0:
      return jnp.mean(episode_losses(system, th, key, K))
    s, total = states[w * K], 0.0
    for _ in range(K):
      s, loss = system.step(th, s, key)
      total += loss
    return total / K
  return [jax.grad(window_loss)(theta, w) for w in range(W)]


def test_truncated_bptt_is_the_exact_truncated_gradient_and_biased():
  system = linear_system(T)
  grads, _ = run_windows(ue.truncated_bptt(system, truncation_length=K, num_particles=2, stagger=False), THETA, W, 1)
  exact = exact_window_gradients(system, THETA, K, W)
  for w, want in enumerate(truncated_gradients(system, THETA)):
    for g, e, full in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want),
                          jax.tree_util.tree_leaves(exact)):
      np.testing.assert_allclose(g[0, w], e, rtol=1e-5, atol=1e-6)
      if w > 0:  # ignoring the history is far from the true gradient
        assert np.linalg.norm(np.asarray(g[0, w]) - np.asarray(full[w])) > 0.1 * np.linalg.norm(full[w])


def test_truncated_es_matches_the_truncated_gradient_not_the_true_one():
  system = linear_system(T)
  est = ue.truncated_es(system, num_particles=8, sigma=0.1, truncation_length=K, stagger=False)
  grads, _ = run_windows(est, THETA, W, 256)
  exact = exact_window_gradients(system, THETA, K, W)
  for w, want in enumerate(truncated_gradients(system, THETA)):
    at_w = jax.tree_util.tree_map(lambda g: g[:, w], grads)
    assert_unbiased(at_w, want, what=f"window {w}")
    if w > 0:
      assert distance_in_se(at_w, jax.tree_util.tree_map(lambda e: e[w], exact)) > 10


def stationary_system(horizon):
  """Every window contributes alike: the state starts at its fixed point 2w; targets jitter with the step key."""
  def init(key, theta):
    return 2.0 * theta["w"]

  def step(theta, s, key):
    s = 0.5 * s + theta["w"]
    y = 1.0 + 0.1 * jax.random.normal(key, s.shape)
    return s, 0.5 * jnp.sum((s - y) ** 2)
  return ue.UnrolledSystem(init, step, horizon)


def total_variance(grads):
  return sum(np.asarray(g, np.float64).var(0, ddof=1).sum(-1) for g in jax.tree_util.tree_leaves(grads))


def test_pes_variance_grows_with_windows_while_es_single_stays_flat():
  windows, seeds = 8, 512
  system, theta = stationary_system(windows * K), {"w": jnp.array([0.3, -0.2])}
  kw = dict(num_particles=4, sigma=0.05, truncation_length=K, stagger=False)
  pes_var = total_variance(run_windows(ue.pes(system, **kw), theta, windows, seeds)[0])
  single_var = total_variance(run_windows(ue.es_single(system, **kw), theta, windows, seeds)[0])
  band = 4 * np.sqrt(2 / (seeds - 1)) * np.sqrt(2)  # 4 SE of a ratio of two sample variances
  assert abs(single_var[-1] / single_var[0] - 1) < band
  assert abs(single_var[windows // 2] / single_var[0] - 1) < band
  assert pes_var[-1] / pes_var[0] > 1 + 3 * band
  assert np.all(np.diff(pes_var) > -band * pes_var[:-1])   # grows, up to noise


def test_antithetic_sampling_lowers_variance_at_equal_cost():
  def init(key, theta):
    return jnp.zeros(())

  def step(theta, s, key):  # strongly curved: one-sided ES pays for the Hessian term, antithetic cancels it
    return s, 20.0 * jnp.sum(theta["w"] ** 2) + jnp.sum(theta["w"]) + 10.0
  system, theta = ue.UnrolledSystem(init, step, 4), {"w": jnp.array([0.1, 0.2, 0.3])}
  kw = dict(sigma=1.0, truncation_length=2, stagger=False)
  anti = run_windows(ue.es_single(system, num_particles=8, **kw), theta, 1, 256)[0]
  plain = run_windows(ue.es_single(system, num_particles=16, antithetic=False, **kw), theta, 1, 256)[0]
  assert total_variance(anti)[0] < 0.5 * total_variance(plain)[0]
