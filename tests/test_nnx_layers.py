"""nnx_model: flax NNX models (nnx.Linear, nnx.LSTMCell, nnx.MultiHeadAttention's nnx.LinearGeneral) apply factored
perturbations exactly as the formed θ + σ·eps would, under vmap over particles, without forming a matrix per
particle; other perturbed matrices (nnx.Embed, attention's 2-D biases) are formed densely."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

nnx = pytest.importorskip("flax.nnx")

import unrolled_es as ue  # noqa: E402

N, SIGMA = 4, 0.3
NOISES = {"low_rank": lambda factored: ue.low_rank(2, factored=factored), "gaussian": ue.gaussian}


class Model(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(11, 6, rngs=rngs)
    self.cell = nnx.LSTMCell(6, 6, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads=2, in_features=6, qkv_features=4, decode=False, rngs=rngs)
    self.readout = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    carry = (jnp.zeros(6), jnp.zeros(6))
    hs = []
    for t in range(x.shape[0]):
      carry, h = self.cell(carry, x[t])
      hs.append(h)
    return self.readout(self.attention(jnp.stack(hs)))


TOKENS = jnp.array([1, 4, 2, 9])


def run_particles(graphdef, theta, factored, kind):
  noise = NOISES[kind](factored)
  eps = jax.vmap(NOISES[kind](False).sample, (0, None))(jax.random.split(jax.random.PRNGKey(1), N), theta)
  one = lambda e: ue.nnx_model(graphdef, noise.perturb(theta, e, SIGMA))(TOKENS)
  return jax.jit(jax.vmap(one))(eps)


@pytest.mark.parametrize("kind", NOISES)
def test_factored_equals_dense_under_vmap(kind):
  model = Model(nnx.Rngs(0))
  graphdef, theta = nnx.split(model)
  factored, dense = run_particles(graphdef, theta, True, kind), run_particles(graphdef, theta, False, kind)
  np.testing.assert_allclose(factored, dense, rtol=2e-5, atol=2e-5)
  assert np.abs(np.asarray(factored - model(TOKENS))).min() > 1e-6   # the perturbation really was applied


@pytest.mark.parametrize("factored", [True, False])
def test_no_per_particle_matrix_is_formed(factored):
  """An nnx.Linear and attention of width 32 (its projections 32×(2·16)): the factored program computes nothing of
  a weight's shape per particle; the formed one does."""
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(32, 32, rngs=rngs)
      self.b = nnx.MultiHeadAttention(num_heads=2, in_features=32, decode=False, rngs=rngs)

    def __call__(self, x):
      return self.b(jnp.tanh(self.a(x)))
  graphdef, theta = nnx.split(MLP(nnx.Rngs(0)))
  noise, x = ue.low_rank(1, factored=factored), jnp.ones((4, 32))
  eps = jax.vmap(ue.low_rank(1).sample, (0, None))(jax.random.split(jax.random.PRNGKey(1), N), theta)
  jaxpr = jax.make_jaxpr(jax.vmap(lambda e: ue.nnx_model(graphdef, noise.perturb(theta, e, SIGMA))(x)))(eps)
  shapes = {tuple(v.aval.shape) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars}
  per_particle = {(N, 32, 32), (N, 32, 2, 16), (N, 2, 16, 32)} & shapes
  assert (not per_particle) == factored and (N, 4, 32) in shapes


def test_plain_state_passes_through():
  model = Model(nnx.Rngs(0))
  graphdef, theta = nnx.split(model)
  np.testing.assert_array_equal(ue.nnx_model(graphdef, theta)(TOKENS), model(TOKENS))


def test_linear_kernels_stay_shared_and_other_matrices_are_formed():
  graphdef, theta = nnx.split(Model(nnx.Rngs(0)))
  noise = ue.low_rank(1, factored=True)
  perturbed = noise.perturb(theta, noise.sample(jax.random.PRNGKey(1), theta), SIGMA)
  m = ue.nnx_model(graphdef, perturbed)
  for layer in (m.cell.ii, m.cell.hf, m.attention.query, m.attention.out, m.readout):   # W itself, applied in factors
    assert layer.dot_general.__qualname__.startswith("factored_dot_general")
  np.testing.assert_array_equal(m.attention.query.kernel[...], theta["attention"]["query"]["kernel"][...])
  embedding = m.embed.embedding[...]   # formed: W + σ·eps
  assert not np.allclose(embedding, theta["embed"]["embedding"][...])
  np.testing.assert_allclose(embedding, perturbed["embed"]["embedding"].value.dense(), rtol=1e-6)
