"""flax_apply: nn.Dense / nn.LSTMCell / nn.GRUCell / attention (nn.DenseGeneral) / nn.Conv / nn.Embed apply
factored perturbations (low rank, and dense Gaussian) exactly as the formed θ + σ·eps would, under vmap over
particles, without forming a matrix per particle; an unchanged flax model trains with factored rank-1 ES-Single."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

nn = pytest.importorskip("flax.linen")

import unrolled_es as ue  # noqa: E402
from systems import regression_loss_after_es  # noqa: E402

N, SIGMA, RANK = 4, 0.3, 2
NOISES = {"low_rank": lambda factored: ue.low_rank(RANK, factored=factored), "gaussian": ue.gaussian}


class Recurrent(nn.Module):
  """An embedding, an LSTM or GRU cell over a short sequence, attention over its outputs, a tied readout."""
  cell: str = "lstm"

  @nn.compact
  def __call__(self, tokens):
    embed = nn.Embed(11, 6)
    h = embed(tokens)
    cell = nn.LSTMCell(5) if self.cell == "lstm" else nn.GRUCell(5)
    h = nn.RNN(cell)(h)
    h = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4, out_features=6)(h)
    return embed.attend(jnp.tanh(nn.Dense(6)(h)))


class ConvNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.tanh(nn.Conv(4, (3, 3), padding="SAME")(x))
    return nn.Dense(3)(h.reshape(h.shape[:-3] + (-1,)))


MODELS = {"lstm": (Recurrent("lstm"), jnp.array([[1, 4, 2], [3, 0, 10]])),
          "gru": (Recurrent("gru"), jnp.array([[5, 6, 7]])),
          "conv": (ConvNet(), jax.random.normal(jax.random.PRNGKey(4), (2, 5, 5, 2)))}


@functools.partial(jax.jit, static_argnums=(1, 2))
def particle_draws(params, factored, kind):
  noise = NOISES[kind](factored)
  return jax.vmap(noise.sample, (0, None))(jax.random.split(jax.random.PRNGKey(1), N), params)


def run_particles(model, params, x, factored, kind):
  """Each particle's output, W shared and each particle's draw applied inside the vmap (as the engine does)."""
  noise, apply = NOISES[kind](factored), ue.flax_apply(model.apply)
  one = lambda e: apply({"params": noise.perturb(params, e, SIGMA)}, x)
  return jax.jit(jax.vmap(one))(particle_draws(params, factored, kind))


@pytest.mark.parametrize("name, kind", [("lstm", "low_rank"), ("gru", "gaussian"), ("conv", "low_rank"),
                                        ("conv", "gaussian")])
def test_factored_equals_dense_under_vmap(name, kind):
  model, x = MODELS[name]
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
  factored = run_particles(model, params, x, True, kind)
  dense = run_particles(model, params, x, False, kind)
  np.testing.assert_allclose(factored, dense, rtol=2e-5, atol=2e-5)
  plain = model.apply({"params": params}, x)
  assert np.abs(np.asarray(factored - plain)).min() > 1e-6   # the perturbation really was applied


def test_every_kernel_of_the_recurrent_model_arrives_factored():
  model, x = MODELS["lstm"]
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  e = ue.low_rank(1).sample(jax.random.PRNGKey(1), params)
  perturbed = ue.low_rank(1, factored=True).perturb(params, e, SIGMA)
  is_pm = lambda p: isinstance(p, ue.PerturbedMatrix)
  factored = [p for p in jax.tree_util.tree_leaves(perturbed, is_leaf=is_pm) if is_pm(p)]
  # the embedding, 8 LSTM kernels, q/k/v/out kernels (rank 3), the Dense; and q/k/v's (heads, head_dim) biases
  assert len(factored) == 1 + 8 + 4 + 1 + 3


@pytest.mark.parametrize("factored", [True, False])
def test_no_per_particle_matrix_is_formed(factored):
  """With shared 32×32 weights (a Dense, and attention's 32×(2·16) projections), the factored program computes
  nothing of a weight's shape per particle; the formed one does (so the check can fail)."""
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.SelfAttention(num_heads=2, qkv_features=32, out_features=32)(nn.Dense(32)(x))
  model, x = Model(), jnp.ones((4, 32))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  noise, apply = ue.low_rank(1, factored=factored), ue.flax_apply(model.apply)
  eps = jax.vmap(ue.low_rank(1).sample, (0, None))(jax.random.split(jax.random.PRNGKey(1), N), params)
  jaxpr = jax.make_jaxpr(jax.vmap(lambda e: apply({"params": noise.perturb(params, e, SIGMA)}, x)))(eps)
  shapes = {tuple(v.aval.shape) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars}
  per_particle = {(N, 32, 32), (N, 32, 2, 16), (N, 2, 16, 32)} & shapes
  assert (not per_particle) == factored and (N, 4, 32) in shapes


def test_plain_params_pass_through_and_unconsumed_factors_raise():
  class Handmade(nn.Module):
    @nn.compact
    def __call__(self, x):
      return x @ self.param("w", nn.initializers.ones, (x.shape[-1], 3))
  x = jnp.ones((2, 4))
  model = Handmade()
  params = model.init(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(ue.flax_apply(model.apply)(params, x), model.apply(params, x))
  pm = ue.low_rank(1, factored=True).perturb(params, ue.low_rank(1).sample(jax.random.PRNGKey(1), params), 0.1)
  with pytest.raises(ValueError, match="params/w were not consumed"):
    ue.flax_apply(model.apply)(pm, x)
  with pytest.raises(ValueError, match="apply_fn"):
    ue.flax_apply(None)


def sequence_system(model, apply, tokens, horizon=6):
  """Inner step t: the model reads a window of `tokens` ending at t and predicts the next token (cross-entropy)."""
  def init(key, theta):
    return jnp.int32(0)

  def step(theta, t, key):
    window = jax.lax.dynamic_slice(tokens, (t % horizon,), (3,))
    logits = apply({"params": theta}, window[None])[0, -1]
    target = tokens[t % horizon + 3]
    return t + 1, -jax.nn.log_softmax(logits)[target]
  return ue.UnrolledSystem(init, step, horizon)


TOKENS = jnp.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])


def test_es_estimate_through_a_flax_step_matches_the_dense_one():
  model = Recurrent("lstm")
  theta = model.init(jax.random.PRNGKey(0), TOKENS[None, :3])["params"]
  key, out = jax.random.PRNGKey(5), {}
  for factored in (False, True):
    apply = ue.flax_apply(model.apply) if factored else model.apply
    est = ue.es_single(sequence_system(model, apply, TOKENS, horizon=5), num_particles=4, sigma=0.05,
                       truncation_length=3, stagger=False, noise=ue.low_rank(1, factored=factored))
    state, estimate = jax.jit(est.init)(key, theta), jax.jit(est.estimate)
    for i in range(2):   # K = 3, T = 5: a reset falls inside the second window
      g, state, info = estimate(jax.random.fold_in(key, i), theta, state)
    out[factored] = (g, info["loss"])
  for a, b in zip(jax.tree_util.tree_leaves(out[True]), jax.tree_util.tree_leaves(out[False])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(out[True][0]["MultiHeadDotProductAttention_0"]["query"]["kernel"])).max() > 0


def test_an_unchanged_flax_model_trains_with_factored_rank_one_es_single():
  """A plain flax MLP regression model: 40 steps of rank-1 factored ES-Single with Adam halve its loss."""
  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(1)(nn.tanh(nn.Dense(16)(x)))
  model = MLP()
  xs = jnp.linspace(-2, 2, 32)[:, None]
  ys = jnp.sin(xs)
  apply = ue.flax_apply(model.apply)
  start, end = regression_loss_after_es(lambda theta: jnp.mean((apply({"params": theta}, xs) - ys) ** 2),
                                        model.init(jax.random.PRNGKey(0), xs)["params"])
  assert end < 0.5 * start
