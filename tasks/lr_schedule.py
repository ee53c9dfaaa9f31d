"""Learning-rate schedule for an MLP classifier: meta-learn an inverse-time-decay schedule for SGD.

After Vicol, Metz & Sohl-Dickstein, "Unbiased Gradient Estimation in Unrolled Computation Graphs with
Persistent Evolution Strategies" (ICML 2021, §5.3, MNIST), here by default on the shipped 8×8 digits
(`unrolled_es_tasks.datasets.load_images`; `data_path` takes a user's MNIST / Fashion-MNIST .npz). θ = {log_lr0, log_decay},

    lr_t = exp(log_lr0) / (1 + exp(log_decay)·t/T),

so lr0 is the starting rate and the rate has fallen to lr0/(1 + decay) by the end of the episode.
The inner problem trains an MLP (dm-haiku, ReLU, widths `hidden`, softmax cross-entropy) from a fresh
initialisation drawn from init's key, by SGD on batches of `batch_size` sampled with replacement from the step
key (so both members of an antithetic pair see the same data). The per-step loss l_t is either the training
batch's loss at the current parameters (meta_objective="train") or, after the update, the loss on a batch from
a held-out validation split of the training set (meta_objective="valid"); L(θ) is their mean over T steps.

Published (PES paper, MNIST): T = 5000, K ∈ {10, 100}, σ = 0.1, N = 1000, outer Adam lr 1e-2. The defaults
here are smaller (T = 1000) to fit a CPU; `settings` keeps the published σ, N, K = 10 and the optimizer
("steps": 1000 is our choice; the paper's count is not restated here). θ_0 = (log 1e-3, 0): a too-small rate.
"""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unrolled_es_tasks.base import Task
from unrolled_es_tasks.datasets import load_images
from unrolled_es.core.system import UnrolledSystem, check_int, run_episode

OBJECTIVES = ("train", "valid")
VALID_FRACTION = 0.2


def learning_rate(theta, t, horizon):
  return jnp.exp(theta["log_lr0"]) / (1.0 + jnp.exp(theta["log_decay"]) * t / horizon)


def _split_valid(data):
  """Holds out the last VALID_FRACTION of a fixed shuffle of the training split for validation."""
  order = np.random.default_rng(0).permutation(len(data.train_x))
  n_valid = max(1, int(round(len(order) * VALID_FRACTION)))
  train, valid = order[:-n_valid], order[-n_valid:]
  return (data.train_x[train], data.train_y[train]), (data.train_x[valid], data.train_y[valid])


def lr_schedule(horizon: int = 1000, batch_size: int = 128, hidden=(32,), meta_objective: str = "train",
                data_path: str | None = None) -> Task:
  """The lr-schedule task; theta = {"log_lr0": log 1e-3, "log_decay": 0} (float32 scalars).

  horizon: T (>= 1). batch_size: examples per step (>= 1). hidden: hidden-layer widths (positive ints, may be
  empty for a linear model). meta_objective: "train" or "valid". data_path: None for the shipped digits, or an
  .npz accepted by `unrolled_es_tasks.datasets.load_images`.
  evaluate(theta, key) -> {"meta_loss", "final_loss" (the last l_t), "test_loss", "test_accuracy" (the
  trained MLP on the whole test split), "lr0", "decay"}.
  """
  horizon = check_int("horizon", horizon, 1)
  batch_size = check_int("batch_size", batch_size, 1)
  widths = tuple(hidden) if isinstance(hidden, (tuple, list)) else None
  if widths is None or not all(isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h >= 1
                               for h in widths):
    raise ValueError(f"hidden must be a tuple or list of positive integers, e.g. (32,); got {hidden!r}")
  hidden = tuple(int(h) for h in widths)
  if meta_objective not in OBJECTIVES:
    raise ValueError(f"meta_objective must be one of {OBJECTIVES}; got {meta_objective!r}")
  data = load_images(data_path)
  (train_x, train_y), (valid_x, valid_y) = [tuple(map(jnp.asarray, xy)) for xy in _split_valid(data)]
  test_x, test_y = jnp.asarray(data.test_x), jnp.asarray(data.test_y)
  net = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP(hidden + (data.num_classes,))(x)))

  def loss_fn(params, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(net.apply(params, x), y))

  def batch(key, x, y):
    idx = jax.random.randint(key, (batch_size,), 0, len(x))
    return x[idx], y[idx]

  def init(key, theta):
    del theta
    return {"params": net.init(key, train_x[:1]), "t": jnp.zeros((), jnp.int32)}

  def step(theta, state, key):
    train_key, valid_key = jax.random.split(key)
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], *batch(train_key, train_x, train_y))
    lr = learning_rate(theta, state["t"].astype(jnp.float32), horizon)
    params = jax.tree_util.tree_map(lambda p, g: p - lr * g, state["params"], grads)
    if meta_objective == "valid":
      loss = loss_fn(params, *batch(valid_key, valid_x, valid_y))
    return {"params": params, "t": state["t"] + 1}, loss

  system = UnrolledSystem(init=init, step=step, horizon=horizon)

  def evaluate(theta, key):
    state, losses = run_episode(system, theta, key)
    logits = net.apply(state["params"], test_x)
    test_loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, test_y))
    return {"meta_loss": jnp.mean(losses), "final_loss": losses[-1], "test_loss": test_loss,
            "test_accuracy": jnp.mean(jnp.argmax(logits, -1) == test_y),
            "lr0": jnp.exp(theta["log_lr0"]), "decay": jnp.exp(theta["log_decay"])}

  theta0 = {"log_lr0": jnp.float32(np.log(1e-3)), "log_decay": jnp.float32(0.0)}
  settings = {"sigma": 0.1, "num_particles": 1000, "truncation_length": 10, "outer_lr": 1e-2,
              "optimizer": "adam", "steps": 1000}
  return Task(name="lr_schedule", system=system, theta0=theta0, evaluate=evaluate, settings=settings)
