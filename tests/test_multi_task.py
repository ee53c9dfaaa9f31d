"""ue.multi_task: several estimators that share θ behave as one, with the weighted mean as its gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import MATRIX_THETA, THETA, linear_system, matrix_system

KEY = jax.random.PRNGKey(0)


def members():
  short, long = linear_system(6), linear_system(9)
  return [ue.es_single(short, num_particles=4, sigma=0.1, truncation_length=3),
          ue.pes(long, num_particles=6, sigma=0.05, truncation_length=3),
          ue.truncated_bptt(long, num_particles=2, truncation_length=3)]


def test_gradient_is_the_weighted_mean_of_the_members_to_rounding():
  ests, weights = members(), [1.0, 2.0, 5.0]
  combined = ue.multi_task(ests, weights=weights)
  state = combined.init(KEY, THETA)
  key = jax.random.PRNGKey(7)
  grad, new_state, info = jax.jit(combined.estimate)(key, THETA, state)
  keys = jax.random.split(key, 3)
  alone = [jax.jit(e.estimate)(k, THETA, s) for e, k, s in zip(ests, keys, state)]
  w = np.asarray(weights) / np.sum(weights)
  grads = [a[0] for a in alone]
  expected = jax.tree_util.tree_map(lambda *gs: sum(float(wj) * g for wj, g in zip(w, gs)), *grads)
  magnitude = jax.tree_util.tree_map(lambda *gs: sum(abs(float(wj) * g) for wj, g in zip(w, gs)), *grads)
  # To rounding, not bit for bit: inside the estimate XLA may fuse w·g + acc into one multiply-add (its classic CPU
  # emitters do), which the sum here does not. A few float32 ulps of the terms' size; a wrong weight is off by far
  # more.
  for got, want, size in zip(*map(jax.tree_util.tree_leaves, (grad, expected, magnitude))):
    np.testing.assert_array_less(np.abs(np.asarray(got) - np.asarray(want)), 4 * np.finfo(np.float32).eps * size)
  for member_state, (_, want_state, _) in zip(new_state, alone):
    for a, b in zip(jax.tree_util.tree_leaves(member_state), jax.tree_util.tree_leaves(want_state)):
      np.testing.assert_allclose(a, b, rtol=1e-6)   # one program or three: the same steps, rounded alike or nearly
  assert int(info["inner_steps"]) == sum(int(a[2]["inner_steps"]) for a in alone)
  assert float(info["loss"]) == pytest.approx(sum(wj * float(a[2]["loss"]) for wj, a in zip(w, alone)), rel=1e-6)
  assert float(info["task1/loss"]) == float(alone[1][2]["loss"])


def test_members_may_have_different_shapes_and_theta_keeps_its_dtypes():
  theta = {"W": MATRIX_THETA["W"], "b": MATRIX_THETA["b"].astype(jnp.bfloat16)}
  ests = [ue.es_single(matrix_system(h), num_particles=2, sigma=0.1, truncation_length=2) for h in (4, 6)]
  combined = ue.multi_task(ests)
  grad, _, _ = jax.jit(combined.estimate)(KEY, theta, combined.init(KEY, theta))
  assert grad["b"].dtype == jnp.bfloat16 and grad["W"].shape == (4, 3)


@pytest.mark.parametrize("bad,match", [([], "estimators"), (["x"], "estimators")])
def test_bad_members_are_refused(bad, match):
  with pytest.raises(ValueError, match=match):
    ue.multi_task(bad)


@pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]])
def test_bad_weights_are_refused_with_the_argument_named(weights):
  ests = members()[:2]
  with pytest.raises(ValueError, match="weights must be 2 finite numbers"):
    ue.multi_task(ests, weights=weights)
