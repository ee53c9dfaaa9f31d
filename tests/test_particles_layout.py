"""The particles' state layout: kept draws packed one array per dtype, counters and key in one `clock` array, both
exact round trips, and a state whose array count does not grow with θ's leaves (each array an estimate call
returns costs the call time: benchmarks/profile_window.py)."""
import jax
import jax.numpy as jnp
import numpy as np

import unrolled_es as ue
from unrolled_es.core import particles
from unrolled_es.core.system import UnrolledSystem


def test_pack_then_unpack_gives_back_every_leaf_exactly():
  rng = np.random.default_rng(0)
  n = 5
  tree = {"a": jnp.asarray(rng.standard_normal((n, 3, 4, 2)), jnp.float32),
          "b": (jnp.asarray(rng.standard_normal((n,)), jnp.bfloat16), jnp.asarray(rng.integers(-9, 9, (n, 7)))),
          "c": jnp.asarray(rng.standard_normal((n, 6)), jnp.float32)}
  packed = particles.pack(tree)
  assert [x.shape for x in packed] == [(n, 24 + 6), (n, 1), (n, 7)]   # one array per dtype, first-seen order
  one = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)
  back = particles.unpack(packed, one)
  for got, want in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(tree)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_the_clock_keeps_counters_and_key_words_exactly():
  t = jnp.array([0, 7, 2 ** 31 - 1], jnp.int32)
  horizon = jnp.array([1, 100, 5], jnp.int32)
  since = jnp.array([3, 1, 0], jnp.int32)
  key = jnp.array([[0, 1], [2 ** 32 - 1, 2 ** 31], [12345, 678]], jnp.uint32)
  p = particles.Particles(inner=None, clock=particles.make_clock(t, horizon, since, key), memory=None,
                          init_steps=jnp.int32(0))
  for got, want in ((p.t, t), (p.horizon, horizon), (p.windows_since_draw, since), (p.noise_key, key)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _state_arrays(num_matrices):
  """Arrays in a factored rank-1 ES-Single state for a θ of `num_matrices` 3×3 matrices."""
  theta = {f"w{i}": jnp.eye(3) * 0.1 for i in range(num_matrices)}

  def step(th, s, key):
    for w in th.values():
      s = jnp.tanh(ue.linear(s, w))
    return s, jnp.sum(s ** 2)
  system = UnrolledSystem(lambda key, th: jnp.ones((3,)), step, 8)
  est = ue.es_single(system, num_particles=4, sigma=0.1, truncation_length=4, noise=ue.low_rank(1, factored=True))
  state = est.init(jax.random.PRNGKey(0), theta)
  assert state.draws is not None   # low-rank draws are kept in the state
  return len(jax.tree_util.tree_leaves(state))


def test_a_states_array_count_does_not_grow_with_the_leaves_of_theta():
  assert _state_arrays(1) == _state_arrays(6)
