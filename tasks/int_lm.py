"""An integer recurrent character language model, pre-trained by integer low-rank ES (EGGROLL's integer
experiments: Sarkar et al., "Evolution Strategies at the Hyperscale", 2025), on the offline corpus of unrolled_es_tasks.text.

θ is int8 throughout; activations are int8 in fixed point ×16 and saturate at ±127; matmuls accumulate in int32
(unrolled_es.layers.integer). Per token, with x the embedding of the token read:

    h_l ← minGRU_l(x, h_l),  x ← sat(x + h_l),  x ← sat(x + W_2 relu(W_1 x)),   logits = W_out x,

and p(next) ∝ 2^(logits/16). The training loss is −log₂ p(next) computed in integers (a 255-entry exp₂ table and
a 256-entry log₂ table, in 1/16 bits); evaluation reports the exact bits per character of the same distribution.
`model="float"` builds the same layout in float32 (unrolled_es_tasks.char_lm) for the float estimators and backprop.

An episode reads `horizon` consecutive characters from a random start in the first 90% of the corpus, from zero
states; evaluation reads `eval_segments` fixed segments of the last 10%.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es_tasks import char_lm, text
from unrolled_es_tasks.base import Task
from unrolled_es.layers import integer as il
from unrolled_es.core.system import UnrolledSystem, check_int

MODELS = ("int8", "float")
TRAIN_FRACTION = 0.9


class LMState(NamedTuple):
  hidden: Any          # [layers, hidden]: int8 (integer model) or float32
  cursor: jax.Array    # int32: the corpus index of the token the next step reads


# ---------------------------------------------------------------- the integer model

def init_int_params(seed: int, vocab: int, hidden: int, layers: int, mlp_ratio: int = 2):
  """int8 parameters: matrices round(16·N(0, 1)) (unit scale: linear divides by 16 times about √fan_in), zero
  biases."""
  rng = np.random.default_rng(seed)
  q = lambda *shape: jnp.asarray(np.clip(np.round(il.ONE * rng.standard_normal(shape)), -il.MAX, il.MAX), jnp.int8)
  zeros = lambda n: jnp.zeros((n,), jnp.int8)
  cells = [{"wz": q(hidden, hidden), "bz": zeros(hidden), "wh": q(hidden, hidden), "bh": zeros(hidden),
            "w1": q(hidden, mlp_ratio * hidden), "w2": q(mlp_ratio * hidden, hidden)} for _ in range(layers)]
  return {"embed": q(vocab, hidden), "layers": cells, "head": q(hidden, vocab)}


def int_step(params, hidden, token):
  """(int8 logits [V], new int8 states [layers, H]) after reading `token`; params may hold IntPerturbedMatrix."""
  x = il.embed(params["embed"], token)
  new = []
  for cell, h in zip(params["layers"], hidden):
    h = il.min_gru(cell, x, h)
    x = il.add(x, h)
    x = il.add(x, il.linear(il.relu(il.linear(x, cell["w1"])), cell["w2"]))
    new.append(h)
  return il.linear(x, params["head"]), jnp.stack(new)


def int_initial_state(params):
  head = params["head"]
  width = (head.w if isinstance(head, il.IntPerturbedMatrix) else head).shape[0]
  return jnp.zeros((len(params["layers"]), width), jnp.int8)


def int_sequence_logits(params, tokens):
  """int8 logits [T, V] after each token of `tokens` [T], from zero states."""
  def body(h, token):
    logits, h = int_step(params, h, token)
    return h, logits
  return jax.lax.scan(body, int_initial_state(params), tokens)[1]


# ---------------------------------------------------------------- data and evaluation

def splits(horizon: int, eval_segments: int):
  """(training corpus, evaluation segments [S, horizon + 1], unigram bits per character of the segments)."""
  ids = text.corpus()
  cut = int(TRAIN_FRACTION * len(ids))
  train, held_out = ids[:cut], ids[cut:]
  starts = np.linspace(0, len(held_out) - horizon - 2, eval_segments).astype(np.int64)
  segments = np.stack([held_out[s:s + horizon + 1] for s in starts])
  counts = np.bincount(train, minlength=text.VOCAB_SIZE) + 1.0   # add-one: every token has some probability
  unigram = float(-np.mean(np.log2((counts / counts.sum())[segments[:, 1:]])))
  return train, segments, unigram


def _evaluator(model: str, segments, unigram: float):
  segs = jnp.asarray(segments, jnp.int32)

  def evaluate_int(theta, key):
    del key   # fixed segments: the curve shows θ's progress, not sampling noise
    logits = jax.vmap(lambda s: int_sequence_logits(theta, s[:-1]))(segs)
    exact = jnp.mean(il.exact_bits(logits, segs[:, 1:]))
    integer = -jnp.mean(il.log2_softmax_target(logits, segs[:, 1:]).astype(jnp.float32)) / il.ONE
    return {"meta_loss": exact, "bits_per_char": exact, "int_bits_per_char": integer,
            "unigram_bits_per_char": jnp.float32(unigram)}

  def evaluate_float(theta, key):
    del key
    bits = char_lm.bits_per_char(theta, segs)
    return {"meta_loss": bits, "bits_per_char": bits, "unigram_bits_per_char": jnp.float32(unigram)}
  return evaluate_int if model == "int8" else evaluate_float


def _system(model: str, train: np.ndarray, horizon: int) -> UnrolledSystem:
  data = jnp.asarray(train)

  def init(key, theta):
    start = jax.random.randint(key, (), 0, len(train) - horizon - 1)
    hidden = int_initial_state(theta) if model == "int8" else char_lm.initial_state(theta)
    return LMState(hidden, start.astype(jnp.int32))

  def step(theta, state, key):
    del key
    token, target = data[state.cursor].astype(jnp.int32), data[state.cursor + 1].astype(jnp.int32)
    if model == "int8":
      logits, hidden = int_step(theta, state.hidden, token)
      loss = -il.log2_softmax_target(logits, target).astype(jnp.float32) / il.ONE
    else:
      logits, hidden = char_lm.step(theta, state.hidden, token)
      loss = -jax.nn.log_softmax(logits)[target] / jnp.log(2.0)
    return LMState(hidden, state.cursor + 1), loss
  return UnrolledSystem(init, step, horizon)


# "estimator" is what `unrolled-es train --task int_lm` uses when --estimator is left out.
SETTINGS = {
    "int8": {"estimator": "int_es", "num_particles": 128, "optimizer": "integer", "outer_lr": 1, "steps": 1000},
    "float": {"estimator": "es_single", "sigma": 0.02, "num_particles": 128, "truncation_length": 16,
              "outer_lr": 3e-3, "optimizer": "adam", "steps": 1000},
}


def int_lm(horizon: int = 64, hidden: int = 64, layers: int = 1, model: str = "int8", eval_segments: int = 64,
           seed: int = 0) -> Task:
  """The integer character LM (model="int8", θ int8, for estimator int_es and optimizer integer) or its float32
  twin (model="float", for the float estimators and backprop). evaluate -> meta_loss (= bits_per_char on the
  held-out segments), unigram_bits_per_char (the add-one unigram model of the training split), and for the
  integer model int_bits_per_char (the integer loss that training sees)."""
  if model not in MODELS:
    raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
  horizon, hidden = check_int("horizon", horizon, 1, 10_000), check_int("hidden", hidden, 1, 512)
  layers, seed = check_int("layers", layers, 1, 16), check_int("seed", seed, 0)
  train, segments, unigram = splits(horizon, check_int("eval_segments", eval_segments, 1, 4096))
  init = init_int_params if model == "int8" else char_lm.init_params
  theta0 = init(seed, text.VOCAB_SIZE, hidden, layers)
  return Task("int_lm", _system(model, train, horizon), theta0, _evaluator(model, segments, unigram),
              dict(SETTINGS[model]))
