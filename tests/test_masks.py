"""mask=: masked coordinates are never perturbed, get exactly zero gradient and do not move under any estimator
and noise; a fully masked leaf costs no draw; the unmasked rest is still unbiased."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unrolled_es as ue
from systems import MATRIX_THETA, assert_unbiased, exact_window_gradients, matrix_system, run_windows
from unrolled_es.noise import masks

MASK = {"W": np.arange(12).reshape(4, 3) % 3 != 1, "b": np.array([True, False, True])}
NOISES = {"gaussian": ue.gaussian(), "gaussian_factored": ue.gaussian(factored=True), "low_rank": ue.low_rank(1),
          "low_rank_factored": ue.low_rank(2, factored=True)}


def build(name, system, noise, mask):
  """The estimator `name` from the settings it takes (ue.make refuses the others)."""
  kw = dict(num_particles=4, sigma=0.1, truncation_length=3, noise=noise, mask=mask)
  takes = inspect.signature(ue.registered()[name]).parameters
  return ue.make(name, system, **{k: v for k, v in kw.items() if k in takes})


CASES = [("es_single", noise) for noise in NOISES] + [("pes", "low_rank_factored"), ("pes", "gaussian")] + [
    (name, "gaussian") for name in ("truncated_es", "full_es", "baseline_es", "truncated_bptt", "full_bptt")]


@pytest.mark.parametrize("name,noise", CASES)
def test_masked_coordinates_get_zero_gradient_and_do_not_move(name, noise):
  system = matrix_system(7)
  est, opt = build(name, system, NOISES[noise], MASK), optax.adam(0.1)
  theta, state, opt_state = MATRIX_THETA, est.init(jax.random.PRNGKey(0), MATRIX_THETA), opt.init(MATRIX_THETA)
  estimate = jax.jit(est.estimate)
  for i in range(3):
    g, state, _ = estimate(jax.random.PRNGKey(i), theta, state)
    for leaf, m in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(MASK)):
      assert np.all(np.asarray(leaf)[~m] == 0) and np.any(np.asarray(leaf)[m] != 0)
    updates, opt_state = opt.update(g, opt_state)
    theta = optax.apply_updates(theta, updates)
  for new, old, m in zip(*map(jax.tree_util.tree_leaves, (theta, MATRIX_THETA, MASK))):
    np.testing.assert_array_equal(np.asarray(new)[~m], np.asarray(old)[~m])


@pytest.mark.parametrize("noise", NOISES)
def test_members_never_see_a_perturbation_of_masked_coordinates(noise):
  masked = masks.masked(NOISES[noise], MASK)
  out = ue.materialize(masked.perturb(MATRIX_THETA, masked.sample(jax.random.PRNGKey(1), MATRIX_THETA), 0.5))
  for new, old, m in zip(*map(jax.tree_util.tree_leaves, (out, MATRIX_THETA, MASK))):
    np.testing.assert_array_equal(np.asarray(new)[~m], np.asarray(old)[~m])
    assert np.all(np.asarray(new)[m] != np.asarray(old)[m])


def test_a_fully_masked_leaf_costs_no_draw():
  noise = masks.masked(ue.low_rank(1), {"W": np.zeros((4, 3), bool), "b": np.ones(3, bool)})
  eps = noise.sample(jax.random.PRNGKey(0), MATRIX_THETA)
  assert eps["W"].size == 0 and eps["b"].shape == (3,)
  assert noise.combine(jnp.ones(2), jax.tree_util.tree_map(lambda e: jnp.stack([e, e]), eps))["W"].shape == (4, 3)


def test_the_unmasked_coordinates_stay_unbiased():
  system = matrix_system(7)
  est = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3, stagger=False, mask=MASK,
                     noise=ue.low_rank(1))
  grads, _ = run_windows(est, MATRIX_THETA, 3, 256)
  exact = jax.tree_util.tree_map(lambda e, m: e * m, exact_window_gradients(system, MATRIX_THETA, 3, 3), MASK)
  for w in range(3):
    assert_unbiased(jax.tree_util.tree_map(lambda g: g[:, w], grads), jax.tree_util.tree_map(lambda e: e[w], exact))


@pytest.mark.parametrize("mask,match", [
    ({"W": np.ones((4, 3)), "b": np.full(3, 2.0)}, r"mask leaf \['W'\] must hold booleans .*got dtype float64"),
    ({"W": np.ones((4, 3), np.int32), "b": np.ones(3, bool)}, "must hold booleans .*got dtype int32"),
    ({"W": np.ones((4, 3), bool)}, "pytree structure"),
    ({"W": np.ones((3, 4), bool), "b": np.ones(3, bool)}, "has shape")])
def test_bad_masks_are_refused_with_the_argument_named(mask, match):
  with pytest.raises(ValueError, match=match):
    est = ue.es_single(matrix_system(6), num_particles=2, sigma=0.1, truncation_length=3, mask=mask)
    est.init(jax.random.PRNGKey(0), MATRIX_THETA)
