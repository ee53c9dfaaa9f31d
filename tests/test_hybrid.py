"""The hybrid of ES and truncated BPTT (Metz et al. 2019): the per-coordinate inverse-variance mix of its two parts'
own estimates, exactly; the variances it mixes by are those of the parts' estimates (calibrated across seeds); all
weight on autodiff when that part has no variance; and refused without diagnostics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import THETA, linear_system, run_windows

KEY = jax.random.PRNGKey(3)


def parts(system):
  return (ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3, diagnostics=True),
          ue.truncated_bptt(system, num_particles=4, truncation_length=3, diagnostics=True))


def flaky(horizon):
  """The linear system with noisy targets, so that truncated BPTT's particles disagree."""
  base = linear_system(horizon)
  step = lambda th, s, key: (lambda out: (out[0], out[1] + jnp.sum(out[0]) * jax.random.normal(key)))(
      base.step(th, s, key))
  return base._replace(step=step)


def test_the_mix_is_the_inverse_variance_weighting_of_the_parts():
  es, ad = parts(flaky(12))
  h = ue.hybrid(es, ad)
  state = h.init(KEY, THETA)
  g, _, info = jax.jit(h.estimate)(jax.random.PRNGKey(9), THETA, state)
  k1, k2 = jax.random.split(jax.random.PRNGKey(9))
  g_es, _, i_es = es.estimate(k1, THETA, state[0])
  g_ad, _, i_ad = ad.estimate(k2, THETA, state[1])
  for leaf in ("w", "b"):
    ve, va = np.asarray(i_es["gradient_variance"][leaf]), np.asarray(i_ad["gradient_variance"][leaf])
    expected = (va * np.asarray(g_es[leaf]) + ve * np.asarray(g_ad[leaf])) / (ve + va)
    np.testing.assert_allclose(g[leaf], expected, rtol=1e-4, atol=1e-6)
  assert 0 < float(info["es_weight"]) < 1


@pytest.mark.parametrize("part", ["es", "autodiff"])
def test_the_variances_it_mixes_by_are_those_of_the_parts_estimates(part):
  """Each part's "gradient_variance" is the variance of its estimate, the mean of n particles' gradients: its mean
  over 2048 seeds matches the estimates' spread across them. The mix-from-info test above recomputes the hybrid from
  these numbers, so only this one fails when a part reports the variance of one particle's gradient (n times too
  large, which would give the noisier part the weight)."""
  system = flaky(12)
  est = (ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3, stagger=False, diagnostics=True)
         if part == "es" else
         ue.truncated_bptt(system, num_particles=4, truncation_length=3, stagger=False, diagnostics=True))
  grads, info = run_windows(est, THETA, 1, 2048)
  for leaf in ("w", "b"):
    g = np.asarray(grads[leaf][:, 0], np.float64)
    reported = np.asarray(info["gradient_variance"][leaf][:, 0], np.float64)
    centred = g - g.mean(0)
    spread = centred.var(0, ddof=1)
    se = np.sqrt((np.mean(centred ** 4, 0) - spread ** 2) / len(g) + reported.var(0, ddof=1) / len(g))
    assert np.all(np.abs(reported.mean(0) - spread) < 5 * se), (leaf, reported.mean(0), spread, se)
    assert np.all(5 * se < 0.5 * spread)   # power: a part reporting n = 4 times its variance is far outside


def test_a_noiseless_autodiff_part_takes_all_the_weight():
  system = linear_system(12)   # deterministic: every BPTT particle in step agrees, its variance is zero
  es = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3, stagger=False, diagnostics=True)
  ad = ue.truncated_bptt(system, num_particles=4, truncation_length=3, stagger=False, diagnostics=True)
  h = ue.hybrid(es, ad)
  g, _, info = jax.jit(h.estimate)(KEY, THETA, h.init(KEY, THETA))
  g_ad, _, _ = ad.estimate(jax.random.split(KEY)[1], THETA, h.init(KEY, THETA)[1])
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ad)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(info["es_weight"]) < 1e-6


def test_parts_without_diagnostics_are_refused():
  system = linear_system(12)
  h = ue.hybrid(ue.es_single(system, num_particles=2, sigma=0.1, truncation_length=3),
                ue.truncated_bptt(system, truncation_length=3, diagnostics=True))
  with pytest.raises(ValueError, match="diagnostics=True"):
    h.estimate(KEY, THETA, h.init(KEY, THETA))
  with pytest.raises(ValueError, match="variance_decay"):
    ue.hybrid(*parts(system), variance_decay=1.0)
