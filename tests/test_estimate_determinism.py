"""The same key and state give bit-identical estimates, however the estimate is compiled: jitted twice, and
jitted with the state donated (as the benchmarks and a training loop run it). Factored rank-1 ES-Single and PES
and factored Gaussian noise, staggered so that windows hold resets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from benchmarks.throughput import rnn_system

CASES = {"es_single_low_rank1_factored": (ue.es_single, lambda: ue.low_rank(1, factored=True)),
         "pes_low_rank1_factored": (ue.pes, lambda: ue.low_rank(1, factored=True)),
         "es_single_gaussian_factored": (ue.es_single, lambda: ue.gaussian(factored=True))}


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _assert_bit_identical(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8))   # bits: NaN too


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_key_and_state_give_bit_identical_estimates_plain_and_donated(case):
  ctor, noise = CASES[case]
  system, theta = rnn_system(width=8, rows=2, inputs=4, k=2, dtype="float32")
  est = ctor(system, num_particles=16, sigma=0.1, truncation_length=2, noise=noise(), stagger=True)
  state = jax.jit(est.init)(jax.random.PRNGKey(0), theta)
  plain, donated = jax.jit(est.estimate), jax.jit(est.estimate, donate_argnums=(2,))
  copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)
  for step in range(4):   # several windows: some particles reset in each (T = 20, K = 2, staggered)
    key = jax.random.PRNGKey(100 + step)
    first, second = plain(key, theta, state), plain(key, theta, state)
    _assert_bit_identical(first, second)
    _assert_bit_identical(first, donated(key, theta, copy(state)))
    assert int(first[2]["num_valid"]) == 16
    state = first[1]
  grad = first[0]
  assert all(np.any(g != 0) for g in _leaves(grad))   # a real estimate, not zeros that would match trivially
