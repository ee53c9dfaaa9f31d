"""One window of K inner steps for every particle: draw its noise, form its members' parameters, unroll them.

Three ways to unroll, all with per-particle resets inside the compiled scan:
  * aligned (K divides T and episodes have the fixed length T): particles sit at multiples of K, so a reset can
    only fall on a window's first slot. Each particle then needs one draw (its current one, or its new episode's)
    and each member one parameter set per window, and the scan body is the bare step.
  * general: a reset may fall inside the window; the slots after it run the new episode's state and parameters.
  * autodiff (BPTT): the general unroll, differentiated; a new episode's init is differentiated through too.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from unrolled_es.core import particles
from unrolled_es.core import prng
from unrolled_es.noise import base as noise_base
from unrolled_es.core.particles import constrain, tree_select
from unrolled_es.core.system import step_key

_ROUNDING = 0x5EED  # folded into a draw's key for the stochastic rounding of low-precision parameters


class Draws(NamedTuple):
  """Each particle's unit-scale draw before a reset in the window, and the draw of the episode after it; `kept`:
  the draws in force at the window's end, packed (particles.pack), when the state keeps them."""
  pre: Any
  post: Any
  kept: Any = None


class Member(NamedTuple):
  """How a member's parameters are formed: θ + sign·σ·ε, rounded stochastically where θ is low precision."""
  noise: Any
  sigma: float

  def params(self, theta, eps, sign, key):
    return self.noise.perturb(theta, eps, sign * self.sigma, prng.fold_in(key, _ROUNDING))


def shares_weights(noise, theta) -> bool:
  """Whether `noise.perturb` keeps some matrix shared across particles (factored noise), as the noise says."""
  return noise_base.shares_weights(noise, theta)


def _materialised(sample, theta, keys, change, unchanged, mesh):
  # A conditional materialises the draw: a plain draw lets XLA fuse the normal transform into every consumer (each
  # member's θ ± σε, the gradient's weighted sum) and run it once per consumer (optimization_barrier does not
  # prevent that on CPU). The branch without changes also skips the key select.
  return constrain(mesh, jax.lax.cond(jnp.any(change), lambda: sample(keys, theta),
                                      lambda: sample(unchanged, theta)))


def replace_some(sample, theta, old, change, keys, budget, mesh):
  """`old` draws [N, ...] with those of the `change` particles replaced by draws from their `keys`. Nothing is
  drawn when no particle changes; only the changed ones when at most `budget` do (with staggered particles, the
  one or two whose episodes end in this window); every particle otherwise (budget None: always)."""
  def some():
    index, safe = _changed(change, budget)
    fresh = sample(keys[safe], theta)
    return jax.tree_util.tree_map(lambda o, f: o.at[index].set(f, mode="drop"), old, fresh)

  def every():
    return tree_select(change, sample(keys, theta), old)
  return constrain(mesh, _switch_on_count(change, budget, lambda: old, some, every))


class DrawSettings(NamedTuple):
  """How a window's draws are made: `aligned` (one draw per particle: K divides T), `kept` (the state holds the
  current draws; only changed ones are regenerated), and the `budget` of partial draws (None: none)."""
  aligned: bool
  kept: bool
  budget: int | None
  mesh: Any = None


def draw(noise, theta, p, plan, keys, how: DrawSettings) -> Draws:
  """This window's draws: one per particle when aligned, else the current one and the new episodes' ones (zeros
  for the particles that do not reset)."""
  sample = jax.vmap(noise.sample, (0, None))
  if how.kept:
    return _kept_draws(noise, sample, theta, p, plan, keys, how)
  joint = (lambda eps: eps) if noise.joint is None else (lambda eps: noise.joint(eps, keys.draw[0]))
  if how.aligned:
    change, new_keys = plan.resets | plan.redraw, jnp.where(plan.resets[:, None], keys.reset, plan.draw_key)
    eps = joint(_materialised(sample, theta, new_keys, change, p.noise_key, how.mesh))
    return Draws(eps, eps)
  pre = joint(_materialised(sample, theta, plan.draw_key, plan.redraw, p.noise_key, how.mesh))
  zeros = jax.tree_util.tree_map(jnp.zeros_like, pre)
  return Draws(pre, replace_some(sample, theta, zeros, plan.resets, keys.reset, how.budget, how.mesh))


def _kept_draws(noise, sample, theta, p, plan, keys, how: DrawSettings) -> Draws:
  """`draw` for a state that keeps its draws (packed): only the particles that change draw anew."""
  one = jax.eval_shape(noise.sample, keys.draw[0], theta)
  packed = lambda k, th: particles.pack(sample(k, th))
  unpack = lambda x: particles.unpack(x, one)
  if how.aligned:
    change, new_keys = plan.resets | plan.redraw, jnp.where(plan.resets[:, None], keys.reset, plan.draw_key)
    kept = replace_some(packed, theta, p.draws, change, new_keys, how.budget, how.mesh)
    eps = unpack(kept)
    return Draws(eps, eps, kept)
  pre = replace_some(packed, theta, p.draws, plan.redraw, plan.draw_key, how.budget, how.mesh)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, pre)
  post = replace_some(packed, theta, zeros, plan.resets, keys.reset, how.budget, how.mesh)
  return Draws(unpack(pre), unpack(post), tree_select(plan.resets, post, pre))


def _switch_on_count(change, budget, none, some, every):
  """none() when no particle changes, some() when at most `budget` do, every() otherwise (budget None: never
  some)."""
  count = jnp.sum(change)
  if budget is None:
    return jax.lax.switch(jnp.where(count == 0, 0, 1), (none, every))
  return jax.lax.switch(jnp.where(count == 0, 0, jnp.where(count <= budget, 1, 2)), (none, some, every))


def _changed(change, budget):
  """(indices of the first `budget` changed particles, padded with N, which a scatter drops; the same clipped to
  valid indices, for gathering)."""
  n = change.shape[0]
  index = jnp.nonzero(change, size=budget, fill_value=n)[0]
  return index, jnp.minimum(index, n - 1)


def fresh_states(system, member, theta, eps, signs, init_keys, draw_keys, resets, inner, budget=None):
  """`inner` with every resetting particle's members replaced by a new episode's states (draw `eps`). An init per
  member can cost as much as a step, so only the resetting particles are initialised (up to `budget` of them),
  and none in windows without a reset."""
  def particle(e, init_key, draw_key):
    return jax.vmap(lambda sign: system.init(init_key, member.params(theta, e, sign, draw_key)))(signs)

  def some():
    index, safe = _changed(resets, budget)
    take = lambda x: x[safe]
    new = jax.vmap(particle)(jax.tree_util.tree_map(take, eps), init_keys[safe], draw_keys[safe])
    return jax.tree_util.tree_map(lambda o, f: o.at[index].set(f, mode="drop"), inner, new)

  def every():
    return tree_select(resets, jax.vmap(particle)(eps, init_keys, draw_keys), inner)
  return _switch_on_count(resets, budget, lambda: inner, some, every)


def scan_steps(system, params, start, base, k: int):
  """K inner steps of one member with fixed parameters: the bare unroll, step keys folded from `base`."""
  return jax.lax.scan(lambda state, j: system.step(params, state, step_key(base, j)), start, jnp.arange(k))


def scan_steps_with_reset(system, before, after, start, fresh, base, j_reset, k: int):
  """K inner steps of one member whose episode ends at slot `j_reset` (>= K: it does not): from that slot on, the
  member runs from `fresh` with parameters `after`. θ ± σε is formed once per window, never per step."""
  def slot(state, j):
    state = tree_select(j == j_reset, fresh, state)
    return system.step(tree_select(j >= j_reset, after, before), state, step_key(base, j))
  return jax.lax.scan(slot, start, jnp.arange(k))


def unroll_aligned(system, member, theta, start, eps, signs, draw_keys, bases, k: int, shared: bool):
  """Every member's window from `start` [N, M, ...] with one parameter set per member. Returns (final states,
  losses [N, M, K])."""
  if shared:
    # Nested vmap: what the noise leaves unbatched (W under factored noise) stays one array shared by every
    # member, so xW is one GEMM.
    def one(s0, e, sign, base, key):
      return scan_steps(system, member.params(theta, e, sign, key), s0, base, k)
    return jax.vmap(jax.vmap(one, (0, None, 0, None, None)), (0, 0, None, 0, 0))(start, eps, signs, bases, draw_keys)
  # Every member has its own θ ± σε anyway: one flat member axis batches the step's matmuls better than a
  # particle × member pair of batch axes (about 10% on the LSTM task on CPU).
  n, m = bases.shape[0], len(signs)
  params = jax.vmap(lambda e, key: jax.vmap(lambda sign: member.params(theta, e, sign, key))(signs))(eps, draw_keys)
  merge = lambda x: x.reshape((n * m,) + x.shape[2:])
  final, losses = jax.vmap(lambda p, s0, base: scan_steps(system, p, s0, base, k))(
      jax.tree_util.tree_map(merge, params), jax.tree_util.tree_map(merge, start), jnp.repeat(bases, m, axis=0))
  return jax.tree_util.tree_map(lambda x: x.reshape((n, m) + x.shape[1:]), (final, losses))


def unroll_general(system, member, theta, inner, fresh, draws, signs, draw_keys, reset_keys, bases, reset_slot,
                   k: int):
  """Every member's window, switching to its new episode (state `fresh`, draw `draws.post`) at its particle's
  reset slot. Returns (final states, losses [N, M, K])."""
  def one(s0, new, e_pre, e_post, sign, base, j_reset, key_pre, key_post):
    before, after = member.params(theta, e_pre, sign, key_pre), member.params(theta, e_post, sign, key_post)
    return scan_steps_with_reset(system, before, after, s0, new, base, j_reset, k)
  members = jax.vmap(one, (0, 0, None, None, 0, None, None, None, None))
  return jax.vmap(members, (0, 0, 0, 0, None, 0, 0, 0, 0))(inner, fresh, draws.pre, draws.post, signs, bases,
                                                           reset_slot, draw_keys, reset_keys)
