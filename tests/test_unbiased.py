"""On a linear system with a quadratic loss, the online ES estimators are exactly unbiased (Gaussian smoothing adds
only a constant to a quadratic; Vicol et al. 2021, Li et al. 2023), so their mean must match jax.grad through the
full unroll within a few standard errors (fixed seeds: never flaky)."""

import jax
import jax.numpy as jnp
import pytest

import unrolled_es as ue
from systems import THETA, assert_unbiased, exact_window_gradients, linear_system, run_windows

SEEDS = 256
ONLINE = {
    "pes": ue.pes,
    "es_single": ue.es_single,
    "gpes_k2K": lambda system, truncation_length, **kw: ue.generalized_pes(
        system, truncation_length=truncation_length, resample_every=2 * truncation_length, **kw),
}


def make(name, system, k, stagger, **kw):
  return ONLINE[name](system, num_particles=8, sigma=0.1, truncation_length=k, stagger=stagger, **kw)


@pytest.mark.parametrize("name", ONLINE)
@pytest.mark.parametrize("horizon,k,windows", [(12, 3, 4), (7, 3, 5)], ids=["aligned", "mid_window_resets"])
def test_every_window_unbiased_without_stagger(name, horizon, k, windows):
  system = linear_system(horizon)
  grads, info = run_windows(make(name, system, k, stagger=False), THETA, windows, SEEDS)
  exact = exact_window_gradients(system, THETA, k, windows)
  for w in range(windows):
    assert_unbiased(jax.tree_util.tree_map(lambda g: g[:, w], grads),
                    jax.tree_util.tree_map(lambda e: e[w], exact), what=f"{name} window {w}")
  if horizon % k:  # the reset really happened inside a window, per particle, in the compiled scan
    assert int(info["resets"][0, 2]) == 8 and int(info["resets"][0, 4]) == 8


@pytest.mark.parametrize("name", ONLINE)
def test_staggered_average_over_a_horizon_is_the_episode_gradient(name):
  horizon, k = 12, 3
  system = linear_system(horizon)
  grads, _ = run_windows(make(name, system, k, stagger=True), THETA, horizon // k, SEEDS)
  exact = jax.grad(lambda th: ue.evaluate(system, th, jax.random.PRNGKey(0)))(THETA)
  assert_unbiased(jax.tree_util.tree_map(lambda g: g.mean(1), grads), exact, what=name)


@pytest.mark.parametrize("antithetic", [True, False])
def test_full_es_is_unbiased_for_the_episode_gradient(antithetic):
  system = linear_system(10)
  est = ue.full_es(system, num_particles=8, sigma=0.1, antithetic=antithetic)
  grads, info = run_windows(est, THETA, 2, SEEDS)
  exact = jax.grad(lambda th: ue.evaluate(system, th, jax.random.PRNGKey(0)))(THETA)
  assert_unbiased(jax.tree_util.tree_map(lambda g: g.reshape((-1,) + g.shape[2:]), grads), exact)
  assert int(info["inner_steps"][0, 0]) == 8 * (2 if antithetic else 1) * 10


def test_non_antithetic_online_estimators_are_unbiased():
  system = linear_system(12)
  est = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3, stagger=False, antithetic=False)
  grads, _ = run_windows(est, THETA, 4, SEEDS)
  exact = exact_window_gradients(system, THETA, 3, 4)
  assert_unbiased(jax.tree_util.tree_map(lambda g: g[:, 3], grads), jax.tree_util.tree_map(lambda e: e[3], exact))


def test_full_bptt_is_exact():
  system = linear_system(10)
  est = ue.full_bptt(system, num_particles=2)
  g, _, info = jax.jit(est.estimate)(jax.random.PRNGKey(3), THETA, est.init(jax.random.PRNGKey(0), THETA))
  exact = jax.grad(lambda th: ue.evaluate(system, th, jax.random.PRNGKey(0)))(THETA)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(exact)):
    assert jnp.allclose(a, b, rtol=1e-5, atol=1e-6)
