"""Offline data sources for the learned optimizer's inner problems: per-episode draws with fixed shapes.

A source is (episode(key) -> per-episode arrays, sample(episode, key, split, n) -> (x, y), test(episode) ->
(x, y), num_outputs, loss "ce" or "mse"). Losses are put on one scale: cross-entropy over log C (a fresh
classifier scores about 1) and mean squared error of unit-variance targets (a zero predictor scores about 1).

  digits          the shipped 8×8 digits, train / valid / test splits (`lopt_problems.load_data`)
  digits_small    `n_small` training rows drawn per episode (it overfits; valid and test as digits)
  breast_cancer   UCI Wisconsin diagnostic, 30 standardised features, 2 classes (small tabular data)
  mixture         a Gaussian mixture drawn per episode: C classes, means N(0, r²I), r log-uniform in [0.3, 1]
  teacher         regression on a random one-hidden-layer tanh teacher drawn per episode, targets scaled to
                  unit variance plus N(0, 0.1²) noise; fresh inputs every step
  teacher_small   the same with `n_small` training inputs fixed per episode (it overfits)
  text            next-character prediction on the CPython documentation corpus (`text.corpus`), split by
                  position 80/10/10
  markov          next-token prediction on sequences of a random first-order Markov chain drawn per episode
"""
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SOURCES = ("digits", "digits_small", "breast_cancer", "mixture", "teacher", "teacher_small", "text", "markov")
TEST_SIZE = 512
TEST_KEY = 12345


class Source(NamedTuple):
  episode: Callable     # key -> dict of per-episode arrays
  sample: Callable      # (episode, key, split, n) -> (x, y); split "train" or "valid"
  test: Callable        # episode -> (x, y)
  num_outputs: int
  loss: str             # "ce" or "mse"
  sequence: bool        # inputs are token sequences (B, L)


def _rows(x, y, key, n):
  idx = jax.random.randint(key, (n,), 0, x.shape[0])
  return jnp.asarray(x)[idx], jnp.asarray(y)[idx]


def _stored(name):
  from unrolled_es_tasks import lopt_problems
  return lopt_problems.load_data(name)


def stored_classification(name, n_small=0) -> Source:
  """A stored dataset; with n_small > 0 each episode trains on n_small of its training rows."""
  d = _stored(name)

  def episode(key):
    return {"idx": jax.random.choice(key, d.train_x.shape[0], (max(n_small, 1),), replace=False)}

  def sample(ep, key, split, n):
    if split == "train" and n_small:
      rows = ep["idx"][jax.random.randint(key, (n,), 0, n_small)]
      return jnp.asarray(d.train_x)[rows], jnp.asarray(d.train_y)[rows]
    return _rows(getattr(d, split + "_x"), getattr(d, split + "_y"), key, n)

  return Source(episode, sample, lambda ep: (jnp.asarray(d.test_x), jnp.asarray(d.test_y)), d.num_classes, "ce",
                False)


def mixture(dim, classes) -> Source:
  def episode(key):
    k_r, k_mu = jax.random.split(key)
    r = jnp.exp(jax.random.uniform(k_r, (), minval=math.log(0.3), maxval=0.0))
    return {"means": r * jax.random.normal(k_mu, (classes, dim))}

  def sample(ep, key, split, n):
    k_y, k_z = jax.random.split(key)
    y = jax.random.randint(k_y, (n,), 0, classes)
    return ep["means"][y] + jax.random.normal(k_z, (n, dim)), y

  return Source(episode, sample, lambda ep: sample(ep, jax.random.PRNGKey(TEST_KEY), "test", TEST_SIZE), classes,
                "ce", False)


def teacher(dim, n_small=0, hidden=32, noise=0.1) -> Source:
  def episode(key):
    k1, k2, k_probe, k_x, k_e = jax.random.split(key, 5)
    w1, w2 = jax.random.normal(k1, (dim, hidden)) / math.sqrt(dim), jax.random.normal(k2, (hidden, 1))
    probe = jnp.tanh(jax.random.normal(k_probe, (256, dim)) @ w1) @ w2
    w2 = w2 / (jnp.std(probe) + 1e-6)
    rows = max(n_small, 1)
    return {"w1": w1, "w2": w2, "x": jax.random.normal(k_x, (rows, dim)),
            "noise": noise * jax.random.normal(k_e, (rows, 1))}

  def sample(ep, key, split, n):
    k_x, k_e, k_i = jax.random.split(key, 3)
    x = jax.random.normal(k_x, (n, dim))
    if split == "train" and n_small:   # the episode's fixed rows, with fixed targets: a dataset
      rows = jax.random.randint(k_i, (n,), 0, n_small)
      x, eps = ep["x"][rows], ep["noise"][rows]
    else:
      eps = noise * jax.random.normal(k_e, (n, 1))
    return x, jnp.tanh(x @ ep["w1"]) @ ep["w2"] + eps

  return Source(episode, sample, lambda ep: sample(ep, jax.random.PRNGKey(TEST_KEY), "test", TEST_SIZE), 1, "mse",
                False)


@functools.lru_cache(maxsize=1)
def _text_splits():
  from unrolled_es_tasks.text import corpus
  ids = np.asarray(corpus(), np.int32)
  a, b = int(0.8 * len(ids)), int(0.9 * len(ids))
  return ids[:a], ids[a:b], ids[b:]


def text(length) -> Source:
  from unrolled_es_tasks.text import VOCAB_SIZE
  splits = dict(zip(("train", "valid", "test"), _text_splits()))

  def windows(split, key, n):
    ids = jnp.asarray(splits[split])
    start = jax.random.randint(key, (n, 1), 0, ids.shape[0] - length - 1)
    seq = ids[start + jnp.arange(length + 1)]
    return seq[:, :-1], seq[:, 1:]

  return Source(lambda key: {}, lambda ep, key, split, n: windows(split, key, n),
                lambda ep: windows("test", jax.random.PRNGKey(TEST_KEY), TEST_SIZE // 4), VOCAB_SIZE, "ce", True)


def markov(vocab, length, sharpness=3.0) -> Source:
  def episode(key):
    return {"logits": sharpness * jax.random.normal(key, (vocab, vocab))}

  def sample(ep, key, split, n):
    k0, k_steps = jax.random.split(key)
    first = jax.random.randint(k0, (n,), 0, vocab)

    def step(tok, k):
      nxt = jax.random.categorical(k, ep["logits"][tok])
      return nxt, nxt
    _, rest = jax.lax.scan(step, first, jax.random.split(k_steps, length))
    seq = jnp.concatenate([first[None], rest], 0).T
    return seq[:, :-1], seq[:, 1:]

  return Source(episode, sample, lambda ep: sample(ep, jax.random.PRNGKey(TEST_KEY), "test", TEST_SIZE // 4), vocab,
                "ce", True)
