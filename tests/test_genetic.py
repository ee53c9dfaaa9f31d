"""The Deep GA: genomes (lists of keys) decode to the members they encode, selection keeps the elite, and the
population improves on a problem with a known optimum."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import THETA, linear_system


def track(ga_noise, sigma, theta, state, info):
  """The population after an update, built incrementally: each child is its parent plus σ·ε(its newest key)."""
  out = []
  for m, parent in enumerate(np.asarray(info["parents"])):
    child = theta[parent]
    if m > 0:
      eps = ga_noise.dense(ga_noise.sample(state.genomes[m, int(state.length[m]) - 1], child))
      child = jax.tree_util.tree_map(lambda x, e: x + sigma * e, child, eps)
    out.append(child)
  return out


@pytest.mark.parametrize("noise", [ue.gaussian(), ue.low_rank(1)], ids=["gaussian", "low_rank"])
def test_genomes_decode_to_the_members_they_encode(noise):
  from systems import MATRIX_THETA, matrix_system
  ga = ue.deep_ga(matrix_system(5), population=6, parents=3, sigma=0.1, elite_candidates=2, elite_episodes=2,
                  max_generations=8, noise=noise)
  state = ga.init(jax.random.PRNGKey(0), MATRIX_THETA)
  theta = [ga.member(state, m) for m in range(6)]
  elite = MATRIX_THETA
  step = jax.jit(ga.step)
  for g in range(4):
    elite, state, info = step(jax.random.PRNGKey(g), elite, state)
    theta = track(noise, 0.1, theta, state, info)
    for m in range(6):
      for a, b in zip(jax.tree_util.tree_leaves(ga.member(state, m)), jax.tree_util.tree_leaves(theta[m])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(elite), jax.tree_util.tree_leaves(theta[0])):   # step returns member 0
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(state.length[0]) <= g + 1 and np.all(np.asarray(state.length[1:]) >= 1)
  assert state.genomes.dtype == jnp.uint32 and state.genomes.shape == (6, 8, 2)


def test_the_population_improves_and_the_elite_is_kept():
  system = linear_system(6)
  ga = ue.deep_ga(system, population=64, parents=8, sigma=0.05, elite_candidates=4, elite_episodes=1)
  theta, state = THETA, ga.init(jax.random.PRNGKey(1), THETA)
  step = jax.jit(ga.step)
  first = None
  for g in range(15):
    theta, state, info = step(jax.random.PRNGKey(100 + g), theta, state)
    first = float(info["best_fitness"]) if first is None else first
  # a deterministic system: fitness is minus the episode's mean loss, so the elite is the best θ seen
  elite_loss = float(ue.evaluate(system, theta, jax.random.PRNGKey(0)))
  assert -elite_loss == pytest.approx(float(info["elite_fitness"]), rel=1e-5)
  assert float(info["elite_fitness"]) > first + 0.5
  assert float(info["median_fitness"]) <= float(info["best_fitness"])


@pytest.mark.parametrize("kw,match", [(dict(population=1), "population"), (dict(parents=0), "parents"),
                                      (dict(sigma=0.0), "sigma"), (dict(elite_candidates=100), "elite_candidates")])
def test_bad_arguments_are_refused(kw, match):
  args = dict(population=8, parents=2, sigma=0.1) | kw
  with pytest.raises(ValueError, match=match):
    ue.deep_ga(linear_system(4), **args)


def test_step_refuses_a_theta_of_another_structure():
  ga = ue.deep_ga(linear_system(4), population=4, parents=2, sigma=0.1, elite_candidates=2)
  state = ga.init(jax.random.PRNGKey(0), THETA)
  with pytest.raises(ValueError, match="theta must have the structure"):
    ga.step(jax.random.PRNGKey(1), {"other": jnp.zeros(3)}, state)


def test_the_population_methods_share_one_interface_and_helpers():
  """Deep GA, SNES and integer ES are PopulationMethods; as_estimator's move, applied by SGD at rate 1, is the step."""
  from unrolled_es.population import base
  system = linear_system(4)
  for method in (ue.deep_ga(system, population=4, parents=2, sigma=0.1, elite_candidates=2),
                 ue.snes(system, population=4, sigma=0.1)):
    assert isinstance(method, ue.PopulationMethod)
    state = method.init(jax.random.PRNGKey(0), THETA)
    stepped, _, info = method.step(jax.random.PRNGKey(1), THETA, state)
    est = ue.as_estimator(method)
    move, _, _ = est.estimate(jax.random.PRNGKey(1), THETA, est.init(jax.random.PRNGKey(0), THETA))
    for t, m, s in zip(*(jax.tree_util.tree_leaves(x) for x in (THETA, move, stepped))):
      np.testing.assert_allclose(t - m, s, rtol=1e-6, atol=1e-7)
    assert int(info["inner_steps"]) > 0
  losses = jnp.array([3.0, 1.0, 2.0, 5.0])
  np.testing.assert_allclose(base.utilities(losses), [-1 / 6, 0.5, 1 / 6, -0.5], atol=1e-7)   # centred ranks
  z = base.utilities(losses, ranks=False)
  np.testing.assert_allclose(z, -(losses - 2.75) / np.std(np.asarray(losses)), rtol=1e-6)
  keys = jax.random.split(jax.random.PRNGKey(2), 3)
  expected = np.mean([float(ue.evaluate(system, THETA, k)) for k in keys])
  assert float(base.mean_episode_loss(system, THETA, keys)) == pytest.approx(expected, rel=1e-6)
  with pytest.raises(TypeError, match="method must be a PopulationMethod"):
    ue.as_estimator(ue.es_single(system, num_particles=2, sigma=0.1, truncation_length=1))
