"""Toy 2-D regression: meta-learn a learning-rate schedule for SGD on a rugged 2-D surface.

Vicol, Metz & Sohl-Dickstein, "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent
Evolution Strategies" (ICML 2021, §5.2, Fig. 4). The inner loss

    f(x) = √(x₀² + 5) − √5 + sin²(x₁)·exp(−5x₀²) + 0.25·|x₁ − 100|

is minimised by SGD from x = (1, 1) (the PES code's starting point) with a schedule linear in log space,

    lr_t = exp(θ_start·(1 − t/T) + θ_end·(t/T)),   x_{t+1} = x_t − lr_t ∇f(x_t),   l_t = f(x_{t+1}),

and the meta-loss is the mean of l_t over the T steps. The sin² ripples make L(θ) jagged at large learning
rates, which is where truncated and smoothed estimators part ways.

Published: θ_0 = (−4, −4), T = 100, K = 10, σ = 0.3, N = 100, outer Adam lr 1e-2 (20000 outer steps in the
PES code's default).
"""
import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es_tasks.base import Task
from unrolled_es.core.system import UnrolledSystem, check_int, run_episode

X0 = (1.0, 1.0)


def surface(x):
  """The inner loss f(x) for x of shape (2,)."""
  return (jnp.sqrt(x[0] ** 2 + 5.0) - jnp.sqrt(5.0) + jnp.sin(x[1]) ** 2 * jnp.exp(-5.0 * x[0] ** 2)
          + 0.25 * jnp.abs(x[1] - 100.0))


def learning_rate(theta, t, horizon):
  frac = t / horizon
  return jnp.exp(theta["log_lr_start"] * (1.0 - frac) + theta["log_lr_end"] * frac)


def toy_regression(horizon: int = 100) -> Task:
  """The toy-regression task; theta = {"log_lr_start": −4, "log_lr_end": −4} (float32 scalars).

  horizon: T, inner SGD steps per episode (>= 1).
  evaluate(theta, key) -> {"meta_loss", "final_loss" (f at the last iterate), "x0", "x1" (the last iterate)}.
  """
  horizon = check_int("horizon", horizon, 1)
  grad_f = jax.grad(surface)

  def init(key, theta):
    del key, theta
    return {"x": jnp.asarray(X0, jnp.float32), "t": jnp.zeros((), jnp.int32)}

  def step(theta, state, key):
    del key
    x, t = state["x"], state["t"]
    x = x - learning_rate(theta, t.astype(jnp.float32), horizon) * grad_f(x)
    return {"x": x, "t": t + 1}, surface(x)

  system = UnrolledSystem(init=init, step=step, horizon=horizon)

  def evaluate(theta, key):
    state, losses = run_episode(system, theta, key)
    x = state["x"]
    return {"meta_loss": jnp.mean(losses), "final_loss": losses[-1], "x0": x[0], "x1": x[1]}

  theta0 = {"log_lr_start": jnp.float32(-4.0), "log_lr_end": jnp.float32(-4.0)}
  settings = {"sigma": 0.3, "num_particles": 100, "truncation_length": 10, "outer_lr": 1e-2,
              "optimizer": "adam", "steps": 20000}
  return Task(name="toy_regression", system=system, theta0=theta0, evaluate=evaluate, settings=settings)


def meta_loss_grid(task: Task, lo: float = -8.0, hi: float = 2.0, n: int = 50, key=None):
  """The meta-loss on an n×n grid of schedules, for the heatmap of the PES paper's Fig. 4.

  Returns an (n, n) array: with values = linspace(lo, hi, n), grid[i, j] is the meta-loss at
  log_lr_start = values[j], log_lr_end = values[i] (rows are θ_end, so `imshow(grid, origin="lower",
  extent=(lo, hi, lo, hi))` puts θ_start on the x axis). One vmapped, jitted evaluation of all n² schedules.
  """
  n = check_int("n", n, 1)
  lo, hi = float(lo), float(hi)
  if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
    raise ValueError(f"lo and hi must be finite with lo < hi; got lo={lo!r}, hi={hi!r}")
  key = jax.random.PRNGKey(0) if key is None else key
  values = jnp.linspace(lo, hi, n, dtype=jnp.float32)
  end, start = jnp.meshgrid(values, values, indexing="ij")
  thetas = {"log_lr_start": start.reshape(-1), "log_lr_end": end.reshape(-1)}
  losses = jax.jit(jax.vmap(lambda th: task.evaluate(th, key)["meta_loss"]))(thetas)
  return losses.reshape(n, n)
