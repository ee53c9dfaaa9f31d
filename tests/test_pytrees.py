"""Any pytree of float arrays works as theta: the gradient keeps its structure, shapes and dtypes."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

import unrolled_es as ue

shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16])
leaves = st.tuples(shapes, dtypes).map(lambda sd: jnp.full(sd[0], 0.5, sd[1]))
thetas = st.recursive(leaves, lambda children: st.one_of(
    st.dictionaries(st.sampled_from("abcd"), children, min_size=1, max_size=3),
    st.lists(children, min_size=1, max_size=3),
    st.lists(children, min_size=1, max_size=2).map(tuple)), max_leaves=5)


def tree_system(horizon):
  """s ← ½ s + θ leafwise; the loss sums every leaf, so every leaf has a nonzero gradient."""
  def init(key, theta):
    return jax.tree_util.tree_map(jnp.zeros_like, theta)

  def step(theta, s, key):
    s = jax.tree_util.tree_map(lambda a, b: 0.5 * a + b, s, theta)
    loss = sum(jnp.sum((x.astype(jnp.float32) - 1.0) ** 2) for x in jax.tree_util.tree_leaves(s))
    return s, loss
  return ue.UnrolledSystem(init, step, horizon)


@settings(max_examples=6, deadline=None)
@given(theta=thetas, estimator=st.sampled_from(["pes", "es_single", "truncated_bptt"]))
def test_gradient_has_theta_structure_shapes_and_dtypes(theta, estimator):
  system = tree_system(6)
  if estimator == "truncated_bptt":
    est = ue.truncated_bptt(system, num_particles=2, truncation_length=2)
  else:
    est = getattr(ue, estimator)(system, num_particles=4, sigma=0.05, truncation_length=2)
  key = jax.random.PRNGKey(0)
  grad, _, info = jax.jit(est.estimate)(key, theta, est.init(key, theta))
  assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(theta)
  for g, x in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(theta)):
    assert g.shape == x.shape and g.dtype == x.dtype
    assert np.all(np.isfinite(np.asarray(g, np.float32)))
  assert int(info["num_nonfinite"]) == 0
