"""The inner problems a learned optimizer is meta-trained and tested on: MLP classifiers on a family of datasets.

A `Family` fixes every array shape (input width, number of logits, MLP widths, largest batch); each episode
draws the rest from its key inside `init` (`sample_problem`), as the task families of Metz et al. ("Tasks,
stability, architecture, and compute: training more effective learned optimizers", 2020) do:

  * the data source, uniformly among `datasets`: "digits" (the shipped 8×8 digits, 10 classes) or
    "synthetic" (a Gaussian mixture generated from the key: C ~ U{2..10} classes, means N(0, r²I) with
    r log-uniform in [0.3, 1], unit noise; fresh samples every step, so it has no fixed training set);
  * the batch size, uniformly among (B/4, B/2, B) by masking examples of a batch of B;
  * the initialisation scale, log-uniform in [0.5, 2] times LeCun-normal.

Shape-changing choices (widths, depth) are separate families, combined by `unrolled_es.multi_task`.

Every loss is divided by log C (C: the episode's number of classes), so that a fresh classifier scores about
1 on every problem and no problem dominates the meta-loss; the meta-training loss is moreover clipped to
[0, 1.5] with NaN counted as 1.5, so that a perturbation that blows an inner run up is penalised instead of
dropped (the estimators leave non-finite pairs out). The meta-loss is either the training minibatch's loss
(`meta_loss="train"`) or the loss on a minibatch of a validation split that the optimizer never trains on
(`"valid"`). The test split is used by neither: it is what the evaluation reports.

Tabular data ("breast_cancer": the UCI Wisconsin diagnostic data, 30 features, 2 classes, standardised) is
shipped for evaluation on a dataset held out of meta-training.
"""
import functools
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es_tasks.datasets import load_images
from unrolled_es_tasks.models import check_activation, check_hidden, cross_entropy, mlp_classifier
from unrolled_es.core.system import check_int

DATASETS = ("digits", "synthetic", "breast_cancer")
META_LOSSES = ("train", "valid")
DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
MAX_CLASSES = 10
VALID_FRACTION = 0.2
LOSS_CLIP = 1.5


class Family(NamedTuple):
  """Everything that fixes the shapes of a family of inner problems (hashable: it keys caches)."""
  hidden: tuple = (32, 32)
  datasets: tuple = ("digits", "synthetic")
  batch_size: int = 128
  activation: str = "gelu"
  vary: bool = True          # sample batch size and init scale per episode (False: B and scale 1)
  meta_loss: str = "train"
  data_path: str | None = None  # a user's .npz instead of the shipped digits


class Data(NamedTuple):
  """Splits as numpy float32 (n, d) and int32 (n,) arrays (numpy, so that a cached copy never holds a tracer)."""
  train_x: Any
  train_y: Any
  valid_x: Any
  valid_y: Any
  test_x: Any
  test_y: Any
  num_classes: int


class Problem(NamedTuple):
  """One episode's draw from the family."""
  source: jax.Array       # int32 index into family.datasets
  num_classes: jax.Array  # int32 C
  means: jax.Array        # (MAX_CLASSES, d) the synthetic mixture's class means
  batch: jax.Array        # int32 examples used per step (<= family.batch_size)
  init_scale: jax.Array   # float32


def make_family(hidden=(32, 32), datasets=("digits", "synthetic"), batch_size=128, activation="gelu", vary=True,
                meta_loss="train", data_path=None) -> Family:
  check_activation(activation)
  datasets = (datasets,) if isinstance(datasets, str) else tuple(datasets)
  if not datasets or any(d not in DATASETS for d in datasets):
    raise ValueError(f"datasets must be a non-empty tuple of {', '.join(DATASETS)}; got {datasets!r}")
  if "breast_cancer" in datasets and len(datasets) > 1:
    raise ValueError("datasets: breast_cancer has 30 features and 2 classes, so it cannot share a family "
                     f"(fixed shapes) with other datasets; got {datasets!r}")
  if meta_loss not in META_LOSSES:
    raise ValueError(f"meta_loss must be one of {', '.join(META_LOSSES)}; got {meta_loss!r}")
  if not isinstance(vary, bool):
    raise ValueError(f"vary must be True or False; got {vary!r}")
  if data_path is not None and not isinstance(data_path, str):
    raise ValueError(f"data_path must be None (the shipped 8x8 digits) or a path to an .npz; got {data_path!r}")
  return Family(check_hidden("hidden", hidden), datasets, check_int("batch_size", batch_size, 4), activation, vary,
                meta_loss, data_path)


def _split(x, y, num_classes, test_x=None, test_y=None) -> Data:
  """The last VALID_FRACTION of the training examples become the validation split, less any row that also
  occurs in the training part (the 8×8 digits hold exact duplicates): the two splits share no row."""
  n_valid = int(round(len(x) * VALID_FRACTION))
  seen = {r.tobytes() for r in np.ascontiguousarray(x[:-n_valid])}
  fresh = np.array([r.tobytes() not in seen for r in np.ascontiguousarray(x[-n_valid:])], bool)
  return Data(x[:-n_valid], y[:-n_valid], x[-n_valid:][fresh], y[-n_valid:][fresh], test_x, test_y, num_classes)


@functools.lru_cache(maxsize=8)
def load_data(name: str, data_path: str | None = None) -> Data:
  """train / valid / test splits of a named dataset (fixed permutation, seed 0)."""
  if name == "digits":
    d = load_images(data_path)
    return _split(d.train_x, d.train_y, d.num_classes, d.test_x, d.test_y)
  if name == "breast_cancer":
    with np.load(os.path.join(DATA_DIR, "breast_cancer.npz")) as f:
      x, y = f["x"].astype(np.float32), f["y"].astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    n_test = int(round(0.25 * len(x)))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    return _split(x[train], y[train], 2, x[test], y[test])
  raise ValueError(f"no stored data for {name!r}")


def input_shape(family: Family):
  """(input width d, number of logits K) of the family's classifiers."""
  if family.datasets == ("breast_cancer",):
    return 30, 2
  if "digits" not in family.datasets:
    return 64, MAX_CLASSES
  digits = load_data("digits", family.data_path)
  k = max(digits.num_classes, MAX_CLASSES if "synthetic" in family.datasets else 0)
  return int(digits.train_x.shape[1]), k


def _real_data(family: Family):
  """The family's one stored dataset (None if it only has synthetic problems)."""
  real = [n for n in family.datasets if n != "synthetic"]
  return load_data(real[0], family.data_path) if real else None


def _choice(u, options):
  """options[floor(u·len)] for u ~ U[0, 1): a uniform choice from one uniform draw."""
  return jnp.asarray(options)[jnp.minimum((u * len(options)).astype(jnp.int32), len(options) - 1)]


def _log_uniform(u, low, high):
  return jnp.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def sample_problem(family: Family, key) -> Problem:
  # Two draws in all (one uniform vector, one normal matrix): each jax.random call site costs compile time.
  d, k = input_shape(family)
  k_u, k_mu = jax.random.split(key)
  u = jax.random.uniform(k_u, (5,))
  source = _choice(u[0], np.arange(len(family.datasets)))
  synthetic = jnp.asarray([n == "synthetic" for n in family.datasets])[source]
  real = _real_data(family)
  c = jnp.where(synthetic, _choice(u[1], np.arange(2, min(k, MAX_CLASSES) + 1)),
                real.num_classes if real is not None else k)
  means = _log_uniform(u[2], 0.3, 1.0) * jax.random.normal(k_mu, (k, d))
  b = family.batch_size
  if family.vary:
    batch, scale = _choice(u[3], [b // 4, b // 2, b]), _log_uniform(u[4], 0.5, 2.0)
  else:
    batch, scale = jnp.int32(b), jnp.float32(1.0)
  return Problem(source.astype(jnp.int32), c.astype(jnp.int32), means, batch.astype(jnp.int32),
                 scale.astype(jnp.float32))


class Inner(NamedTuple):
  """The pure functions of a family's inner problem (see `inner`)."""
  init_params: Any   # (key, problem) -> classifier params
  loss_and_grad: Any  # (params, problem, key) -> (raw minibatch loss, grads)
  meta_loss: Any      # (params, problem, key, raw train loss) -> the meta-split's loss / log C
  test_metrics: Any   # (params, problem) -> (normalised test loss, test accuracy)


def _masked_ce(logits, y, c, weight):
  logits = jnp.where(jnp.arange(logits.shape[-1]) < c, logits, -1e9)
  return jnp.sum(weight * cross_entropy(logits, y)) / jnp.sum(weight)


def clip_meta_loss(loss):
  """The normalised loss clipped to [0, LOSS_CLIP], NaN counted as LOSS_CLIP (a diverged run scores the ceiling)."""
  return jnp.where(jnp.isnan(loss), LOSS_CLIP, jnp.clip(loss, 0.0, LOSS_CLIP))


def _mixture(problem, u, z):
  """Labelled draws from the episode's Gaussian mixture, y ~ U{0..C-1} and x ~ N(μ_y, I), from uniforms u (n,)
  and standard normals z (n, d)."""
  y = jnp.minimum((u * problem.num_classes).astype(jnp.int32), problem.num_classes - 1)
  return problem.means[y] + z, y


def _pick(family, problem, synthetic, stored):
  """The synthetic or the stored (x, y), whichever the episode's source is (both have the same shapes)."""
  if synthetic is None or stored is None:
    return stored if synthetic is None else synthetic
  pick = jnp.asarray([n == "synthetic" for n in family.datasets])[problem.source]
  return tuple(jnp.where(pick, s, r) for s, r in zip(synthetic, stored))


def _sampler(family: Family, split: str):
  """(problem, key, n) -> (x (n, d), y (n,)): from the split of the stored data or from the mixture."""
  real = _real_data(family)

  def sample(problem, key, n):
    k_u, k_z = jax.random.split(key)
    u = jax.random.uniform(k_u, (2, n))
    stored = synthetic = None
    if real is not None:
      xs, ys = jnp.asarray(getattr(real, split + "_x")), jnp.asarray(getattr(real, split + "_y"))
      idx = jnp.minimum((u[0] * xs.shape[0]).astype(jnp.int32), xs.shape[0] - 1)
      stored = xs[idx], ys[idx]
    if "synthetic" in family.datasets:
      synthetic = _mixture(problem, u[1], jax.random.normal(k_z, (n, problem.means.shape[1])))
    return _pick(family, problem, synthetic, stored)

  return sample


def _test_set(family: Family, problem):
  """The whole test split of the stored data, or as many fresh draws (a fixed key) from the episode's mixture."""
  real = _real_data(family)
  stored = None if real is None else (jnp.asarray(real.test_x), jnp.asarray(real.test_y))
  n = 1024 if real is None else real.test_x.shape[0]
  synthetic = None
  if "synthetic" in family.datasets:
    k_u, k_z = jax.random.split(jax.random.PRNGKey(12345))
    synthetic = _mixture(problem, jax.random.uniform(k_u, (n,)), jax.random.normal(k_z, (n, problem.means.shape[1])))
  return _pick(family, problem, synthetic, stored)


@functools.lru_cache(maxsize=32)
def inner(family: Family) -> Inner:
  d, k = input_shape(family)
  model = mlp_classifier(family.hidden, k, family.activation)
  train, valid = _sampler(family, "train"), _sampler(family, "valid")
  template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, d)))
  # LeCun-normal weights and zero biases from one normal draw per leaf: haiku's truncated-normal init costs
  # more to compile than a training step, and init runs inside every estimator's scan.
  lecun = jax.tree_util.tree_map(lambda x: x.shape[0] ** -0.5 if x.ndim == 2 else 0.0, template)

  leaves, treedef = jax.tree_util.tree_flatten(template)
  flat_scale = np.concatenate([np.full(x.size, s, np.float32) for x, s in zip(leaves, jax.tree_util.tree_leaves(lecun))])
  ends = np.cumsum([x.size for x in leaves])[:-1]

  def init_params(key, problem):
    flat = problem.init_scale * flat_scale * jax.random.normal(key, flat_scale.shape)
    return treedef.unflatten([part.reshape(x.shape) for part, x in zip(jnp.split(flat, ends), leaves)])

  def batch_loss(params, problem, key, sample):
    x, y = sample(problem, key, family.batch_size)
    weight = (jnp.arange(family.batch_size) < problem.batch).astype(jnp.float32)
    return _masked_ce(model.apply(params, x), y, problem.num_classes, weight)

  def meta_loss(params, problem, key, train_loss):
    raw = train_loss if family.meta_loss == "train" else batch_loss(params, problem, key, valid)
    return raw / jnp.log(problem.num_classes.astype(jnp.float32))

  def test_metrics(params, problem):
    x, y = _test_set(family, problem)
    logits = model.apply(params, x)
    loss = _masked_ce(logits, y, problem.num_classes, jnp.ones(y.shape))
    masked = jnp.where(jnp.arange(k) < problem.num_classes, logits, -1e9)
    return loss / jnp.log(problem.num_classes.astype(jnp.float32)), jnp.mean(jnp.argmax(masked, -1) == y)

  grad = jax.value_and_grad(lambda p, prob, key: batch_loss(p, prob, key, train))
  return Inner(init_params, grad, meta_loss, test_metrics)


class InnerState(NamedTuple):
  params: Any      # the classifier's haiku params
  opt_state: Any   # the inner optimizer's state (the learned optimizer's, or Adam's)
  problem: Problem


def episode_init(family: Family, optimizer, key) -> InnerState:
  """A new episode: a problem drawn from the family, fresh classifier params, a fresh optimizer state."""
  k_problem, k_params = jax.random.split(key)
  problem = sample_problem(family, k_problem)
  params = inner(family).init_params(k_params, problem)
  return InnerState(params, optimizer.init(params), problem)


def episode_step(family: Family, optimizer, state: InnerState, key):
  """One inner step with an optax optimizer: (new state, (meta-split loss / log C, train loss / log C)),
  both measured at the params before the step and neither clipped."""
  k_train, k_meta = jax.random.split(key)
  fns = inner(family)
  loss, grads = fns.loss_and_grad(state.params, state.problem, k_train)
  meta = fns.meta_loss(state.params, state.problem, k_meta, loss)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = jax.tree_util.tree_map(lambda p, u: p + u, state.params, updates)
  log_c = jnp.log(state.problem.num_classes.astype(jnp.float32))
  return InnerState(params, opt_state, state.problem), (meta, loss / log_c)
