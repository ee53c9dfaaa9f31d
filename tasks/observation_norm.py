"""Observation normalisation as in ARS V2 (Mania, Guy & Recht, "Simple random search of static linear policies is
competitive for reinforcement learning", NeurIPS 2018): the policy sees x̃ = (x − μ) / s per coordinate, where μ
and s² are the running mean and variance of every observation met in training rollouts so far. A coordinate whose
s < 1e-7 (it never varied) is set to 0 after centring, as ARS does.

The statistics live in θ under their own key, θ["obs_norm"] = {mean, var, count, updates}, so that an estimate
stays a pure function of (key, θ, state). They are not trained: the task's mask keeps ES from perturbing them,
and they are stop-gradient'ed for autodiff. Each particle gathers the observations it meets in its inner state
as a Welford accumulator (Welford 1962: count n, mean m, sum of squared deviations M2), stamped with the
`updates` counter of the θ it was gathered under. `update_obs_norm(θ, est_state)`, run outside the estimate after
each optimizer step, merges the accumulators stamped with θ's counter into θ with Chan et al.'s parallel formula

    n = n_a + n_b,   δ = m_b − m_a,   m = m_a + δ·n_b/n,   M2 = M2_a + M2_b + δ²·n_a·n_b/n,

and increments the counter. A step that sees a counter newer than its accumulator's stamp restarts the
accumulator, so every observation is merged exactly once (those before a reset inside a window are dropped,
never counted twice), and a particle that did not run since the last merge is not merged again. Accumulators that
hold a non-finite number are left out. The estimator must be built with the task's mask (`mask=task.mask`, as the CLI
does): a perturbed counter would restart the accumulators at every step.
"""
import jax
import jax.numpy as jnp
import numpy as np

MIN_STD = 1e-7


def init_stats(size: int):
  """Statistics before any observation: identity normalisation (mean 0, variance 1, count 0)."""
  return {"mean": jnp.zeros((size,), jnp.float32), "var": jnp.ones((size,), jnp.float32),
          "count": jnp.zeros((), jnp.float32), "updates": jnp.zeros((), jnp.float32)}


def mask(stats):
  """Every coordinate of the statistics is excluded from perturbation and from the gradient."""
  return jax.tree_util.tree_map(lambda x: np.zeros(np.shape(x), bool), stats)


def normalize(stats, x):
  """(x − mean)/std per coordinate, 0 where std < MIN_STD; no gradient reaches the statistics."""
  stats = jax.lax.stop_gradient(stats)
  std = jnp.sqrt(jnp.maximum(stats["var"], 0.0))
  flat = std < MIN_STD
  return jnp.where(flat, 0.0, (x - stats["mean"]) / jnp.where(flat, 1.0, std))


def empty_accumulator(stats):
  """A Welford accumulator with nothing in it, stamped with the statistics' update counter."""
  size = stats["mean"].shape[0]
  return {"count": jnp.zeros((), jnp.float32), "mean": jnp.zeros((size,), jnp.float32),
          "m2": jnp.zeros((size,), jnp.float32), "updates": jax.lax.stop_gradient(stats["updates"])}


def accumulate(acc, stats, x, use):
  """Adds observation x (if `use`) to the accumulator, after restarting it if θ's statistics were merged since."""
  stale = acc["updates"] != jax.lax.stop_gradient(stats["updates"])
  acc = jax.tree_util.tree_map(lambda fresh, old: jnp.where(stale, fresh, old), empty_accumulator(stats), acc)
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  w = jnp.asarray(use, jnp.float32)
  count = acc["count"] + w
  delta = x - acc["mean"]
  mean = acc["mean"] + w * delta / jnp.maximum(count, 1.0)
  return dict(acc, count=count, mean=mean, m2=acc["m2"] + w * delta * (x - mean))


def merge(stats, acc):
  """Statistics updated with every usable accumulator in `acc` (leaves with any leading batch axes)."""
  size = stats["mean"].shape[0]
  count = acc["count"].reshape(-1)
  mean = acc["mean"].reshape(-1, size)
  m2 = acc["m2"].reshape(-1, size)
  finite = jnp.isfinite(count) & jnp.all(jnp.isfinite(mean), axis=1) & jnp.all(jnp.isfinite(m2), axis=1)
  usable = finite & (acc["updates"].reshape(-1) == stats["updates"]) & (count > 0)
  n_i = jnp.where(usable, count, 0.0)
  mean_i = jnp.where(usable[:, None], mean, 0.0)
  m2_i = jnp.where(usable[:, None], m2, 0.0)
  n_b = jnp.sum(n_i)
  mean_b = jnp.sum(n_i[:, None] * mean_i, axis=0) / jnp.maximum(n_b, 1.0)
  m2_b = jnp.sum(m2_i + n_i[:, None] * (mean_i - mean_b) ** 2, axis=0)
  n_a = stats["count"]
  n = n_a + n_b
  delta = mean_b - stats["mean"]
  new_mean = stats["mean"] + delta * n_b / jnp.maximum(n, 1.0)
  new_m2 = stats["var"] * n_a + m2_b + delta ** 2 * n_a * n_b / jnp.maximum(n, 1.0)
  return {"mean": jnp.where(n > 0, new_mean, stats["mean"]), "var": jnp.where(n > 0, new_m2 / jnp.maximum(n, 1.0),
          stats["var"]), "count": n, "updates": stats["updates"] + 1.0}


def update_obs_norm(theta, est_state):
  """θ with its observation statistics merged with the particles' accumulators (pure, jit-able).

  est_state: an estimator state whose `inner` holds the control system's inner states (any leading axes, e.g.
  [N particles, M members]), or those inner states themselves. θ's other entries are returned unchanged.
  """
  inner = getattr(est_state, "inner", est_state)
  return dict(theta, obs_norm=merge(theta["obs_norm"], inner["obs_stats"]))
