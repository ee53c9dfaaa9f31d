"""Iterative pruning in the lottery-ticket protocol (Frankle & Carbin 2019), for ES as in Lange & Sprekeler,
"Lottery tickets in evolutionary optimization: on sparse backpropagation-free trainability" (ICML 2023).

One round: train from the rewound weights under the current mask; prune a fraction of the remaining weights by a
criterion, with one global threshold over every prunable leaf; rewind the survivors to their saved values (the
initialisation, or an early iterate) and zero the pruned ones; repeat. After k rounds of fraction p the sparsity is
1 − (1 − p)^k (p = 0.2 in the paper: 20 rounds reach 98.8%). Criteria:

  magnitude   |θ_i| of the trained weights (the classic ticket);
  snr         |μ_i|/σ_i, the trained mean over the search distribution's per-coordinate scale (needs a trainer
              that adapts σ, e.g. unrolled_es.snes): the paper's signal-to-noise rule, which finds sparser tickets
              than magnitude;
  random      a uniformly random order (the control).

Which leaves may be pruned is a θ-shaped pytree of booleans, `prunable` (default: every leaf with two or more
dimensions, i.e. not the biases, which the paper never prunes).
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CRITERIA = ("magnitude", "snr", "random")


class Round(NamedTuple):
  sparsity: float      # fraction of prunable weights masked out when this round trained
  mask: Any            # θ-shaped booleans this round trained under
  start: Any           # the rewound θ it started from
  theta: Any           # the trained θ
  score: float         # what `train` reported (e.g. the final loss or return)


def default_prunable(theta):
  return jax.tree_util.tree_map(lambda x: np.full(np.shape(x), np.ndim(x) >= 2), theta)


def _scores(criterion, theta, sigma, key):
  if criterion == "magnitude":
    return jax.tree_util.tree_map(lambda x: np.abs(np.asarray(x, np.float64)), theta)
  if criterion == "snr":
    if sigma is None:
      raise ValueError("criterion 'snr' needs the trained per-coordinate σ (train must return it)")
    return jax.tree_util.tree_map(lambda x, s: np.abs(np.asarray(x, np.float64)) / np.asarray(s, np.float64),
                                  theta, sigma)
  leaves, treedef = jax.tree_util.tree_flatten(theta)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                         else key).tolist())
  return jax.tree_util.tree_unflatten(treedef, [rng.random(np.shape(x)) for x in leaves])


def prune(criterion: str, mask, theta, fraction: float, prunable=None, sigma=None, key=None):
  """The mask with `fraction` of its remaining prunable weights removed: those with the lowest scores, under one
  global threshold (ties broken by position)."""
  if criterion not in CRITERIA:
    raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}")
  if not 0 < fraction < 1:
    raise ValueError(f"fraction must be in (0, 1); got {fraction!r}")
  prunable = default_prunable(theta) if prunable is None else prunable
  scores = _scores(criterion, theta, sigma, key if key is not None else jax.random.PRNGKey(0))
  leaves, treedef = jax.tree_util.tree_flatten(mask)
  flat = [(np.asarray(m, bool) & np.asarray(p, bool)).ravel() for m, p in zip(leaves, jax.tree_util.tree_leaves(
      prunable))]
  candidates = np.concatenate([np.asarray(s).ravel()[f] for s, f in zip(jax.tree_util.tree_leaves(scores), flat)])
  count = int(round(fraction * candidates.size))
  if count == 0:
    return mask
  threshold_rank = np.argsort(candidates, kind="stable")[:count]
  drop = np.zeros(candidates.size, bool)
  drop[threshold_rank] = True
  out, start = [], 0
  for m, f in zip(leaves, flat):
    m = np.asarray(m, bool).ravel().copy()
    idx = np.flatnonzero(f)
    m[idx[drop[start:start + idx.size]]] = False
    start += idx.size
    out.append(m.reshape(np.shape(leaves[len(out)])))
  return jax.tree_util.tree_unflatten(treedef, out)


def sparsity(mask, prunable) -> float:
  kept = sum(int(np.sum(np.asarray(m) & np.asarray(p))) for m, p in zip(jax.tree_util.tree_leaves(mask),
                                                                          jax.tree_util.tree_leaves(prunable)))
  total = sum(int(np.sum(np.asarray(p))) for p in jax.tree_util.tree_leaves(prunable))
  return 1.0 - kept / max(total, 1)


def rewound(rewind_to, mask):
  """The survivors at their saved values, the pruned weights at zero."""
  return jax.tree_util.tree_map(lambda x, m: jnp.where(m, x, jnp.zeros((), jnp.result_type(x))), rewind_to, mask)


def lottery(train: Callable, rewind_to, *, criterion: str, rounds: int, fraction: float = 0.2, prunable=None,
            key=None) -> list[Round]:
  """`rounds` + 1 trainings of the iterative-pruning protocol (the first dense).

  train(start θ, mask) -> (trained θ, per-coordinate σ or None, score): any trainer that keeps masked weights at
  zero (e.g. an ES estimator with mask=, or unrolled_es.snes with mask=, whose step returns the trained mean and
  whose state's `.sigma` is the σ the "snr" criterion reads). rewind_to: the θ survivors return to.
  """
  prunable = default_prunable(rewind_to) if prunable is None else prunable
  mask = jax.tree_util.tree_map(lambda x: np.ones(np.shape(x), bool), rewind_to)
  key = jax.random.PRNGKey(0) if key is None else key
  out = []
  for r in range(rounds + 1):
    start = rewound(rewind_to, mask)
    theta, sigma, score = train(start, mask)
    out.append(Round(sparsity(mask, prunable), mask, start, theta, float(score)))
    if r < rounds:
      mask = prune(criterion, mask, theta, fraction, prunable, sigma, jax.random.fold_in(key, r))
  return out
