"""The inner problems a pretrained learned optimizer meta-trains on (FAMILY) and is tested on (HELD_OUT).

A `Problem` names a model (`lopt_models`), a data source (`lopt_data`), the batch size and the sizes; each
episode draws from its key the source's per-episode data (a mixture, a teacher, a Markov chain, a small
training subset), the model's initialisation (scale log-uniform in [0.5, 2] times LeCun-normal) and the
minibatches, as the task families of Metz et al. ("Tasks, stability, architecture, and compute", 2020) do.
Problems of different shapes are separate systems, combined by `ue.multi_task`.

Meta-objective per step (`meta_system`): the loss of the parameters before the step on a minibatch of the
validation split (for infinite-data sources, a fresh minibatch), on the scale of `lopt_data` and clipped to
[0, 1.5] with NaN counted as 1.5: L(θ) = E_T[1/T Σ_t min(ℓ_valid,t, 1.5)]. On the small-data problems the
training loss falls while this one rises once the model overfits, which is what teaches the optimizer not to.
The lengths T come from a truncation schedule (`ue.horizons`), and half of the episodes reveal T to the
optimizer (time_features="any"), so one θ serves runs of known and unknown length.

HELD_OUT shares no (model size, data, batch) with FAMILY: other widths, depths, channels, sequence models on
the other sequence source, the held-out breast-cancer data, and a scan-stacked deep MLP.
"""
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from unrolled_es_tasks import lopt_data, lopt_models, lopt_network
from unrolled_es_tasks.models import cross_entropy
from unrolled_es.core.system import UnrolledSystem, episode_keys, step_key

LOSS_CLIP = 1.5
KINDS = ("mlp", "cnn", "rnn", "attention", "tabular", "regression")


class Problem(NamedTuple):
  """One inner problem's static description (hashable: it keys caches)."""
  name: str
  kind: str                 # one of KINDS (the suite's grouping)
  model: str                # mlp, cnn, gru, lstm, attention, stacked
  data: str                 # one of lopt_data.SOURCES
  sizes: tuple = (32,)      # hidden widths; channels for cnn; (embed, hidden) rnn; (dim,) attention; (width, depth)
  batch: int = 64
  activation: str = "gelu"
  n_small: int = 0          # training rows per episode for *_small sources
  seq_len: int = 16
  dim: int = 16             # input width (mixture, teacher) or vocabulary (markov)
  classes: int = 6          # mixture classes
  small_data: bool = False  # tuned AdamW joins the suite's baselines


class Inner(NamedTuple):
  init: Callable        # key -> (params, episode)
  loss: Callable        # (params, episode, key, split) -> loss on lopt_data's scale
  test_loss: Callable   # (params, episode) -> test loss on the same scale


def source(p: Problem) -> lopt_data.Source:
  if p.data in ("digits", "digits_small", "breast_cancer"):
    return lopt_data.stored_classification("breast_cancer" if p.data == "breast_cancer" else "digits", p.n_small)
  if p.data == "mixture":
    return lopt_data.mixture(p.dim, p.classes)
  if p.data in ("teacher", "teacher_small"):
    return lopt_data.teacher(p.dim, p.n_small)
  if p.data == "text":
    return lopt_data.text(p.seq_len)
  if p.data == "markov":
    return lopt_data.markov(p.dim, p.seq_len)
  raise ValueError(f"data must be one of {', '.join(lopt_data.SOURCES)}; got {p.data!r}")


def model(p: Problem, src: lopt_data.Source) -> lopt_models.Model:
  vocab = src.num_outputs
  d_in = {"digits": 64, "digits_small": 64, "breast_cancer": 30}.get(p.data, p.dim)
  if p.model == "mlp":
    return lopt_models.mlp(d_in, p.sizes, src.num_outputs, p.activation)
  if p.model == "stacked":
    return lopt_models.stacked_mlp(d_in, p.sizes[0], p.sizes[1], src.num_outputs, p.activation)
  if p.model == "cnn":
    return lopt_models.cnn(8, p.sizes, src.num_outputs, p.activation)
  if p.model in ("gru", "lstm"):
    return lopt_models.recurrent(vocab, p.sizes[0], p.sizes[1], p.model)
  if p.model == "attention":
    return lopt_models.attention(vocab, p.seq_len, p.sizes[0])
  raise ValueError(f"model must be one of mlp, stacked, cnn, gru, lstm, attention; got {p.model!r}")


def _scaled_loss(src, outputs, y):
  if src.loss == "mse":
    return jnp.mean(jnp.square(outputs - y))
  return jnp.mean(cross_entropy(outputs, y)) / math.log(src.num_outputs)


@functools.lru_cache(maxsize=64)
def inner(p: Problem) -> Inner:
  src = source(p)
  net = model(p, src)

  def init(key):
    k_scale, k_params, k_data = jax.random.split(key, 3)
    scale = jnp.exp(jax.random.uniform(k_scale, (), minval=math.log(0.5), maxval=math.log(2.0)))
    return net.init(k_params, scale), src.episode(k_data)

  def loss(params, episode, key, split):
    x, y = src.sample(episode, key, split, p.batch)
    return _scaled_loss(src, net.apply(params, x), y)

  def test_loss(params, episode):
    x, y = src.test(episode)
    return _scaled_loss(src, net.apply(params, x), y)

  return Inner(init, loss, test_loss)


def clip_meta_loss(loss):
  return jnp.where(jnp.isnan(loss), LOSS_CLIP, jnp.clip(loss, 0.0, LOSS_CLIP))


class EpisodeState(NamedTuple):
  params: object
  opt_state: object
  episode: object
  num_steps: jax.Array   # int32 length revealed to the optimizer (0: unknown)


def _learned(spec, theta, num_steps) -> optax.GradientTransformation:
  return optax.GradientTransformation(
      lopt_network.init_state, lambda g, s, p: lopt_network.update(spec, theta, s, p, g, num_steps))


def inner_step(p: Problem, optimizer, params, opt_state, episode, key):
  """One inner step: (params, opt_state, (validation loss, training loss)), both before the step."""
  k_train, k_valid = jax.random.split(key)
  fns = inner(p)
  loss, grads = jax.value_and_grad(fns.loss)(params, episode, k_train, "train")
  valid = fns.loss(params, episode, k_valid, "valid")
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, (valid, loss)


def meta_system(p: Problem, spec, horizons, reveal=0.5) -> UnrolledSystem:
  """The learned optimizer θ trains problem `p` for episodes of lengths drawn from `horizons`; a fraction
  `reveal` of the episodes tells the optimizer the length. Step loss: the clipped validation loss."""
  def init(key, theta):
    length = horizons.sample(key)                    # the engine's own draw for this episode (same key)
    k_reveal, k_episode = jax.random.split(jax.random.fold_in(key, 1))
    params, episode = inner(p).init(k_episode)
    known = jax.random.uniform(k_reveal) < reveal
    return EpisodeState(params, lopt_network.init_state(params), episode, jnp.where(known, length, 0))

  def step(theta, s, key):
    opt = _learned(spec, theta, s.num_steps)
    params, opt_state, (valid, _) = inner_step(p, opt, s.params, s.opt_state, s.episode, key)
    return EpisodeState(params, opt_state, s.episode, s.num_steps), clip_meta_loss(valid)

  return UnrolledSystem(init, step, horizons.high)


def run(p: Problem, optimizer, key, steps: int):
  """One inner training of `steps` steps from `key` (episode_keys / step_key, as ue.evaluate): per-step
  validation and training losses, and the final test loss (all unclipped, on lopt_data's scale)."""
  init_key, base = episode_keys(key)
  params, episode = inner(p).init(init_key)
  carry = (params, optimizer.init(params))

  def body(c, t):
    params, opt_state, losses = inner_step(p, optimizer, c[0], c[1], episode, step_key(base, t))
    return (params, opt_state), losses
  (params, _), (valid, train) = jax.lax.scan(body, carry, jnp.arange(steps))
  return {"valid": valid, "train": train, "test_loss": inner(p).test_loss(params, episode)}


FAMILY = (
    Problem("mlp digits 32-32 gelu", "mlp", "mlp", "digits", (32, 32), 64),
    Problem("mlp digits-small 16 relu", "tabular", "mlp", "digits_small", (16,), 32, "relu", n_small=64,
            small_data=True),
    Problem("mlp mixture 64 tanh", "mlp", "mlp", "mixture", (64,), 128, "tanh", dim=16, classes=6),
    Problem("mlp teacher 16-16-16 regression", "regression", "mlp", "teacher", (16, 16, 16), 32, "gelu", dim=8),
    Problem("mlp teacher-small 32 regression", "regression", "mlp", "teacher_small", (32,), 16, "tanh",
            n_small=32, dim=8, small_data=True),
    Problem("cnn digits 8-16", "cnn", "cnn", "digits", (8, 16), 32, "relu"),
    Problem("gru text 16-32", "rnn", "gru", "text", (16, 32), 16, seq_len=16),
    Problem("lstm markov 8-16", "rnn", "lstm", "markov", (8, 16), 32, seq_len=12, dim=8),
    Problem("attention text 16", "attention", "attention", "text", (16,), 16, seq_len=16),
)

HELD_OUT = (
    Problem("mlp digits 64-64 relu", "mlp", "mlp", "digits", (64, 64), 128, "relu"),
    Problem("mlp mixture 32-32-32 gelu", "mlp", "mlp", "mixture", (32, 32, 32), 64, dim=32, classes=10),
    Problem("stacked mlp digits 32x4", "mlp", "stacked", "digits", (32, 4), 64),
    Problem("cnn digits 16-32", "cnn", "cnn", "digits", (16, 32), 64, "gelu"),
    Problem("gru markov 16-32", "rnn", "gru", "markov", (16, 32), 32, seq_len=16, dim=16),
    Problem("lstm text 16-32", "rnn", "lstm", "text", (16, 32), 16, seq_len=16),
    Problem("attention text 32", "attention", "attention", "text", (32,), 16, seq_len=16),
    Problem("mlp breast-cancer 32", "tabular", "mlp", "breast_cancer", (32,), 32, "relu", small_data=True),
    Problem("mlp digits-small 32-32", "tabular", "mlp", "digits_small", (32, 32), 32, n_small=128,
            small_data=True),
    Problem("mlp teacher 64-64 regression", "regression", "mlp", "teacher", (64, 64), 64, "tanh", dim=16),
    Problem("mlp teacher-small 64 regression", "regression", "mlp", "teacher_small", (64,), 32, "gelu",
            n_small=64, dim=16, small_data=True),
)
