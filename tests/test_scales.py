"""Per-coordinate σ: noise N(0, σ² diag s²) with gradient weights ε/s keeps the estimators unbiased (exact on a
quadratic), with a θ-shaped scale or one number per leaf, formed or factored, alone or under a mask."""
import jax
import numpy as np
import pytest

import unrolled_es as ue
from systems import MATRIX_THETA, assert_unbiased, exact_window_gradients, matrix_system, run_windows

SCALES = {"per_coordinate": {"W": np.linspace(0.2, 3.0, 12).reshape(4, 3), "b": np.array([0.5, 1.0, 4.0])},
          "per_leaf": {"W": 2.0, "b": 0.25}}


@pytest.mark.parametrize("name", ["es_single", "pes"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("factored", [False, True])
def test_per_coordinate_scales_are_unbiased(name, scale, factored):
  system = matrix_system(7)
  noise = ue.gaussian(factored=factored, scale=SCALES[scale])
  est = ue.make(name, system, num_particles=8, sigma=0.1, truncation_length=3, stagger=False, noise=noise)
  grads, _ = run_windows(est, MATRIX_THETA, 3, 256)
  exact = exact_window_gradients(system, MATRIX_THETA, 3, 3)
  for w in range(3):
    assert_unbiased(jax.tree_util.tree_map(lambda g: g[:, w], grads), jax.tree_util.tree_map(lambda e: e[w], exact),
                    what=f"window {w}")


def test_draws_have_the_scales_as_standard_deviations():
  noise = ue.gaussian(scale=SCALES["per_coordinate"])
  eps = jax.vmap(noise.sample, (0, None))(jax.random.split(jax.random.PRNGKey(0), 20000), MATRIX_THETA)
  for e, s in zip(jax.tree_util.tree_leaves(eps), jax.tree_util.tree_leaves(SCALES["per_coordinate"])):
    std = np.asarray(e).std(0)
    np.testing.assert_allclose(std, s, rtol=4 / np.sqrt(2 * 20000))


def test_scales_and_a_mask_together():
  mask = {"W": np.ones((4, 3), bool), "b": np.array([True, False, True])}
  est = ue.es_single(matrix_system(7), num_particles=8, sigma=0.1, truncation_length=3, mask=mask,
                     noise=ue.gaussian(scale=SCALES["per_coordinate"]))
  g, _, _ = jax.jit(est.estimate)(jax.random.PRNGKey(1), MATRIX_THETA, est.init(jax.random.PRNGKey(0), MATRIX_THETA))
  assert float(g["b"][1]) == 0.0 and np.all(np.asarray(g["W"]) != 0)


@pytest.mark.parametrize("scale", [{"W": -1.0, "b": 1.0}, {"W": 0.0, "b": 1.0}, {"W": np.nan, "b": 1.0}])
def test_bad_scales_are_refused(scale):
  with pytest.raises(ValueError, match="scale must be"):
    ue.gaussian(scale=scale)
