"""A bfloat16 or float16 θ gets an unbiased estimate wherever a float32 θ does.

θ + σε formed in θ's dtype rounds a small σε away: at θ = 0.7 bfloat16 numbers are 2⁻⁸ ≈ 0.0039 apart, so
σ = 1e-3 loses most of the signal and σ = 1e-4 all of it. The engine forms it in float32 and rounds stochastically,
so the loss must see θ through an op that XLA cannot fuse into the perturbation (an optimization_barrier or a
matmul) for the test to mean anything.
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import assert_unbiased, run_windows

C = jnp.array([0.96, -0.5, 0.75, 1.5])
X = jnp.array([[1.0, 0.5, -0.25], [0.5, -1.0, 2.0]])


def through_barrier(theta):
  return jnp.sum(jax.lax.optimization_barrier(theta["w"]).astype(jnp.float32) * C)


def through_matmul(theta):
  # The parameter enters a matmul whose output stays float32: rounding activations is the model's own business.
  y = jnp.matmul(X.astype(theta["W"].dtype), theta["W"], preferred_element_type=jnp.float32)
  return jnp.sum(y * C[:2, None])


def system(loss):
  return ue.UnrolledSystem(lambda key, theta: jnp.zeros(()), lambda theta, s, key: (s + 1.0, loss(theta)), 6)


THETAS = {through_barrier: {"w": jnp.full((4,), 0.7)}, through_matmul: {"W": jnp.full((3, 2), 0.7)}}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("sigma", [1e-3, 1e-4])
@pytest.mark.parametrize("loss,estimator", [(through_barrier, "es_single"), (through_matmul, "es_single"),
                                            (through_barrier, "pes")])
def test_narrow_theta_is_unbiased_where_float32_is(dtype, sigma, loss, estimator):
  theta32 = THETAS[loss]
  exact = jax.grad(loss)(theta32)
  theta = jax.tree_util.tree_map(lambda x: x.astype(dtype), theta32)
  est = ue.make(estimator, system(loss), num_particles=512, sigma=sigma, truncation_length=2, stagger=False)
  with pytest.warns(UserWarning, match="sigma=.* is below the spacing") if sigma < jnp.finfo(dtype).eps else \
      _no_warning():
    grads, _ = run_windows(est, theta, 3, 256)
  assert all(g.dtype == dtype for g in jax.tree_util.tree_leaves(grads))
  # One window per run: ES-Single's windows within an episode share their draw, so they are not independent.
  # The third window is PES's sum of three draws.
  flat = jax.tree_util.tree_map(lambda g: g[:, -1].astype(jnp.float32), grads)
  assert_unbiased(flat, exact, what=f"{jnp.dtype(dtype).name} σ={sigma}")
  # The check has power: 4 standard errors are under half the gradient, so rounding to nearest (which gave
  # 0.45 of it at σ = 1e-3 and 0 at σ = 1e-4) would fail it.
  for g, e in zip(jax.tree_util.tree_leaves(flat), jax.tree_util.tree_leaves(exact)):
    se = np.asarray(g, np.float64).std(0, ddof=1) / np.sqrt(g.shape[0])
    assert np.all(4 * se < 0.5 * np.abs(np.asarray(e))), (se, e)


class _no_warning:
  """Fails the test if anything inside warns about the resolution: the check must be silent when σ is at or above
  the spacing."""
  def __enter__(self):
    self._catcher = warnings.catch_warnings(record=True)
    self._caught = self._catcher.__enter__()
    warnings.simplefilter("always")
    return self

  def __exit__(self, *exc):
    self._catcher.__exit__(*exc)
    about_sigma = [w for w in self._caught if "is below the spacing" in str(w.message)]
    assert not about_sigma, [str(w.message) for w in about_sigma]
    return False


def test_float32_theta_and_draws_are_float32_and_the_pes_sum_too():
  theta = {"w": jnp.full((4,), 0.7, jnp.bfloat16)}
  est = ue.pes(system(through_barrier), num_particles=4, sigma=0.01, truncation_length=2)
  state = est.init(jax.random.PRNGKey(0), theta)
  assert state.memory["w"].dtype == jnp.float32
  assert ue.gaussian().sample(jax.random.PRNGKey(0), theta)["w"].dtype == jnp.float32


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
  from unrolled_es.noise.precision import stochastic_round
  x = jnp.full((200_000,), 0.7 + 1e-4, jnp.float32)
  bits = jax.random.bits(jax.random.PRNGKey(0), x.shape, jnp.uint32)
  for dtype in (jnp.bfloat16, jnp.float16):
    y = stochastic_round(x, dtype, bits)
    assert y.dtype == dtype
    values = np.unique(np.asarray(y, np.float32))
    assert len(values) == 2 and values[0] < 0.7 + 1e-4 < values[1]
    gap = values[1] - values[0]
    se = gap / 2 / np.sqrt(x.size)
    assert abs(float(np.asarray(y, np.float64).mean()) - (0.7 + 1e-4)) < 4 * se
