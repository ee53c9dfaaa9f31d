"""Meta-learning a per-parameter MLP optimizer that trains an MLP classifier.

θ is the haiku params of a small MLP applied to every inner parameter independently (Andrychowicz et al. 2016;
the per-parameter MLP of Metz et al., "Understanding and correcting pathologies in the training of learned
optimizers", ICML 2019, and "Tasks, stability, architecture, and compute", 2020). With 19 input features and
hidden (32, 32) it has 1762 parameters, the size of the learned optimizer of Li et al., "Noise-reuse in online
evolution strategies" (NRES), NeurIPS 2023.

Inner problem: an MLP classifier (widths `hidden`, GELU) on 8×8 digits (or a user's .npz), one minibatch of
`batch_size` drawn from the step key per step, T = horizon steps. The inner state is (classifier params,
momenta, second moment, step counter). Step t computes the minibatch loss l_t and gradient g, then updates
every parameter p with the lopt's outputs (a, b):

    p ← p − base_lr · exp(b) · (m̂ / √(v̂ + 1e-12) + a)

m̂, v̂ are Adam's bias-corrected first (β = 0.9) and second (β₂ = 0.999) moments. The Adam term is the
"nominal" descent direction of Harrison, Metz & Sohl-Dickstein, "A closer look at learned optimization:
stability, robustness, and inductive biases", NeurIPS 2022: the lopt's last layer starts near zero, so the
untrained lopt is Adam at `base_lr` (modest, stable progress) and training learns a per-parameter correction a
and a log step-size multiplier b (a schedule, via the time features). Meta-loss: the mean training minibatch
loss along the unroll, L(θ) = 1/T Σ_t l_t (the
meta-training loss of NRES's learned-optimizer experiment).

Lopt inputs per parameter: p, g, momenta at β ∈ (0.5, 0.9, 0.99, 0.999), √v̂, 1/√(v̂ + 1e-12), and the four
m̂_β/√(v̂ + 1e-12); each is divided by its root-mean-square over the parameter's tensor (as in Metz et al.'s
small_fc_lopt) so that the lopt sees unit-scale inputs whatever the layer; plus 7 training-progress features
tanh(t / (τ T)), τ ∈ TIMESCALES, shared by all parameters.
"""
import functools
import json
import os
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from tasks.base import Task
from unrolled_es.haiku_layers import haiku_apply
from tasks.datasets import load_images
from tasks.models import check_activation, check_hidden, cross_entropy, mlp_classifier, numpy_init
from unrolled_es.system import (UnrolledSystem, check_int, check_positive_float, episode_keys,
                                step_key)

BETAS = (0.5, 0.9, 0.99, 0.999)
BETA2 = 0.999
TIMESCALES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
NUM_FEATURES = 4 + 2 * len(BETAS) + len(TIMESCALES)  # p, g, √v̂, 1/√v̂, momenta, m̂/√v̂, time = 19
ADAM_LRS = tuple(float(x) for x in np.logspace(-4, 0, 9))


class LoptConfig(NamedTuple):
  """Everything that defines the inner problem and the lopt architecture (hashable, so it can key caches)."""
  horizon: int = 200
  hidden: tuple = (32, 32)
  activation: str = "gelu"
  batch_size: int = 128
  data_path: str | None = None
  base_lr: float = 1e-2
  lopt_hidden: tuple = (32, 32)
  seed: int = 0


class InnerState(NamedTuple):
  params: Any         # the classifier's haiku params
  momenta: jax.Array   # (len(BETAS), P) running means of g, over the P flattened params
  second: jax.Array    # (P,) running mean of g²
  t: jax.Array         # int32 step counter


def make_config(horizon=200, hidden=(32, 32), activation="gelu", batch_size=128, data_path=None,
                base_lr=1e-2, lopt_hidden=(32, 32), seed=0) -> LoptConfig:
  """The validated config that `learned_optimizer(**kw)` builds from the same arguments; pass it to
  train_inner / tune_adam_lr / compare_with_adam. The dataset is closed over as a jit constant, so keep it
  small (8×8 images as in NRES; a full 28×28 MNIST works but compiles slowly)."""
  check_activation(activation)
  if data_path is not None and not isinstance(data_path, str):
    raise ValueError(f"data_path must be None (the shipped 8x8 digits) or a path to an .npz; got {data_path!r}")
  return LoptConfig(check_int("horizon", horizon, 1), check_hidden("hidden", hidden), activation,
                    check_int("batch_size", batch_size, 1), data_path, check_positive_float("base_lr", base_lr),
                    check_hidden("lopt_hidden", lopt_hidden), check_int("seed", seed, 0))


def lopt_network(lopt_hidden) -> hk.Transformed:
  """features (..., NUM_FEATURES) -> (..., 2) = (a, b), a ReLU MLP."""
  return hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP(tuple(lopt_hidden) + (2,))(x)))


def lopt_init(lopt_hidden, seed: int):
  """θ0: haiku's default init, except the output layer's weights scaled to 1e-3 of it, so that the untrained
  lopt is close to the nominal Adam step (see module doc) but every weight still gets a gradient."""
  theta = numpy_init(lopt_network(lopt_hidden), seed, jnp.zeros((NUM_FEATURES,), jnp.float32))
  last = f"mlp/~/linear_{len(lopt_hidden)}"
  return {**theta, last: {**theta[last], "w": theta[last]["w"] * 1e-3}}


def _lopt_update(apply, theta, state, grads, base_lr, horizon):
  """One learned-optimizer step on all parameters at once (one MLP call on a (P, NUM_FEATURES) matrix)."""
  flat_p, unravel = ravel_pytree(state.params)
  flat_g, _ = ravel_pytree(grads)
  sizes = np.array([x.size for x in jax.tree_util.tree_leaves(state.params)])
  tensor = jnp.asarray(np.repeat(np.arange(len(sizes)), sizes))  # which tensor each parameter belongs to
  t = state.t.astype(jnp.float32)
  betas = jnp.asarray(BETAS)[:, None]
  m = betas * state.momenta + (1 - betas) * flat_g
  v = BETA2 * state.second + (1 - BETA2) * jnp.square(flat_g)
  mhat = m / (1 - betas ** (t + 1))
  # eps inside the root keeps d√v/dv finite where g ≡ 0 (weights of always-blank pixels).
  inv = jax.lax.rsqrt(v / (1 - BETA2 ** (t + 1)) + 1e-12)
  x = jnp.concatenate([jnp.stack([flat_p, flat_g, 1.0 / inv, inv], -1), m.T, (mhat * inv).T], -1)
  mean_sq = jax.ops.segment_sum(jnp.square(x), tensor, len(sizes)) / sizes[:, None]
  x = x * jax.lax.rsqrt(mean_sq[tensor] + 1e-12)
  time_feats = jnp.tanh(t / (jnp.asarray(TIMESCALES) * horizon))
  x = jnp.concatenate([x, jnp.broadcast_to(time_feats, (x.shape[0], len(TIMESCALES)))], -1)
  a, b = apply(theta, x).T
  nominal = mhat[BETAS.index(0.9)] * inv
  new_p = flat_p - base_lr * jnp.exp(b) * (nominal + a)
  return InnerState(unravel(new_p), m, v, state.t + 1)


class _Inner(NamedTuple):
  init_params: Any   # key -> classifier params
  batch_grad: Any    # (params, key) -> (minibatch loss, grads)
  test_metrics: Any  # params -> (test loss, test accuracy)


@functools.lru_cache(maxsize=16)
def _inner(hidden, activation, batch_size, data_path) -> _Inner:
  data = load_images(data_path)
  model = mlp_classifier(hidden, data.num_classes, activation)
  train_x, train_y = jnp.asarray(data.train_x), jnp.asarray(data.train_y)
  test_x, test_y = jnp.asarray(data.test_x), jnp.asarray(data.test_y)

  def batch_loss(params, key):
    idx = jax.random.randint(key, (batch_size,), 0, train_x.shape[0])
    return jnp.mean(cross_entropy(model.apply(params, train_x[idx]), train_y[idx]))

  def test_metrics(params):
    logits = model.apply(params, test_x)
    return jnp.mean(cross_entropy(logits, test_y)), jnp.mean(jnp.argmax(logits, -1) == test_y)

  # LeCun-normal weights and zero biases from one normal draw: haiku's per-leaf truncated-normal init
  # costs more to compile than the whole training step, and init runs inside every estimator's scan.
  template = jax.eval_shape(model.init, jax.random.PRNGKey(0), train_x[:1])
  flat, unravel = ravel_pytree(jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), template))
  scale = jnp.asarray(np.concatenate([np.full(x.size, x.shape[0] ** -0.5 if x.ndim == 2 else 0.0, np.float32)
                                      for x in jax.tree_util.tree_leaves(template)]))
  init_params = lambda key: unravel(jax.random.normal(key, flat.shape) * scale)
  return _Inner(init_params, jax.value_and_grad(batch_loss), test_metrics)


def _system(config: LoptConfig, horizon: int) -> UnrolledSystem:
  inner = _inner(config.hidden, config.activation, config.batch_size, config.data_path)
  apply = haiku_apply(lopt_network(config.lopt_hidden).apply)  # factored low-rank noise applies as is

  def init(key, theta):
    del theta
    params = inner.init_params(key)
    size = ravel_pytree(params)[0].size
    return InnerState(params, jnp.zeros((len(BETAS), size)), jnp.zeros((size,)), jnp.int32(0))

  def step(theta, state, key):
    loss, grads = inner.batch_grad(state.params, key)
    return _lopt_update(apply, theta, state, grads, config.base_lr, horizon), loss

  return UnrolledSystem(init, step, horizon)


def _override(config, hidden, steps):
  hidden = config.hidden if hidden is None else check_hidden("hidden", hidden)
  steps = config.horizon if steps is None else check_int("steps", steps, 1)
  return config._replace(hidden=hidden), steps


@functools.lru_cache(maxsize=32)
def _runner(config: LoptConfig, optimizer: str, steps: int):
  """A jitted (theta, key, lr) -> (train losses, test loss, test accuracy) for one whole inner training."""
  inner = _inner(config.hidden, config.activation, config.batch_size, config.data_path)
  system = _system(config, steps)

  def run(theta, key, lr):
    init_key, base = episode_keys(key)  # the key schedule of unrolled_es.system.episode_losses
    if optimizer == "learned":
      carry, step = system.init(init_key, theta), lambda s, k: system.step(theta, s, k)
      params_of = lambda s: s.params
    else:
      opt = optax.adam(lr)
      params = inner.init_params(init_key)
      carry, params_of = (params, opt.init(params)), lambda s: s[0]

      def step(s, k):
        loss, grads = inner.batch_grad(s[0], k)
        updates, opt_state = opt.update(grads, s[1])
        return (optax.apply_updates(s[0], updates), opt_state), loss

    carry, losses = jax.lax.scan(lambda s, t: step(s, step_key(base, t)), carry, jnp.arange(steps))
    return (losses,) + inner.test_metrics(params_of(carry))

  return jax.jit(run)


def train_inner(config: LoptConfig, theta, key, optimizer: str = "learned", lr=None, hidden=None, steps=None):
  """Trains one classifier from the key with the learned optimizer θ or with Adam(lr), on the same minibatches.

  hidden / steps override the config's widths / horizon (held-out widths, longer training); the lopt's
  progress features then use T = steps. Returns {"train_loss": (steps,) minibatch losses, "test_loss",
  "test_accuracy"} of the final params. Jitted and cached per (config, optimizer, steps); vmap over key or lr.
  """
  if optimizer not in ("learned", "adam"):
    raise ValueError(f"optimizer must be 'learned' or 'adam'; got {optimizer!r}")
  if optimizer == "adam" and lr is None:
    raise ValueError("lr must be given for optimizer='adam' (see tune_adam_lr)")
  config, steps = _override(config, hidden, steps)
  lr = jnp.float32(0.0 if lr is None else lr)
  losses, test_loss, test_acc = _runner(config, optimizer, steps)(theta, key, lr)
  return {"train_loss": losses, "test_loss": test_loss, "test_accuracy": test_acc}


def tune_adam_lr(config: LoptConfig, keys, lrs=ADAM_LRS, hidden=None, steps=None):
  """Adam's learning rate from a log grid: the lr with the lowest mean training loss along the unroll (the
  lopt's meta-objective), averaged over `keys` (training seeds, shape (n, 2)). Returns (best lr, (len(lrs),)
  mean losses; non-finite runs count as +inf)."""
  config, steps = _override(config, hidden, steps)
  run = _runner(config, "adam", steps)
  theta = jnp.zeros(())  # unused by Adam
  per_lr = jax.vmap(lambda lr: jax.vmap(lambda k: jnp.mean(run(theta, k, lr)[0]))(keys))(jnp.asarray(lrs))
  score = jnp.where(jnp.isfinite(per_lr), per_lr, jnp.inf).mean(axis=1)
  return float(lrs[int(jnp.argmin(score))]), score


def compare_with_adam(config: LoptConfig, theta, keys, adam_lr, hidden=None, steps=None):
  """Held-out comparison on `keys` (seeds not used for training or tuning), optionally at other widths or
  lengths: for "learned" and "adam", the mean training-loss curve and mean final test loss / accuracy."""
  out = {}
  for name, lr in (("learned", None), ("adam", adam_lr)):
    runs = jax.vmap(lambda k: train_inner(config, theta, k, name, lr, hidden, steps))(keys)
    out[name] = {"train_loss": runs["train_loss"].mean(0), "test_loss": runs["test_loss"].mean(),
                 "test_accuracy": runs["test_accuracy"].mean()}
  return out


def learned_optimizer(horizon: int = 200, hidden=(32, 32), activation: str = "gelu", batch_size: int = 128,
                      data_path: str | None = None, base_lr: float = 1e-2, lopt_hidden=(32, 32),
                      seed: int = 0) -> Task:
  """The learned-optimizer task of NRES (Li et al. 2023): see the module docstring.

  Settings are the paper's (σ = 0.01, N = 100, window K = 1, outer Adam 3e-4), except steps (ours); NRES
  trains for T = 1000 on 8×8 Fashion-MNIST with a 32-32-32 MLP, here T defaults to 200 on the shipped digits so
  that a CPU can run it (pass data_path, horizon=1000, hidden=(32, 32, 32) for the paper's inner problem).
  evaluate -> meta_loss (mean train loss along the unroll), final_train_loss (mean of the last 10% of
  steps), test_loss and test_accuracy of the final classifier.
  """
  config = make_config(horizon, hidden, activation, batch_size, data_path, base_lr, lopt_hidden, seed)
  theta0 = lopt_init(config.lopt_hidden, config.seed)
  tail = max(1, config.horizon // 10)

  def evaluate(theta, key):
    run = train_inner(config, theta, key)
    losses = run["train_loss"]
    return {"meta_loss": jnp.mean(losses), "final_train_loss": jnp.mean(losses[-tail:]),
            "test_loss": run["test_loss"], "test_accuracy": run["test_accuracy"]}

  settings = {"sigma": 0.01, "num_particles": 100, "truncation_length": 1, "outer_lr": 3e-4,
              "optimizer": "adam", "steps": 5000}
  return Task("learned_optimizer", _system(config, config.horizon), theta0, evaluate, settings,
              report=functools.partial(report, config, theta0))


def report(config: LoptConfig, theta0, theta, out_dir, seeds: int = 4):
  """The meta-trained optimizer against Adam with a tuned learning rate, on held-out inner problems.

  Adam's lr is tuned per width on training seeds 0..seeds-1; every comparison runs on held-out seeds (1000+)
  at the meta-training width and at held-out widths, plus the untrained optimizer θ0 for reference. Writes
  lopt_vs_adam.json and lopt_vs_adam.png to out_dir and returns the table's rows.
  """
  train_keys = jax.random.split(jax.random.PRNGKey(0), seeds)
  test_keys = jax.random.split(jax.random.PRNGKey(1000), seeds)
  widths = {"trained width " + _width(config.hidden): config.hidden}
  for other in ((64, 64), (16,)):
    if tuple(other) != tuple(config.hidden):
      widths["held-out width " + _width(other)] = other
  rows, curves = [], {}
  for label, hidden in widths.items():
    adam_lr, _ = tune_adam_lr(config, train_keys, hidden=hidden)
    result = compare_with_adam(config, theta, test_keys, adam_lr, hidden=hidden)
    untrained = compare_with_adam(config, theta0, test_keys, adam_lr, hidden=hidden)["learned"]
    for name, r in (("learned (meta-trained)", result["learned"]), ("learned (untrained θ0)", untrained),
                    (f"adam (tuned lr {adam_lr:g})", result["adam"])):
      rows.append({"inner problem": label, "optimizer": name,
                   "mean train loss": float(jnp.mean(r["train_loss"])),
                   "final train loss": float(jnp.mean(r["train_loss"][-max(1, config.horizon // 10):])),
                   "test loss": float(r["test_loss"]), "test accuracy": float(r["test_accuracy"])})
      curves.setdefault(label, {})[name] = np.asarray(r["train_loss"]).tolist()
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "lopt_vs_adam.json"), "w") as f:
    json.dump({"rows": rows, "curves": curves, "held_out_seeds": seeds}, f, indent=1)
  _plot(curves, os.path.join(out_dir, "lopt_vs_adam.png"))
  return rows


def _width(hidden):
  return "-".join(str(h) for h in hidden)


def _plot(curves, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
  for ax, (label, by_opt) in zip(axes[0], curves.items()):
    for name, curve in by_opt.items():
      ax.plot(curve, label=name, lw=1.2)
    ax.set(title=label + " (held-out seeds)", xlabel="inner step", ylabel="train loss", yscale="log")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
