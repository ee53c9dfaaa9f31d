"""With one window per episode (K = T) and particles not staggered, the online estimators have nothing to carry
between windows, so ES-Single, PES and truncated ES are full-episode antithetic ES: from the same keys they give
the same estimates, bit for bit. The MuJoCo linear-policy benchmark runs at K = T, so one estimator's runs there
stand for all four; the estimators differ only at K < T (the second test shows that they then do)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import THETA, linear_system

ONLINE = ("es_single", "pes", "truncated_es")


def _estimates(name, system, theta, num, **options):
  if name != "full_es":
    options = dict(options, stagger=False)
  else:
    options.pop("truncation_length")
  est = ue.make(name, system, **options)
  state = est.init(jax.random.PRNGKey(1), theta)
  out = []
  for i in range(num):
    grad, state, _ = est.estimate(jax.random.fold_in(jax.random.PRNGKey(2), i), theta, state)
    out.append(grad)
  return out


def _assert_same(a, b):
  for x, y in zip(a, b):
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), x, y)


@pytest.mark.parametrize("fitness", [None, "top_directions:3"])
def test_online_estimators_are_full_es_when_one_window_is_the_episode(fitness):
  system = linear_system(12)
  options = dict(num_particles=8, sigma=0.05, truncation_length=12)
  if fitness:
    options["fitness"] = ue.fitness.named(fitness)
  reference = _estimates("full_es", system, THETA, 3, **options)
  assert float(jnp.abs(reference[0]["w"]).sum()) > 0
  for name in ONLINE:
    _assert_same(_estimates(name, system, THETA, 3, **options), reference)


def test_below_one_window_per_episode_pes_and_truncated_es_differ():
  system = linear_system(12)
  options = dict(num_particles=8, sigma=0.05, truncation_length=4)
  pes = _estimates("pes", system, THETA, 3, **options)
  tes = _estimates("truncated_es", system, THETA, 3, **options)
  assert not np.array_equal(np.asarray(pes[1]["w"]), np.asarray(tes[1]["w"]))


def test_with_terminations_and_resets_the_online_estimators_still_coincide():
  pytest.importorskip("gymnax")
  import unrolled_es_tasks as tasks
  task = tasks.get("control", env="CartPole-v1", horizon=30)
  options = dict(num_particles=8, sigma=0.5, truncation_length=30)
  theta = jax.tree_util.tree_map(lambda x: x + 0.3, task.theta0)
  reference = _estimates("es_single", task.system, theta, 2, **options)
  for name in ("pes", "truncated_es"):
    _assert_same(_estimates(name, task.system, theta, 2, **options), reference)
