"""A new estimator is a Rule and a constructor: defined here with only the public extension point, it runs through
the engine, registers by name, and is unbiased; and baseline_es, the library's own such estimator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import THETA, assert_unbiased, exact_window_gradients, linear_system, run_windows
from unrolled_es.core.system import episode_losses

SEEDS = 256


def unperturbed_first_differences(losses, valid):
  """Members (θ, θ + σε): Δ = l(θ + σε) − l(θ)."""
  return jnp.where(valid[:, None], losses[:, 1] - losses[:, 0], 0.0)


def every_third_window(windows_begun):
  return windows_begun > 3


# Noise redrawn every third window, summed over the episode (GPES), against the particle's unperturbed run.
RULE = ue.Rule(redraw=every_third_window, weighting=ue.rules.EPISODE_SUM,
               pairing=ue.rules.Pairing((0.0, 1.0), unperturbed_first_differences))


def sum_against_baseline(system, *, num_particles, sigma, truncation_length, stagger=True, noise=None):
  return ue.es_estimator(system, RULE, num_particles=num_particles, sigma=sigma,
                         truncation_length=truncation_length, stagger=stagger, noise=noise)


@pytest.mark.parametrize("horizon,windows", [(12, 7), (7, 5)], ids=["aligned", "mid_window_resets"])
@pytest.mark.parametrize("noise", [ue.gaussian(), ue.low_rank(1)], ids=["gaussian", "low_rank"])
def test_an_estimator_defined_outside_the_library_is_unbiased(horizon, windows, noise):
  from systems import MATRIX_THETA, matrix_system
  system = matrix_system(horizon)
  est = sum_against_baseline(system, num_particles=8, sigma=0.1, truncation_length=3, stagger=False, noise=noise)
  grads, info = run_windows(est, MATRIX_THETA, windows, SEEDS)
  exact = exact_window_gradients(system, MATRIX_THETA, 3, windows)
  for w in range(windows):
    assert_unbiased(jax.tree_util.tree_map(lambda g: g[:, w], grads),
                    jax.tree_util.tree_map(lambda e: e[w], exact), what=f"window {w}")
  assert int(info["inner_steps"][0, 0]) == 8 * 2 * 3


def test_registering_makes_it_buildable_by_name():
  name = "test_sum_against_baseline"
  ue.register(name, sum_against_baseline)
  assert name in ue.registered()
  est = ue.make(name, linear_system(6), num_particles=4, sigma=0.1, truncation_length=3)
  g, _, _ = jax.jit(est.estimate)(jax.random.PRNGKey(1), THETA, est.init(jax.random.PRNGKey(0), THETA))
  assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(THETA)
  with pytest.raises(ValueError, match="already registered"):
    ue.register(name, lambda system, **kw: None)


@pytest.mark.parametrize("horizon,windows", [(12, 4), (7, 5)], ids=["aligned", "mid_window_resets"])
def test_baseline_es_is_unbiased_and_reports_the_unperturbed_loss(horizon, windows):
  system = linear_system(horizon)
  est = ue.baseline_es(system, num_particles=8, sigma=0.1, truncation_length=3, stagger=False)
  grads, info = run_windows(est, THETA, windows, SEEDS)
  exact = exact_window_gradients(system, THETA, 3, windows)
  for w in range(windows):
    assert_unbiased(jax.tree_util.tree_map(lambda g: g[:, w], grads),
                    jax.tree_util.tree_map(lambda e: e[w], exact), what=f"window {w}")
  # Unstaggered particles all run the same unperturbed episode: its first window's loss, exactly.
  losses = episode_losses(system, THETA, jax.random.PRNGKey(0))
  np.testing.assert_allclose(info["unperturbed_loss"][:, 0], np.mean(losses[:3]), rtol=1e-5)


def test_baseline_es_has_less_variance_than_the_leave_one_out_baseline_on_staggered_particles():
  # Staggered particles sit at different steps of their episodes, where the loss level differs: the other
  # particles' mean is a poor baseline there, the particle's own unperturbed run an exact one.
  system, seeds = linear_system(12), 256
  kw = dict(num_particles=8, sigma=0.1, truncation_length=3, stagger=True)
  variance = {}
  for name, est in (("baseline", ue.baseline_es(system, **kw)),
                    ("leave_one_out", ue.es_single(system, antithetic=False, **kw))):
    grads, _ = run_windows(est, THETA, 4, seeds)
    flat = np.concatenate([np.asarray(g).reshape(seeds * 4, -1) for g in jax.tree_util.tree_leaves(grads)], 1)
    variance[name] = flat.var(0, ddof=1).sum()
  # Each variance is estimated from 1024 estimates (256 runs of 4 windows): its relative standard error is a few
  # percent, so a ratio below 0.8 is well outside their spread (measured here: about 0.67).
  assert variance["baseline"] < 0.8 * variance["leave_one_out"], variance
