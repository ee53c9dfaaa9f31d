"""diagnostics=True: the estimate's per-coordinate variance from its own particles, its ratio to ‖ĝ‖² and the
effective number of particles equal a direct numpy computation on the same window's particles."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import MATRIX_THETA, matrix_system
from unrolled_es.core import engine
from unrolled_es.core import estimator
from unrolled_es.core import gradient


@pytest.mark.parametrize("name,noise", [("es_single", ue.low_rank(2)), ("pes", ue.gaussian()),
                                        ("es_single", ue.gaussian(scale={"W": 2.0, "b": 0.5}))])
def test_diagnostics_equal_a_direct_computation(name, noise):
  system, n, k = matrix_system(7), 8, 3      # T = 7, K = 3: resets fall inside windows
  est = ue.make(name, system, num_particles=n, sigma=0.1, truncation_length=k, noise=noise, diagnostics=True)
  key = jax.random.PRNGKey(4)
  state = est.init(key, MATRIX_THETA)
  for w in range(2):   # a window in which some particles reset mid-window
    before = state
    grad, state, info = est.estimate(jax.random.fold_in(key, w), MATRIX_THETA, state)
  assert 0 < int(info["resets"]) < n
  # the same window's particles, from the engine's stages
  module = importlib.import_module(f"unrolled_es.estimators.{'pes' if name == 'pes' else 'es_single'}")
  rule = module.rule(1) if name == "pes" else module.RULE
  s = estimator.settings(system, members=2, num_particles=n, sigma=0.1, truncation_length=k, noise=noise)
  _, out = engine.es_window(system, rule, s, MATRIX_THETA, before, jax.random.fold_in(key, 1))
  c = gradient.coefficients(rule.pairing.differences(out.losses, out.valid), out.after_reset, out.valid, 0.1, k)
  unit = lambda i, which, cc: noise.combine(jnp.eye(n)[i] * cc, which)   # particle i's term, in gradient units
  h = [jax.tree_util.tree_map(lambda a, b: n * (a + b), unit(i, out.weight, c.pre), unit(i, out.eps_post, c.post))
       for i in range(n)]
  for leaf in ("W", "b"):
    per = np.stack([np.asarray(x[leaf], np.float64) for x in h])
    np.testing.assert_allclose(per.mean(0), grad[leaf], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(info["gradient_variance"][leaf], per.var(0, ddof=1) / n, rtol=1e-3, atol=1e-7)
  total = sum(np.stack([np.asarray(x[l]) for x in h]).var(0, ddof=1).sum() / n for l in ("W", "b"))
  norm = sum(float(np.sum(np.square(grad[l]))) for l in ("W", "b"))
  np.testing.assert_allclose(float(info["variance_ratio"]), total / norm, rtol=1e-3)
  mag = np.abs(np.asarray(c.pre)) + np.abs(np.asarray(c.post))
  np.testing.assert_allclose(float(info["effective_particles"]), mag.sum() ** 2 / (mag ** 2).sum(), rtol=1e-5)


def test_diagnostics_are_off_by_default():
  est = ue.es_single(matrix_system(6), num_particles=2, sigma=0.1, truncation_length=3)
  _, _, info = est.estimate(jax.random.PRNGKey(0), MATRIX_THETA, est.init(jax.random.PRNGKey(0), MATRIX_THETA))
  assert "variance_ratio" not in info
