"""LSTM tasks whose weights are θ: the inner unroll runs the LSTM along one long sequence.

One inner step consumes one token and predicts a target with cross-entropy l_t; an episode is one sequence of
T = horizon tokens, so L(θ) = 1/T Σ_t l_t is the per-token loss and ∂L/∂θ is the gradient that BPTT through
the whole sequence would give. The inner state is (LSTM state, cursor into the data).
"""
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es_tasks import text
from unrolled_es_tasks.base import Task
from unrolled_es_tasks.models import cross_entropy, lstm_lm, numpy_init
from unrolled_es.layers.haiku import haiku_apply
from unrolled_es.core.system import UnrolledSystem, check_int, episode_keys, step_key

DATA = ("real", "random", "repeat")


class CharState(NamedTuple):
  lstm: hk.LSTMState
  token: jax.Array   # int32, the token the next step reads
  cursor: jax.Array  # int32, its index in the corpus (unused for data="random")


class CopyState(NamedTuple):
  lstm: hk.LSTMState
  symbols: jax.Array  # int32 (copy_length,), the sequence to remember, drawn in init
  t: jax.Array        # int32, position in the episode


def _episode_metrics(init, step_full, horizon, theta, key):
  """Scans one unperturbed episode with the same key schedule as `unrolled_es.core.system.episode_losses`."""
  init_key, base = episode_keys(key)

  def body(state, t):
    return step_full(theta, state, step_key(base, t))

  _, (losses, correct, weight) = jax.lax.scan(body, init(init_key, theta), jnp.arange(horizon))
  return losses, jnp.sum(correct * weight) / jnp.maximum(jnp.sum(weight), 1.0), weight


def _drop_extras(step_full):
  def step(theta, state, key):
    state, (loss, _, _) = step_full(theta, state, key)
    return state, loss
  return step


def rnn_char(horizon: int = 1000, hidden: int = 5, data: str = "real", seed: int = 0) -> Task:
  """Character-level LSTM language model on CPython's bundled documentation text (`unrolled_es_tasks.text`).

  The setting of the LSTM variance experiment of Vicol, Metz & Sohl-Dickstein, "Unbiased gradient estimation
  in unrolled computation graphs with persistent evolution strategies", ICML 2021: a tiny LSTM
  (5 hidden units) reads T = 1000 characters; step t reads character c_t and pays −log p_θ(c_{t+1} | c_≤t).

  data: "real"   each episode reads a corpus segment whose start is drawn from the init key;
        "random" every target is a fresh uniform token drawn from the step key (the next step reads it);
        "repeat" every episode reads the same segment (its start fixed by `seed`).
  seed: initialises θ0 (haiku's default initialisers, `unrolled_es_tasks.models.numpy_init`) and places the "repeat" segment.
  Settings: σ = 1e-3, N = 1000, T = 1000 are the paper's (it sweeps K over 1, 2, 5, …, 1000; K = 10 here);
  the outer optimiser (Adam 1e-2, 1000 steps) is ours: the paper measured variance and did not train.
  evaluate -> meta_loss (nats per character), bits_per_char, accuracy (next-character argmax).
  """
  ids = text.corpus()
  horizon = check_int("horizon", horizon, 1, len(ids) - 1)
  hidden = check_int("hidden", hidden, 1)
  if data not in DATA:
    raise ValueError(f"data must be one of {', '.join(DATA)}; got {data!r}")
  seed = check_int("seed", seed, 0)
  corpus = jnp.asarray(ids)
  vocab = text.VOCAB_SIZE
  model, initial_state = lstm_lm(hidden, vocab)
  apply = haiku_apply(model.apply)  # low_rank(r, factored=True) noise applies without per-particle matrices
  repeat_start = int(np.random.default_rng(seed).integers(0, len(ids) - horizon))

  def init(key, theta):
    del theta
    if data == "random":
      return CharState(initial_state(), jax.random.randint(key, (), 0, vocab), jnp.int32(0))
    start = jax.random.randint(key, (), 0, len(ids) - horizon) if data == "real" else jnp.int32(repeat_start)
    return CharState(initial_state(), corpus[start].astype(jnp.int32), start)

  def step_full(theta, state, key):
    logits, lstm = apply(theta, state.token, state.lstm)
    if data == "random":
      target = jax.random.randint(key, (), 0, vocab)
    else:
      target = corpus[state.cursor + 1].astype(jnp.int32)
    correct = (jnp.argmax(logits) == target).astype(jnp.float32)
    return CharState(lstm, target, state.cursor + 1), (cross_entropy(logits, target), correct, 1.0)

  system = UnrolledSystem(init, _drop_extras(step_full), horizon)
  theta0 = numpy_init(model, seed, jnp.int32(0), initial_state())

  def evaluate(theta, key):
    losses, acc, _ = _episode_metrics(init, step_full, horizon, theta, key)
    loss = jnp.mean(losses)
    return {"meta_loss": loss, "bits_per_char": loss / jnp.log(2.0), "accuracy": acc}

  settings = {"sigma": 1e-3, "num_particles": 1000, "truncation_length": 10, "outer_lr": 1e-2,
              "optimizer": "adam", "steps": 1000}
  return Task("rnn_char", system, theta0, evaluate, settings)


def copy_tokens(symbols, t, horizon: int, num_symbols: int):
  """The copy problem's (input, target, is_recall) at step t for the symbols (L,) of one episode."""
  length = symbols.shape[0]
  blank, delim, recall = 0, num_symbols + 1, horizon - length
  token = jnp.where(t < length, symbols[jnp.minimum(t, length - 1)], jnp.where(t == recall - 1, delim, blank))
  is_recall = t >= recall
  target = jnp.where(is_recall, symbols[jnp.clip(t - recall, 0, length - 1)], blank)
  return token, target, is_recall


def rnn_copy(horizon: int = 50, copy_length: int = 5, num_symbols: int = 8, hidden: int = 32,
             seed: int = 0) -> Task:
  """The copy-memory problem (Hochreiter & Schmidhuber 1997; the form of Arjovsky, Shah & Bengio, "Unitary
  evolution recurrent neural networks", ICML 2016), with the whole episode as one sequence of length T.

  Tokens: 0 blank, 1..S symbols (S = num_symbols), S+1 delimiter. The init key draws L = copy_length symbols;
  inputs are the L symbols, blanks, the delimiter at step T−L−1, then blanks; targets are blank until step T−L
  and the L symbols from there on. The LSTM must carry the symbols across a gap of T − 2L steps, so the task
  gets harder as the horizon grows. Per-step cross-entropy at every step; a memoryless model that learned
  the layout scores L·log(S)/T (`memoryless_loss`), and beating it needs credit assignment across the gap.
  Settings are ours (no paper trained this with ES): σ = 0.01, N = 100, K = 10, Adam 1e-2, 2000 steps.
  evaluate -> meta_loss, recall_loss (mean loss over the L recall steps), accuracy (on recall steps).
  """
  copy_length = check_int("copy_length", copy_length, 1)
  horizon = check_int("horizon", horizon, 2 * copy_length + 1)
  num_symbols = check_int("num_symbols", num_symbols, 2)
  hidden = check_int("hidden", hidden, 1)
  seed = check_int("seed", seed, 0)
  model, initial_state = lstm_lm(hidden, num_symbols + 2)
  apply = haiku_apply(model.apply)

  def init(key, theta):
    del theta
    symbols = jax.random.randint(key, (copy_length,), 1, num_symbols + 1)
    return CopyState(initial_state(), symbols, jnp.int32(0))

  def step_full(theta, state, key):
    del key
    token, target, is_recall = copy_tokens(state.symbols, state.t, horizon, num_symbols)
    logits, lstm = apply(theta, token, state.lstm)
    correct = (jnp.argmax(logits) == target).astype(jnp.float32)
    out = (cross_entropy(logits, target), correct, is_recall.astype(jnp.float32))
    return CopyState(lstm, state.symbols, state.t + 1), out

  system = UnrolledSystem(init, _drop_extras(step_full), horizon)
  theta0 = numpy_init(model, seed, jnp.int32(0), initial_state())

  def evaluate(theta, key):
    losses, acc, weight = _episode_metrics(init, step_full, horizon, theta, key)
    return {"meta_loss": jnp.mean(losses), "recall_loss": jnp.sum(losses * weight) / copy_length,
            "accuracy": acc, "memoryless_loss": jnp.float32(copy_length * np.log(num_symbols) / horizon)}

  settings = {"sigma": 0.01, "num_particles": 100, "truncation_length": 10, "outer_lr": 1e-2,
              "optimizer": "adam", "steps": 2000}
  return Task("rnn_copy", system, theta0, evaluate, settings)
