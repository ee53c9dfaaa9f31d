"""Fitness transforms: what is done to the particles' loss differences before they weight the noise.

The engine turns each particle's members' losses into one difference Δ_ij per slot (the rule's pairing). By
default those differences weight the draws as they are, and the estimate is unbiased. A `Fitness` rewrites them
first, trading that guarantee for robustness to outliers and to the loss's scale:

  clipped(c)        each particle's window-mean difference limited to [−c, c] (learned_optimization's
                    clip_loss_diff): a rare exploding inner loss cannot dominate an outer step. Unbiased while
                    nothing is clipped; `info["num_clipped"]` counts the particles it touched.
  centered_ranks()  the particles' window-mean differences replaced by their ranks mapped to [−½, ½] (Salimans et
                    al. 2017): invariant to any monotone change of the loss; only the direction is estimated.
  z_scores()        the window-mean differences standardised across particles: invariant to the loss's scale.

For `centered_ranks` and `z_scores` the particle's shaped value stands for its window: every slot of the window
gets it (so a window split by a reset weights the old and the new draw by the slots each covers). Invalid
particles (non-finite losses) are left out of the ranks and statistics and keep a zero difference. `chain(a, b)`
applies a, then b.
"""
from typing import Callable, NamedTuple

import jax.numpy as jnp

from unrolled_es.core.system import check_positive_float


class Fitness(NamedTuple):
  """transform(Δ [N, K], valid [N]) -> (Δ' [N, K], info dict of scalars); `unbiased`: whether the estimate keeps
  its guarantee."""
  transform: Callable
  unbiased: bool
  name: str


def _window_means(diffs, valid):
  return jnp.where(valid, jnp.mean(diffs, axis=1), 0.0)


def clipped(limit: float) -> Fitness:
  """Scales a particle's differences so that their window mean lies in [−limit, limit]."""
  limit = check_positive_float("limit", limit)

  def transform(diffs, valid):
    mean = _window_means(diffs, valid)
    over = jnp.abs(mean) > limit
    scale = jnp.where(over, limit / jnp.where(over, jnp.abs(mean), 1.0), 1.0)
    return diffs * scale[:, None], {"num_clipped": jnp.sum(over & valid).astype(jnp.int32)}
  return Fitness(transform, False, f"clipped({limit:g})")


def _spread(values, diffs, valid):
  """Every slot of a valid particle's window gets its shaped value."""
  return jnp.where(valid[:, None], jnp.broadcast_to(values[:, None], diffs.shape), 0.0)


def centered_ranks() -> Fitness:
  """Ranks of the window-mean differences among the valid particles, mapped linearly onto [−½, ½]."""
  def transform(diffs, valid):
    mean = jnp.where(valid, _window_means(diffs, valid), jnp.inf)   # invalid particles rank last
    ranks = jnp.argsort(jnp.argsort(mean)).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(valid) - 1, 1).astype(jnp.float32)
    return _spread(ranks / count - 0.5, diffs, valid), {}
  return Fitness(transform, False, "centered_ranks")


def z_scores() -> Fitness:
  """(Δ̄_i − mean) / std over the valid particles' window means (zero when they are all equal)."""
  def transform(diffs, valid):
    mean = _window_means(diffs, valid)
    n = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    centre = jnp.sum(mean) / n
    std = jnp.sqrt(jnp.sum(jnp.where(valid, (mean - centre) ** 2, 0.0)) / n)
    return _spread(jnp.where(std > 0, (mean - centre) / jnp.where(std > 0, std, 1.0), 0.0), diffs, valid), {}
  return Fitness(transform, False, "z_scores")


def chain(*transforms: Fitness) -> Fitness:
  """The transforms applied in order; their info entries merged."""
  for t in transforms:
    if not isinstance(t, Fitness):
      raise ValueError(f"chain takes unrolled_es.fitness transforms; got {t!r}")

  def transform(diffs, valid):
    info = {}
    for t in transforms:
      diffs, extra = t.transform(diffs, valid)
      info.update(extra)
    return diffs, info
  return Fitness(transform, all(t.unbiased for t in transforms), " then ".join(t.name for t in transforms))


def check(fitness):
  if fitness is not None and not isinstance(fitness, Fitness):
    raise ValueError(f"fitness must be None (the raw loss differences, unbiased) or an unrolled_es.fitness "
                     f"transform (clipped, centered_ranks, z_scores, chain); got {fitness!r}")
  return fitness
