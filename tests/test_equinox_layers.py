"""equinox_model: eqx.nn.Linear / MLP / GRUCell / LSTMCell / Embedding apply factored perturbations (low rank, and
dense Gaussian) exactly as the formed θ + σ·eps would, under vmap over particles, without forming a matrix per
particle; other weights (a convolution) are formed densely; an unchanged equinox model trains with factored rank-1
ES-Single."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

eqx = pytest.importorskip("equinox")

import unrolled_es as ue  # noqa: E402
from systems import regression_loss_after_es  # noqa: E402

N, SIGMA, RANK = 4, 0.3, 2
NOISES = {"low_rank": lambda factored: ue.low_rank(RANK, factored=factored), "gaussian": ue.gaussian}


class Recurrent(eqx.Module):
  """An embedding, a GRU or LSTM cell over a token sequence, attention over its states, an MLP readout, a conv."""
  embed: eqx.nn.Embedding
  cell: eqx.Module
  attention: eqx.nn.MultiheadAttention
  readout: eqx.nn.MLP
  conv: eqx.nn.Conv1d

  def __init__(self, cell, key):
    k = jax.random.split(key, 5)
    self.embed = eqx.nn.Embedding(11, 6, key=k[0])
    self.cell = (eqx.nn.GRUCell if cell == "gru" else eqx.nn.LSTMCell)(6, 5, key=k[1])
    self.attention = eqx.nn.MultiheadAttention(2, 5, key=k[2])
    self.readout = eqx.nn.MLP(5, 3, 8, 1, key=k[3])
    self.conv = eqx.nn.Conv1d(5, 5, 2, key=k[4])

  def __call__(self, tokens):
    lstm = isinstance(self.cell, eqx.nn.LSTMCell)
    def scan(h, token):
      h = self.cell(self.embed(token), h)
      return h, h[0] if lstm else h
    h0 = (jnp.zeros(5), jnp.zeros(5)) if lstm else jnp.zeros(5)
    _, hs = jax.lax.scan(scan, h0, tokens)
    hs = self.attention(hs, hs, hs)
    hs = hs[1:] + self.conv(hs.T).T
    return jax.vmap(self.readout)(hs)


TOKENS = jnp.array([1, 4, 2, 9, 3])


def split(model):
  return eqx.partition(model, eqx.is_inexact_array)


def run_particles(model, factored, kind):
  """Each particle's output, W shared and each particle's draw applied inside the vmap (as the engine does)."""
  params, static = split(model)
  noise = NOISES[kind](factored)
  eps = jax.vmap(NOISES[kind](False).sample, (0, None))(jax.random.split(jax.random.PRNGKey(1), N), params)
  one = lambda e: ue.equinox_model(noise.perturb(params, e, SIGMA), static)(TOKENS)
  return jax.jit(jax.vmap(one))(eps)


@pytest.mark.parametrize("cell, kind", [("lstm", "low_rank"), ("gru", "gaussian")])
def test_factored_equals_dense_under_vmap(cell, kind):
  model = Recurrent(cell, jax.random.PRNGKey(0))
  factored, dense = run_particles(model, True, kind), run_particles(model, False, kind)
  np.testing.assert_allclose(factored, dense, rtol=2e-5, atol=2e-5)
  assert np.abs(np.asarray(factored - model(TOKENS))).min() > 1e-6   # the perturbation really was applied


def test_known_layers_get_factored_weights_and_others_dense_ones():
  model = Recurrent("lstm", jax.random.PRNGKey(0))
  params, static = split(model)
  pm = ue.low_rank(1, factored=True).perturb(params, ue.low_rank(1).sample(jax.random.PRNGKey(1), params), SIGMA)
  m = ue.equinox_model(pm, static)
  assert type(m.embed.weight).__name__ == "FactoredWeight"
  assert type(m.cell.weight_ih).__name__ == type(m.cell.weight_hh).__name__ == "FactoredWeight"
  assert type(m.attention.query_proj.weight).__name__ == "FactoredWeight"
  assert type(m.readout.layers[0].weight).__name__ == "FactoredWeight"
  assert isinstance(m.conv.weight, jax.Array)   # a (5, 5, 2) kernel: formed as W + σ·eps
  assert isinstance(ue.equinox_model(params, static).cell.weight_ih, jax.Array)   # plain params pass through


@pytest.mark.parametrize("factored", [True, False])
def test_no_per_particle_matrix_is_formed(factored):
  """An MLP of width 32: the factored program computes nothing of shape [N, 32, 32]; the formed one does."""
  model = eqx.nn.MLP(32, 32, 32, 1, key=jax.random.PRNGKey(0))
  params, static = split(model)
  noise, x = ue.low_rank(1, factored=factored), jnp.ones((4, 32))
  eps = jax.vmap(ue.low_rank(1).sample, (0, None))(jax.random.split(jax.random.PRNGKey(1), N), params)
  one = lambda e: jax.vmap(ue.equinox_model(noise.perturb(params, e, SIGMA), static))(x)
  jaxpr = jax.make_jaxpr(jax.vmap(one))(eps)
  shapes = {tuple(v.aval.shape) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars}
  assert ((N, 32, 32) not in shapes) == factored and (N, 4, 32) in shapes


def sequence_system(static, horizon=5):
  """Inner step t: the model reads tokens t..t+4 and is scored on its first output (squared error to 0.5)."""
  seq = jnp.arange(horizon + 5) % 11

  def step(theta, t, key):
    model = ue.equinox_model(theta, static)
    y = model(jax.lax.dynamic_slice(seq, (t % horizon,), (5,)))
    return t + 1, jnp.sum((y[0] - 0.5) ** 2)
  return ue.UnrolledSystem(lambda key, theta: jnp.int32(0), step, horizon)


def test_es_estimate_through_an_equinox_step_matches_the_dense_one():
  params, static = split(Recurrent("gru", jax.random.PRNGKey(0)))
  key, out = jax.random.PRNGKey(5), {}
  for factored in (False, True):
    est = ue.es_single(sequence_system(static), num_particles=4, sigma=0.05, truncation_length=3, stagger=False,
                       noise=ue.low_rank(1, factored=factored))
    state, estimate = jax.jit(est.init)(key, params), jax.jit(est.estimate)
    for i in range(2):   # K = 3, T = 5: a reset falls inside the second window
      g, state, info = estimate(jax.random.fold_in(key, i), params, state)
    out[factored] = (g, info["loss"])
  for a, b in zip(jax.tree_util.tree_leaves(out[True]), jax.tree_util.tree_leaves(out[False])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(out[True][0].cell.weight_hh)).max() > 0


def test_an_unchanged_equinox_model_trains_with_factored_rank_one_es_single():
  """A plain eqx.nn.MLP regression model: 40 steps of rank-1 factored ES-Single with Adam halve its loss."""
  xs = jnp.linspace(-2, 2, 32)[:, None]
  ys = jnp.sin(xs)
  params, static = split(eqx.nn.MLP(1, 1, 16, 1, activation=jnp.tanh, key=jax.random.PRNGKey(0)))

  start, end = regression_loss_after_es(
      lambda theta: jnp.mean((jax.vmap(ue.equinox_model(theta, static))(xs) - ys) ** 2), params)
  assert end < 0.5 * start
