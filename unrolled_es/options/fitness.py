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

ARS's choices (Mania, Guy & Recht 2018, "Simple random search of static linear policies is competitive for
reinforcement learning", Algorithm 2, V1-t/V2-t), with r± = −(window mean loss) of a particle's two members:

  top_directions(b) keeps the b particles whose better member is best (largest max(r⁺, r⁻)), drops the others,
                    and scales the kept differences by n/b, so the estimate averages over the b kept directions
                    (ARS's 1/b) instead of all n.
  reward_std()      divides every difference by σ_R, the standard deviation of the 2n members' window means.
  ars(b)            both: σ_R over the 2b kept members only, as ARS's update g = Σ_kept (r⁺ − r⁻)δ/(b σ_R).

These three read the members' losses [N, M, K] as well as the differences (`needs_losses`): the engine must pass
them as `transform(diffs, valid, losses)`; the others ignore them.

For `centered_ranks` and `z_scores` the particle's shaped value stands for its window: every slot of the window
gets it (so a window split by a reset weights the old and the new draw by the slots each covers). Invalid
particles (non-finite losses) are left out of the ranks and statistics and keep a zero difference. `chain(a, b)`
applies a, then b.
"""
from typing import Callable, NamedTuple

import jax.numpy as jnp

from unrolled_es.core.system import check_int, check_positive_float


class Fitness(NamedTuple):
  """transform(Δ [N, K], valid [N], losses [N, M, K] or None) -> (Δ' [N, K], info dict of scalars); `unbiased`:
  whether the estimate keeps its guarantee; `needs_losses`: whether it reads the members' losses."""
  transform: Callable
  unbiased: bool
  name: str
  needs_losses: bool = False


def _window_means(diffs, valid):
  return jnp.where(valid, jnp.mean(diffs, axis=1), 0.0)


def clipped(limit: float) -> Fitness:
  """Scales a particle's differences so that their window mean lies in [−limit, limit]."""
  limit = check_positive_float("limit", limit)

  def transform(diffs, valid, losses=None):
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
  def transform(diffs, valid, losses=None):
    mean = jnp.where(valid, _window_means(diffs, valid), jnp.inf)   # invalid particles rank last
    ranks = jnp.argsort(jnp.argsort(mean)).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(valid) - 1, 1).astype(jnp.float32)
    return _spread(ranks / count - 0.5, diffs, valid), {}
  return Fitness(transform, False, "centered_ranks")


def z_scores() -> Fitness:
  """(Δ̄_i − mean) / std over the valid particles' window means (zero when they are all equal)."""
  def transform(diffs, valid, losses=None):
    mean = _window_means(diffs, valid)
    n = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    centre = jnp.sum(mean) / n
    std = jnp.sqrt(jnp.sum(jnp.where(valid, (mean - centre) ** 2, 0.0)) / n)
    return _spread(jnp.where(std > 0, (mean - centre) / jnp.where(std > 0, std, 1.0), 0.0), diffs, valid), {}
  return Fitness(transform, False, "z_scores")


def _member_means(losses, name):
  if losses is None:
    raise ValueError(f"fitness {name} ranks the members' own losses: the estimator must pass them, "
                     f"transform(diffs, valid, losses)")
  return jnp.mean(losses.astype(jnp.float32), axis=2)   # [N, M]


def _kept(losses, valid, top, name):
  """[N] bool: the `top` valid particles whose better member has the lowest window-mean loss (all valid ones when
  top is None)."""
  if top is None:
    return valid
  best = jnp.where(valid, jnp.min(_member_means(losses, name), axis=1), jnp.inf)   # min loss = max(r+, r-)
  rank = jnp.argsort(jnp.argsort(best))
  return valid & (rank < top)


def _ars(top, by_std, name):
  def transform(diffs, valid, losses=None):
    means = _member_means(losses, name)
    keep = _kept(losses, valid, top, name)
    count = jnp.sum(keep).astype(jnp.float32)
    scale = jnp.sum(valid).astype(jnp.float32) / jnp.maximum(count, 1.0)   # n valid / b kept: ARS's 1/b
    if by_std:
      members = jnp.broadcast_to(keep[:, None], means.shape)
      centre = jnp.sum(jnp.where(members, means, 0.0)) / jnp.maximum(jnp.sum(members), 1)
      var = jnp.sum(jnp.where(members, (means - centre) ** 2, 0.0)) / jnp.maximum(jnp.sum(members), 1)
      std = jnp.sqrt(var)
      scale = jnp.where(std > 0, scale / jnp.where(std > 0, std, 1.0), scale)   # all equal: σ_R = 1, as ARS
    return jnp.where(keep[:, None], diffs * scale, 0.0), {"num_kept": jnp.sum(keep).astype(jnp.int32)}
  return Fitness(transform, False, name, needs_losses=True)


def top_directions(top: int) -> Fitness:
  """ARS's top-b directions by max(r⁺, r⁻), averaged over the b kept (module docstring)."""
  top = check_int("top", top, 1)
  return _ars(top, False, f"top_directions({top})")


def reward_std() -> Fitness:
  """ARS's step: differences divided by the standard deviation of every member's window-mean loss."""
  return _ars(None, True, "reward_std")


def ars(top: int | None = None) -> Fitness:
  """ARS V1-t/V2-t's update: the top-b directions, divided by the std of their 2b members (top None: all)."""
  top = None if top is None else check_int("top", top, 1)
  return _ars(top, True, f"ars(top={top})")


def chain(*transforms: Fitness) -> Fitness:
  """The transforms applied in order; their info entries merged."""
  for t in transforms:
    if not isinstance(t, Fitness):
      raise ValueError(f"chain takes unrolled_es.fitness transforms; got {t!r}")

  def transform(diffs, valid, losses=None):
    info = {}
    for t in transforms:
      diffs, extra = t.transform(diffs, valid, losses)
      info.update(extra)
    return diffs, info
  return Fitness(transform, all(t.unbiased for t in transforms), " then ".join(t.name for t in transforms),
                 any(t.needs_losses for t in transforms))


def check(fitness):
  if fitness is not None and not isinstance(fitness, Fitness):
    raise ValueError(f"fitness must be None (the raw loss differences, unbiased) or an unrolled_es.fitness "
                     f"transform (clipped, centered_ranks, z_scores, top_directions, reward_std, ars, chain); got {fitness!r}")
  return fitness


# What `named` accepts: the transforms that a name (and, for some, one integer) fully describes.
NAMED = {"centered_ranks": centered_ranks, "z_scores": z_scores, "reward_std": reward_std,
         "top_directions": top_directions, "ars": ars}
NAMED_FORMS = ("centered_ranks", "z_scores", "reward_std", "top_directions:B", "ars", "ars:B")


def named(spec: str) -> Fitness:
  """The transform a short text names, as command lines and task settings give it: "centered_ranks", "z_scores",
  "reward_std", "top_directions:B" (B the directions kept), "ars" or "ars:B"."""
  name, _, arg = str(spec).partition(":")
  takes_arg = name in ("top_directions", "ars")
  if name not in NAMED or (arg and not takes_arg) or (name == "top_directions" and not arg):
    raise ValueError(f"fitness {spec!r} is not one of: {', '.join(NAMED_FORMS)}")
  if not arg:
    return NAMED[name]()
  try:
    count = int(arg)
  except ValueError:
    raise ValueError(f"fitness {spec!r}: B must be a positive integer, got {arg!r}") from None
  return NAMED[name](count)
