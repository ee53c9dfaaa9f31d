"""Influence balancing: a linear system whose short- and long-term responses to θ have opposite signs.

Tallec & Ollivier, "Unbiased Online Recurrent Optimization" (ICLR 2018), as used by Vicol, Metz &
Sohl-Dickstein, "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent Evolution
Strategies" (ICML 2021, §5.1). With n = 23, A = ½·I + ½·(superdiagonal), b = (+1 ×10, −1 ×13):

    s_0 = 1 (all ones),   s_{t+1} = A s_t + θ b,   l_t = ½ (s_{t+1}[0] − 1)².

One step after a change of θ, s[0] moves by +θ (b[0] = +1); in steady state s[0] = 2θ Σ b = −6θ. A
truncation shorter than about 23 steps therefore sees the wrong sign: truncated BPTT drifts away from the
optimum, while unbiased estimators (full ES, PES, ES-Single) find it.

s[0]_t is affine in θ, s[0]_t = c_t + θ d_t, so L(θ) = 1/T Σ_t ½ (c_t + θ d_t − 1)² is a quadratic with the
closed-form minimiser θ* = −Σ d_t (c_t − 1) / Σ d_t² (`influence_balancing_optimum`); θ* → −1/6 as T → ∞.

Published (PES paper): θ_0 = 0.5, N = 1000, σ = 0.1, outer SGD lr 1e-4, 3000 outer steps, K ∈ {1, 10, 100};
PES ran without resets (T = ∞) and scored the loss after 500 steps. Here episodes have a finite horizon
(default T = 1000, long enough for the ~100-step transient from s_0 to be a small part of the episode) and
the meta-loss is the mean per-step loss, so that θ* is well defined and exact.
"""
import functools

import jax.numpy as jnp
import numpy as np

from unrolled_es_tasks.base import Task
from unrolled_es.core.system import UnrolledSystem, check_int, episode_losses

SIZE = 23
NUM_POSITIVE = 10


def _signs():
  return np.array([1.0] * NUM_POSITIVE + [-1.0] * (SIZE - NUM_POSITIVE))


def _transition(s, theta, b):
  # A s with A = ½ I + ½ superdiagonal, without forming A.
  shifted = jnp.concatenate([s[1:], jnp.zeros_like(s[:1])])
  return 0.5 * (s + shifted) + theta * b


def influence_balancing_optimum(horizon: int = 1000) -> float:
  """θ* = argmin L(θ) for an episode of `horizon` steps, exact in float64 (the loss is quadratic in θ)."""
  return _optimum(check_int("horizon", horizon, 1))


@functools.lru_cache(maxsize=None)
def _optimum(horizon):
  b = _signs()
  c, d = np.ones(SIZE), np.zeros(SIZE)  # s_t = c + θ d
  cs, ds = np.empty(horizon), np.empty(horizon)
  for t in range(horizon):
    c = 0.5 * (c + np.append(c[1:], 0.0))
    d = 0.5 * (d + np.append(d[1:], 0.0)) + b
    cs[t], ds[t] = c[0], d[0]
  return float(-np.sum(ds * (cs - 1.0)) / np.sum(ds * ds))


def influence_balancing(horizon: int = 1000, theta0: float = 0.5) -> Task:
  """The influence-balancing task; theta is a float32 scalar array.

  horizon: T, inner steps per episode (>= 1). theta0: the starting θ (PES used 0.5).
  evaluate(theta, key) -> {"meta_loss": L(θ), "final_loss": l_{T-1}, "theta": θ, "theta_error": θ − θ*}.
  """
  horizon = check_int("horizon", horizon, 1)
  try:
    theta0 = float(theta0)
  except (TypeError, ValueError):
    theta0 = float("nan")
  if not np.isfinite(theta0):
    raise ValueError(f"theta0 must be a finite number; got {theta0!r}")
  b = jnp.asarray(_signs(), jnp.float32)
  theta_star = influence_balancing_optimum(horizon)

  def init(key, theta):
    del key, theta
    return jnp.ones(SIZE, jnp.float32)

  def step(theta, state, key):
    del key
    state = _transition(state, jnp.asarray(theta, jnp.float32), b)
    return state, 0.5 * (state[0] - 1.0) ** 2

  system = UnrolledSystem(init=init, step=step, horizon=horizon)

  def evaluate(theta, key):
    losses = episode_losses(system, theta, key)
    return {"meta_loss": jnp.mean(losses), "final_loss": losses[-1], "theta": jnp.asarray(theta),
            "theta_error": jnp.asarray(theta) - theta_star}

  settings = {"sigma": 0.1, "num_particles": 1000, "truncation_length": 1, "outer_lr": 1e-4,
              "optimizer": "sgd", "steps": 3000}
  return Task(name="influence_balancing", system=system, theta0=jnp.asarray(theta0, jnp.float32),
              evaluate=evaluate, settings=settings)
