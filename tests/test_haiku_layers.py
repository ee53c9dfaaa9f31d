"""haiku_apply: hk.Linear / hk.nets.MLP / hk.LSTM apply factored perturbations (low rank, and dense Gaussian)
exactly as the formed θ + σ·eps would, under vmap over particles, without forming a matrix per particle."""
import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue

N, SIGMA, RANK = 6, 0.3, 2
NOISES = {"low_rank": lambda factored: ue.low_rank(RANK, factored=factored), "gaussian": ue.gaussian}


def mlp():
  return hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([7, 5, 3], activation=jnp.tanh)(x)))


def lstm():
  def f(x, state):
    out, state = hk.LSTM(6)(x, state)
    return hk.Linear(3)(out), state
  return hk.without_apply_rng(hk.transform(f))


def lstm_state(batch=()):
  return hk.LSTMState(hidden=jnp.full(batch + (6,), 0.1), cell=jnp.full(batch + (6,), -0.2))


@functools.partial(jax.jit, static_argnums=(1, 2))
def perturbed(params, factored, kind="low_rank"):
  """N particles' perturbed params: PerturbedMatrix leaves (factored) or the formed θ + σ·eps."""
  noise = NOISES[kind](factored)
  eps = jax.vmap(noise.sample, (0, None))(jax.random.split(jax.random.PRNGKey(1), N), params)
  return jax.vmap(lambda e: noise.perturb(params, e, SIGMA))(eps)


def close(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kind", NOISES)
@pytest.mark.parametrize("shared_input", [True, False])
def test_mlp_factored_equals_dense_under_vmap(shared_input, kind):
  model, x = mlp(), jax.random.normal(jax.random.PRNGKey(2), (4, 5))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  xs = x if shared_input else x + jnp.arange(N, dtype=x.dtype)[:, None, None]
  axes = None if shared_input else 0
  factored = jax.jit(jax.vmap(ue.haiku_apply(model.apply), (0, axes)))(perturbed(params, True, kind), xs)
  dense = jax.jit(jax.vmap(model.apply, (0, axes)))(perturbed(params, False, kind), xs)
  close(factored, dense)
  plain = model.apply(params, xs)
  assert np.abs(np.asarray(factored - plain)).min() > 1e-5   # the perturbation really was applied


@pytest.mark.parametrize("kind", NOISES)
def test_lstm_factored_equals_dense_under_vmap(kind):
  model, x = lstm(), jax.random.normal(jax.random.PRNGKey(3), (2, 4))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x, lstm_state((2,)))
  assert isinstance(perturbed(params, True, kind)["lstm/linear"]["w"], ue.PerturbedMatrix)
  run = lambda apply: jax.vmap(apply, (0, None, None))
  factored = jax.jit(run(ue.haiku_apply(model.apply)))(perturbed(params, True, kind), x, lstm_state((2,)))
  dense = jax.jit(run(model.apply))(perturbed(params, False, kind), x, lstm_state((2,)))
  close(factored, dense)


@pytest.mark.parametrize("kind", NOISES)
def test_no_per_particle_matrix_is_formed(kind):
  """With shared weights of width 32, the factored program computes nothing of shape [N, 32, 32] (a dense
  Gaussian draw is such an input, but W + σ·eps is never formed from it)."""
  model = hk.without_apply_rng(hk.transform(lambda x: hk.Linear(32)(x)))
  x = jnp.ones((4, 32))
  params = model.init(jax.random.PRNGKey(0), x)
  jaxpr = jax.make_jaxpr(jax.vmap(ue.haiku_apply(model.apply), (0, None)))(perturbed(params, True, kind), x)
  shapes = {tuple(v.aval.shape) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars}
  assert (N, 32, 32) not in shapes and (N, 4, 32) in shapes


def test_plain_params_pass_through_unchanged():
  model, x = mlp(), jnp.ones((2, 5))
  params = model.init(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(ue.haiku_apply(model.apply)(params, x), model.apply(params, x))


def test_unconsumed_factors_raise():
  def f(x):
    w = hk.get_parameter("w", (x.shape[-1], 3), init=hk.initializers.Constant(0.1))
    return x @ w
  model, x = hk.without_apply_rng(hk.transform(f)), jnp.ones((2, 4))
  params = model.init(jax.random.PRNGKey(0), x)
  pm = ue.low_rank(1, factored=True).perturb(params, ue.low_rank(1).sample(jax.random.PRNGKey(1), params), 0.1)
  with pytest.raises(ValueError, match="not consumed by an hk.Linear"):
    ue.haiku_apply(model.apply)(pm, x)
  with pytest.raises(ValueError, match="apply_fn"):
    ue.haiku_apply(None)


def lstm_system(model, apply, horizon=5):
  """An LSTM reading a fixed input sequence; loss: squared error of its readout against a target."""
  xs = jnp.sin(jnp.arange(horizon * 4.0)).reshape(horizon, 4)

  def init(key, theta):
    return (lstm_state(), jnp.int32(0))

  def step(theta, state, key):
    s, t = state
    y, s = apply(theta, xs[t % horizon], s)
    return (s, t + 1), 0.5 * jnp.sum((y - 0.5) ** 2)
  return ue.UnrolledSystem(init, step, horizon)


def test_es_estimate_through_haiku_step_matches_dense_low_rank():
  model = lstm()
  theta = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.ones(4), lstm_state())
  key, out = jax.random.PRNGKey(5), {}
  for factored in (False, True):
    apply = ue.haiku_apply(model.apply) if factored else model.apply
    est = ue.es_single(lstm_system(model, apply), num_particles=8, sigma=0.05, truncation_length=3,
                       stagger=False, noise=ue.low_rank(RANK, factored=factored))
    state, estimate = jax.jit(est.init)(key, theta), jax.jit(est.estimate)
    for i in range(3):   # K = 3, T = 5: resets fall inside windows
      g, state, info = estimate(jax.random.fold_in(key, i), theta, state)
    out[factored] = (g, info["loss"])
  close(out[True], out[False])
  assert np.abs(np.asarray(out[True][0]["lstm/linear"]["w"])).max() > 0
