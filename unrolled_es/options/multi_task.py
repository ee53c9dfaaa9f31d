"""Several inner problems in one outer step: a weighted mean of estimators that share θ.

A learned optimizer (or any meta-learned θ) is meta-trained over a distribution of inner problems. Choices that
keep array shapes fixed are sampled inside a system's `init` from its key; choices that change shapes (the width
of the network being trained, its depth) need one system each. `multi_task` combines one estimator per such system
into a single `GradientEstimator`,

    ĝ = Σ_j w_j ĝ_j / Σ_j w_j,

where ĝ_j is member j's estimate with the key `split(key, J)[j]`. Each member keeps its own state (its particles
advance on its own system), so the combination is as unbiased as its members are, for the weighted mean of their
objectives; the task family decides the weights and puts the members' losses on one scale (learned_optimization,
Metz et al. 2022, normalises each task's loss for the same reason). The members run one after the other inside
one compiled function: a Python loop over tasks of different shapes, not over particles or steps.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.core.prng import raw_key


def _check(estimators, weights):
  estimators = tuple(estimators) if isinstance(estimators, (list, tuple)) else None
  if not estimators:
    raise ValueError("estimators must be a non-empty list of GradientEstimator (e.g. one ue.es_single per system)")
  wrong = [f"{type(e).__name__} at {i}" for i, e in enumerate(estimators) if not isinstance(e, GradientEstimator)]
  if wrong:
    raise ValueError(f"estimators must be a non-empty list of GradientEstimator (e.g. one ue.es_single per system); "
                     f"got {', '.join(wrong)}")
  if weights is None:
    return estimators, np.full(len(estimators), 1.0 / len(estimators))
  w = np.asarray(weights, np.float64)
  if w.shape != (len(estimators),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(f"weights must be {len(estimators)} finite numbers >= 0 with a positive sum (one per "
                     f"estimator); got {weights!r}")
  return estimators, w / w.sum()


def _combined_info(infos, w):
  """The members' info with a task/<j>/ prefix, plus the scalars a single estimator reports, combined."""
  out = {f"task{j}/{k}": v for j, info in enumerate(infos) for k, v in info.items()}
  if all("loss" in i for i in infos):
    out["loss"] = sum(float(wj) * i["loss"] for wj, i in zip(w, infos))
  for name in ("num_nonfinite", "num_valid", "resets", "inner_steps"):
    if all(name in i for i in infos):
      out[name] = sum(i[name] for i in infos)
  if all("sequential_inner_steps" in i for i in infos):
    out["sequential_inner_steps"] = jnp.max(jnp.stack([i["sequential_inner_steps"] for i in infos]))
  return out


def multi_task(estimators: Sequence[GradientEstimator], weights=None) -> GradientEstimator:
  """One estimator over several that share θ; its gradient is the `weights`-weighted mean (default: equal).

  The state is the tuple of the members' states. `info` holds each member's entries as "task<j>/<name>", the
  weighted mean "loss", and summed counts ("num_nonfinite", "num_valid", "resets", "inner_steps"); members run in
  parallel in time, so "sequential_inner_steps" is the largest member's.
  """
  estimators, w = _check(estimators, weights)

  def init(key, theta):
    keys = jax.random.split(raw_key(key), len(estimators))
    return tuple(e.init(k, theta) for e, k in zip(estimators, keys))

  def estimate(key, theta, state):
    if not (isinstance(state, tuple) and len(state) == len(estimators)):
      raise ValueError(f"state must be the tuple of {len(estimators)} member states that init returns")
    keys = jax.random.split(raw_key(key), len(estimators))
    grads, states, infos = zip(*(e.estimate(k, theta, s) for e, k, s in zip(estimators, keys, state)))
    total = jax.tree_util.tree_map(
        lambda *gs: sum(float(wj) * g.astype(jnp.float32) for wj, g in zip(w, gs)), *grads)
    grad = jax.tree_util.tree_map(lambda g, x: g.astype(jnp.result_type(x)), total, theta)
    return grad, tuple(states), _combined_info(infos, w)

  return GradientEstimator(init=init, estimate=estimate)
