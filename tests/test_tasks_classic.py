"""The classic reference tasks: influence balancing, toy regression, Lorenz, lr schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es_tasks as tasks
from unrolled_es_tasks.influence_balancing import influence_balancing_optimum
from unrolled_es_tasks.lorenz import true_theta
from unrolled_es_tasks.toy_regression import meta_loss_grid
from unrolled_es.core.system import check_step_contract, evaluate

KEY = jax.random.PRNGKey(0)
CLASSIC = ("influence_balancing", "toy_regression", "lorenz", "lr_schedule")
SETTINGS = {"sigma", "num_particles", "truncation_length", "outer_lr", "optimizer", "steps"}


def _norm(tree):
  return float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(tree))))


@pytest.mark.parametrize("name", CLASSIC)
def test_contract_and_settings(name):
  task = tasks.get(name, horizon=10)
  assert task.name == name and task.system.horizon == 10
  check_step_contract(task.system, task.theta0, KEY)
  for leaf in jax.tree_util.tree_leaves(task.theta0):
    assert leaf.dtype == jnp.float32
  assert set(task.settings) == SETTINGS
  assert task.settings["optimizer"] in ("sgd", "adam")
  out = jax.eval_shape(task.evaluate, task.theta0, KEY)  # traces under jit rules, costs no FLOPs
  assert out["meta_loss"].shape == ()
  # estimators vmap init and step over particles (each with its own theta, state and key)
  keys = jax.random.split(KEY, 3)
  thetas = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 3), task.theta0)
  states = jax.eval_shape(jax.vmap(task.system.init), keys, thetas)
  _, losses = jax.eval_shape(jax.vmap(task.system.step), thetas, states, keys)
  assert losses.shape == (3,)


@pytest.mark.parametrize("name, kwargs, message", [
    ("influence_balancing", {"horizon": 0}, "horizon"),
    ("influence_balancing", {"theta0": float("nan")}, "theta0"),
    ("toy_regression", {"horizon": 2.5}, "horizon"),
    ("lorenz", {"dt": -0.1}, "dt"),
    ("lorenz", {"integrator": "leapfrog"}, "integrator"),
    ("lorenz", {"num_test": 0}, "num_test"),
    ("lr_schedule", {"meta_objective": "test"}, "meta_objective"),
    ("lr_schedule", {"hidden": 32}, "hidden"),
    ("lr_schedule", {"batch_size": 0}, "batch_size"),
    ("lr_schedule", {"data_path": "/nonexistent.npz"}, "data path"),
])
def test_bad_arguments_raise(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    tasks.get(name, **kwargs)


def test_influence_balancing_optimum_is_exact_and_truncation_is_wrong():
  horizon = 1000
  task = tasks.get("influence_balancing", horizon=horizon)
  star = jnp.float32(influence_balancing_optimum(horizon))
  full = jax.grad(lambda th: evaluate(task.system, th, KEY))
  assert abs(float(full(star))) < 1e-4
  assert abs(float(full(task.theta0))) > 10.0
  assert -1 / 6 < float(star) < -0.14  # the finite horizon's transient shifts θ* from the T = ∞ value −1/6
  assert float(jax.jit(task.evaluate)(star, KEY)["theta_error"]) == 0.0

  def truncated_mean(theta, k):
    # mean over an episode of the K-step truncated gradients: the state entering each window is held constant
    def body(s, t):
      s = jnp.where(t % k == 0, jax.lax.stop_gradient(s), s)
      return task.system.step(theta, s, KEY)
    return jnp.mean(jax.lax.scan(body, task.system.init(KEY, theta), jnp.arange(horizon))[1])

  for k in (1, 10):
    g = jax.grad(truncated_mean)(star, k)
    assert abs(float(g)) > 0.1, k  # truncation pulls away from the true optimum
    # and its slope is negative: SGD on the truncated gradient runs away from its own fixed point
    assert float(jax.grad(truncated_mean)(star + 0.05, k) - g) < 0, k


def test_toy_regression_better_schedule_and_grid():
  task = tasks.get("toy_regression")
  ev = jax.jit(task.evaluate)
  start = ev(task.theta0, KEY)
  better = ev({"log_lr_start": jnp.float32(1.0), "log_lr_end": jnp.float32(1.0)}, KEY)
  assert float(better["meta_loss"]) < float(start["meta_loss"]) - 5.0
  assert float(start["meta_loss"]) == pytest.approx(float(evaluate(task.system, task.theta0, KEY)), rel=1e-6)
  grid = meta_loss_grid(task, -8.0, 2.0, 6)
  assert grid.shape == (6, 6) and bool(jnp.all(jnp.isfinite(grid)))
  values = np.linspace(-8.0, 2.0, 6)
  corner = ev({"log_lr_start": jnp.float32(values[4]), "log_lr_end": jnp.float32(values[1])}, KEY)
  assert float(grid[1, 4]) == pytest.approx(float(corner["meta_loss"]), rel=1e-5)


def test_lorenz_truth_is_exact_and_bptt_explodes():
  task = tasks.get("lorenz")  # T = 2000
  ev = jax.jit(task.evaluate)
  at_truth = ev(true_theta(), KEY)
  assert float(at_truth["meta_loss"]) == 0.0 and float(at_truth["test_loss"]) == 0.0
  at_start = ev(task.theta0, KEY)
  assert 1.0 < float(at_start["meta_loss"]) < 1e4 and np.isfinite(float(at_start["test_loss"]))
  assert float(at_start["a"]) == pytest.approx(np.exp(3.116), rel=1e-5)
  full = jax.jit(jax.grad(lambda th: evaluate(task.system, th, KEY)))
  big = _norm(full(task.theta0))
  assert big > 1e5 or not np.isfinite(big)
  short = tasks.get("lorenz", horizon=100)
  small = _norm(jax.grad(lambda th: evaluate(short.system, th, KEY))(short.theta0))
  assert big > 30 * small
  rk4 = tasks.get("lorenz", horizon=100, integrator="rk4")
  assert float(jax.jit(rk4.evaluate)(true_theta(), KEY)["meta_loss"]) == 0.0


def test_lr_schedule_reasonable_rate_beats_tiny_rate():
  task = tasks.get("lr_schedule", horizon=100)
  ev = jax.jit(task.evaluate)
  good = ev({"log_lr0": jnp.float32(np.log(0.5)), "log_decay": jnp.float32(0.0)}, KEY)
  tiny = ev({"log_lr0": jnp.float32(np.log(1e-4)), "log_decay": jnp.float32(0.0)}, KEY)
  assert float(good["meta_loss"]) < float(tiny["meta_loss"]) - 0.5
  assert float(good["test_accuracy"]) > 0.6 > float(tiny["test_accuracy"])


def test_lr_schedule_step_key_fixes_the_batch():
  # both members of an antithetic pair call step with the same key, so they must see the same data; the
  # "valid" loss depends on both the training batch (through the update) and the validation batch
  task = tasks.get("lr_schedule", horizon=20, meta_objective="valid", hidden=[16])
  # keys as arguments, not constants, so that XLA does not constant-fold the RNG at compile time
  step = jax.jit(lambda k0, k: task.system.step(task.theta0, task.system.init(k0, task.theta0), k)[1])
  first = float(step(KEY, KEY))
  assert first == float(step(KEY, KEY)) != float(step(KEY, jax.random.PRNGKey(1)))
  assert abs(first - np.log(10.0)) < 0.5  # a fresh network guesses near-uniformly
