"""Lorenz system identification: fit (a, r) of a chaotic ODE to a trajectory.

Li, Harrison, Sohl-Dickstein, Smith & Metz, "Variance-Reduced Gradient Estimation via Noise Reuse in Online
Evolution Strategies" (NeurIPS 2023, §6.1; the NRES paper). The Lorenz system

    ẋ = a (y − x),   ẏ = x (r − z) − y,   ż = x y − b z,   b = 8/3 fixed,

is integrated with forward Euler at dt = 0.005 (as in the NRES code; `integrator="rk4"` is offered too), and
θ = {log_a, log_r} is fitted so that the simulated z follows the z of the true system (a = 10, r = 28) started
from the same point: l_t = (z_{t+1} − z*_{t+1})². The true trajectory is simulated alongside in the inner state,
so any initial state works and θ = truth gives exactly zero loss. Training starts from the fixed point
(1.2, 1.3, 1.6) of the NRES code; testing starts from that point plus N(0, I) perturbations (the NRES code's
Gaussian initial states, σ = 1).

Chaos makes ∂L/∂θ through T = 2000 steps explode (full BPTT is useless), while L(θ) itself stays bounded.

Published (NRES): θ_0 = (3.116, 3.7), i.e. a ≈ 22.6, r ≈ 40.4; T = 2000, N = 200, window K = 100, σ = 0.04,
outer SGD lr 1e-5 constant, 5000 outer steps (PES needed 1e-5 decayed ×0.1 at step 1000).
"""
import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es_tasks.base import Task
from unrolled_es.core.system import UnrolledSystem, check_int, check_positive_float, episode_losses

B = 8.0 / 3.0
# The truth is stored as float32 logs and decoded like θ, so that θ = true_theta() reproduces the true
# trajectory bit for bit (a chaotic system turns a one-ulp difference in r into O(1) errors over T = 2000).
TRUE_LOG_A, TRUE_LOG_R = np.float32(np.log(10.0)), np.float32(np.log(28.0))
TRAIN_INIT = (1.2, 1.3, 1.6)
INTEGRATORS = ("euler", "rk4")


def vector_field(u, a, r):
  x, y, z = u[0], u[1], u[2]
  return jnp.stack([a * (y - x), x * (r - z) - y, x * y - B * z])


def integrate(u, a, r, dt, integrator):
  """One step of size dt of the Lorenz ODE."""
  if integrator == "euler":
    return u + dt * vector_field(u, a, r)
  k1 = vector_field(u, a, r)
  k2 = vector_field(u + 0.5 * dt * k1, a, r)
  k3 = vector_field(u + 0.5 * dt * k2, a, r)
  k4 = vector_field(u + dt * k3, a, r)
  return u + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def _system(horizon, dt, integrator, init_point):
  """init_point(key) -> the shared starting point of the model and the true system."""

  def init(key, theta):
    del theta
    u = init_point(key)
    return {"model": u, "true": u}

  def step(theta, state, key):
    del key
    model = integrate(state["model"], jnp.exp(theta["log_a"]), jnp.exp(theta["log_r"]), dt, integrator)
    true = integrate(state["true"], jnp.exp(TRUE_LOG_A), jnp.exp(TRUE_LOG_R), dt, integrator)
    return {"model": model, "true": true}, (model[2] - true[2]) ** 2

  return UnrolledSystem(init=init, step=step, horizon=horizon)


def lorenz(horizon: int = 2000, dt: float = 0.005, integrator: str = "euler", num_test: int = 8) -> Task:
  """The Lorenz task; theta = {"log_a": 3.116, "log_r": 3.7} (float32 scalars).

  horizon: T (>= 1). dt: step size (> 0). integrator: "euler" or "rk4". num_test: test initial states in
  evaluate (>= 1).
  evaluate(theta, key) -> {"meta_loss": L(θ) from the training point, "test_loss": L(θ) averaged over
  num_test initial states drawn from key, "a", "r"}.
  """
  horizon = check_int("horizon", horizon, 1)
  dt = check_positive_float("dt", dt)
  num_test = check_int("num_test", num_test, 1)
  if integrator not in INTEGRATORS:
    raise ValueError(f"integrator must be one of {INTEGRATORS}; got {integrator!r}")
  train_point = jnp.asarray(TRAIN_INIT, jnp.float32)
  system = _system(horizon, dt, integrator, lambda key: train_point)
  test_system = _system(horizon, dt, integrator,
                        lambda key: train_point + jax.random.normal(key, (3,), jnp.float32))

  def evaluate(theta, key):
    keys = jax.random.split(key, num_test)
    test = jax.vmap(lambda k: jnp.mean(episode_losses(test_system, theta, k)))(keys)
    return {"meta_loss": jnp.mean(episode_losses(system, theta, key)), "test_loss": jnp.mean(test),
            "a": jnp.exp(theta["log_a"]), "r": jnp.exp(theta["log_r"])}

  theta0 = {"log_a": jnp.float32(3.116), "log_r": jnp.float32(3.7)}
  settings = {"sigma": 0.04, "num_particles": 200, "truncation_length": 100, "outer_lr": 1e-5,
              "optimizer": "sgd", "steps": 5000}
  return Task(name="lorenz", system=system, theta0=theta0, evaluate=evaluate, settings=settings)


def true_theta():
  """The θ of the true system, {"log_a": log 10, "log_r": log 28} in float32."""
  return {"log_a": jnp.float32(TRUE_LOG_A), "log_r": jnp.float32(TRUE_LOG_R)}
