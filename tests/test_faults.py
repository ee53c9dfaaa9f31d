"""Non-finite losses, bad arguments, determinism and staggering."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import THETA, assert_unbiased, exact_window_gradients, linear_system, run_windows

KEY = jax.random.PRNGKey(0)


def flaky_system(horizon, p_nan):
  """The linear system, except that a step's loss is NaN with probability p_nan (drawn from its step key)."""
  base = linear_system(horizon)

  def step(theta, s, key):
    s, loss = base.step(theta, s, key)
    return s, jnp.where(jax.random.uniform(key) < p_nan, jnp.nan, loss)
  return base._replace(step=step)


def test_nonfinite_pairs_are_left_out_counted_and_reset_and_the_rest_stays_unbiased():
  system = flaky_system(12, 0.05)
  est = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3, stagger=False)
  grads, info = run_windows(est, THETA, 4, 256)
  left_out = np.asarray(info["num_nonfinite"])
  assert left_out.sum() > 100 and np.all(left_out < 8)
  assert np.all(np.asarray(info["num_valid"]) + left_out == 8)
  for g in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(g))
  # NaNs strike independently of θ, so the kept pairs still estimate the gradient without bias... but a
  # particle reset after a NaN restarts its episode, so compare with the first window only (all at step 0).
  exact = exact_window_gradients(system, THETA, 3, 1)
  assert_unbiased(jax.tree_util.tree_map(lambda g: g[:, 0], grads), jax.tree_util.tree_map(lambda e: e[0], exact))


def test_a_nonfinite_particle_resets_before_its_next_window():
  system = flaky_system(12, 0.2)
  est = ue.pes(system, num_particles=16, sigma=0.1, truncation_length=3, stagger=False)
  estimate = jax.jit(est.estimate)
  state = est.init(KEY, THETA)
  _, state, info = estimate(jax.random.PRNGKey(1), THETA, state)
  bad = np.asarray(state.t) == 12
  assert bad.sum() == int(info["num_nonfinite"]) > 0
  _, state, info = estimate(jax.random.PRNGKey(2), THETA, state)
  assert int(info["resets"]) == bad.sum()


@pytest.mark.parametrize("make", [
    lambda s: ue.pes(s, num_particles=4, sigma=0.1, truncation_length=3),
    lambda s: ue.truncated_bptt(s, num_particles=4, truncation_length=3)], ids=["pes", "truncated_bptt"])
def test_all_nonfinite_gives_a_zero_gradient_and_says_so(make):
  est = make(flaky_system(12, 1.0))
  g, _, info = jax.jit(est.estimate)(KEY, THETA, est.init(KEY, THETA))
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(g))
  assert int(info["num_valid"]) == 0 and int(info["num_nonfinite"]) == 4 and np.isnan(info["loss"])


def test_truncated_bptt_leaves_out_nonfinite_particles():
  est = ue.truncated_bptt(flaky_system(12, 0.2), num_particles=16, truncation_length=3)
  g, _, info = jax.jit(est.estimate)(KEY, THETA, est.init(KEY, THETA))
  assert 0 < int(info["num_nonfinite"]) < 16
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(g))


def test_same_key_and_state_give_bit_identical_output_and_no_host_round_trip():
  est = ue.pes(linear_system(12), num_particles=8, sigma=0.1, truncation_length=3)
  state = est.init(KEY, THETA)
  a = jax.jit(est.estimate)(jax.random.PRNGKey(5), THETA, state)
  b = jax.jit(est.estimate)(jax.random.PRNGKey(5), THETA, state)
  c = jax.jit(est.estimate)(jax.random.PRNGKey(6), THETA, state)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0]["w"], c[0]["w"])
  jaxpr = str(jax.make_jaxpr(est.estimate)(KEY, THETA, state))
  assert "callback" not in jaxpr


def test_typed_keys_work_like_raw_keys():
  est = ue.es_single(linear_system(12), num_particles=4, sigma=0.1, truncation_length=3)
  raw = est.estimate(jax.random.PRNGKey(1), THETA, est.init(jax.random.PRNGKey(0), THETA))
  typed = est.estimate(jax.random.key(1), THETA, est.init(jax.random.key(0), THETA))
  np.testing.assert_array_equal(raw[0]["w"], typed[0]["w"])
  for bad in (jax.random.key(1, impl="rbg"), jax.random.split(jax.random.PRNGKey(1), 3), jnp.zeros(2, jnp.int32)):
    with pytest.raises(ValueError, match="key must be one Threefry key"):
      est.estimate(bad, THETA, est.init(jax.random.PRNGKey(0), THETA))


def test_stagger_spreads_particles_over_the_horizon_and_counts_its_steps():
  system = linear_system(12)
  est = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3, stagger=True)
  state = est.init(KEY, THETA)
  assert sorted((np.asarray(state.t) % 12).tolist()) == [0, 0, 3, 3, 6, 6, 9, 9]  # t = T: about to start
  assert int(state.init_steps) == 2 * 3 * (0 + 0 + 1 + 1 + 2 + 2 + 3 + 3)
  flat = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3, stagger=False).init(KEY, THETA)
  assert np.all(np.asarray(flat.t) == 12) and int(flat.init_steps) == 0   # all start at step 0 on the first call


def bad_loss_system():
  return ue.UnrolledSystem(lambda k, th: jnp.zeros(2), lambda th, s, k: (s, s * th["w"][:2]), 5)


SYSTEM = linear_system(10)
BAD = [
    (lambda: ue.pes(SYSTEM, num_particles=0, sigma=0.1, truncation_length=2), "num_particles"),
    (lambda: ue.pes(SYSTEM, num_particles=2.5, sigma=0.1, truncation_length=2), "num_particles"),
    (lambda: ue.es_single(SYSTEM, num_particles=2, sigma=0.0, truncation_length=2), "sigma"),
    (lambda: ue.es_single(SYSTEM, num_particles=2, sigma=-1.0, truncation_length=2), "sigma"),
    (lambda: ue.full_es(SYSTEM, num_particles=2, sigma=float("nan")), "sigma"),
    (lambda: ue.truncated_es(SYSTEM, num_particles=2, sigma=float("inf"), truncation_length=2), "sigma"),
    (lambda: ue.pes(SYSTEM, num_particles=2, sigma=0.1, truncation_length=0), "truncation_length"),
    (lambda: ue.truncated_bptt(SYSTEM, truncation_length=11), "truncation_length"),
    (lambda: ue.pes(SYSTEM._replace(horizon=0), num_particles=2, sigma=0.1, truncation_length=1), "horizon"),
    (lambda: ue.generalized_pes(SYSTEM, num_particles=2, sigma=0.1, truncation_length=2, resample_every=3),
     "resample_every"),
    (lambda: ue.pes(SYSTEM, num_particles=2, sigma=0.1, truncation_length=2, stagger="yes"), "stagger"),
    (lambda: ue.pes(SYSTEM, num_particles=2, sigma=0.1, truncation_length=2, noise="lowrank"), "noise"),
    (lambda: ue.pes(SYSTEM, num_particles=2, sigma=0.1, truncation_length=2).init(
        KEY, {"w": jnp.arange(3), "b": jnp.array(0.3)}), r"theta leaf \['w'\]"),
    (lambda: ue.es_single(bad_loss_system(), num_particles=2, sigma=0.1, truncation_length=2).init(
        KEY, {"w": jnp.ones(3)}), "scalar loss"),
]


@pytest.mark.parametrize("build,match", BAD, ids=[m for _, m in BAD])
def test_bad_input_raises_a_clear_error(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_error_messages_give_the_allowed_range():
  with pytest.raises(ValueError, match=r"truncation_length must be an integer in \[1, 10\]; got 11"):
    ue.pes(SYSTEM, num_particles=2, sigma=0.1, truncation_length=11)
  with pytest.raises(ValueError, match=r"sigma must be a finite number > 0; got -1"):
    ue.pes(SYSTEM, num_particles=2, sigma=-1, truncation_length=1)


def test_make_builds_any_estimator_by_name_from_the_settings_it_takes():
  settings = dict(num_particles=4, sigma=0.1, truncation_length=5, stagger=False, noise=ue.low_rank(1))
  for name in ue.ESTIMATORS:
    est = ue.make(name, SYSTEM, **{k: v for k, v in settings.items() if k in ue.estimator_options(name)})
    grad, _, info = est.estimate(KEY, THETA, est.init(KEY, THETA))
    expected = SYSTEM.horizon if name in ("full_es", "full_bptt") else 5
    assert int(info["sequential_inner_steps"]) == expected, name
  with pytest.raises(ValueError, match="unknown estimator 'pess'; choose one of: full_es"):
    ue.make("pess", SYSTEM, **settings)
  with pytest.raises(ValueError, match="estimator 'pes' takes no option sigmaa; it takes: num_particles, sigma"):
    ue.make("pes", SYSTEM, num_particles=4, sigmaa=0.1, truncation_length=5)


@pytest.mark.parametrize("name,option", [("full_es", "horizons"), ("int_es", "mask"), ("truncated_bptt", "sigma"),
                                         ("full_es", "truncation_length")])
def test_make_refuses_an_option_the_estimator_does_not_take(name, option):
  """Dropping it silently would build another estimator than the one asked for."""
  with pytest.raises(ValueError, match=rf"estimator '{name}' takes no option {option}; it takes: .*num_particles"):
    ue.make(name, SYSTEM, num_particles=4, **{option: None})
  assert option not in ue.estimator_options(name) and "num_particles" in ue.estimator_options(name)
