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

from unrolled_es import prng
from unrolled_es.noise import PerturbedMatrix
from unrolled_es.particles import constrain, tree_select
from unrolled_es.system import step_key

_ROUNDING = 0x5EED  # folded into a draw's key for the stochastic rounding of low-precision parameters


class Draws(NamedTuple):
  """Each particle's unit-scale draw before a reset in the window, and the draw of the episode after it."""
  pre: Any
  post: Any


class Member(NamedTuple):
  """How a member's parameters are formed: θ + sign·σ·ε, rounded stochastically where θ is low precision."""
  noise: Any
  sigma: float

  def params(self, theta, eps, sign, key):
    return self.noise.perturb(theta, eps, sign * self.sigma, prng.fold_in(key, _ROUNDING))


def shares_weights(noise, theta) -> bool:
  """Whether `noise.perturb` keeps some matrix shared across particles (factored noise: PerturbedMatrix)."""
  eps = jax.eval_shape(noise.sample, jnp.zeros((2,), jnp.uint32), theta)
  perturbed = jax.eval_shape(lambda e: noise.perturb(theta, e, 1.0), eps)
  return any(isinstance(x, PerturbedMatrix) for x in jax.tree_util.tree_leaves(
      perturbed, is_leaf=lambda x: isinstance(x, PerturbedMatrix)))


def _materialised(sample, theta, keys, change, unchanged, mesh):
  # A conditional materialises the draw: a plain draw lets XLA fuse the normal transform into every consumer (each
  # member's θ ± σε, the gradient's weighted sum) and run it once per consumer (optimization_barrier does not
  # prevent that on CPU). The branch without changes also skips the key select.
  return constrain(mesh, jax.lax.cond(jnp.any(change), lambda: sample(keys, theta),
                                      lambda: sample(unchanged, theta)))


def draw(noise, theta, old_keys, plan, keys, aligned: bool, mesh) -> Draws:
  """This window's draws: one per particle when aligned, else the current one and, if any particle resets, the
  new episodes' ones (zeros when none does)."""
  sample = jax.vmap(noise.sample, (0, None))
  if aligned:
    eps = _materialised(sample, theta, jnp.where(plan.resets[:, None], keys.reset, plan.draw_key),
                        plan.resets | plan.redraw, old_keys, mesh)
    return Draws(eps, eps)
  pre = _materialised(sample, theta, plan.draw_key, plan.redraw, old_keys, mesh)
  post = jax.lax.cond(jnp.any(plan.resets), lambda: constrain(mesh, sample(keys.reset, theta)),
                      lambda: jax.tree_util.tree_map(jnp.zeros_like, pre))
  return Draws(pre, post)


def fresh_states(system, member, theta, eps, signs, init_keys, draw_keys, resets, inner):
  """Every particle's members at the start of a new episode with draw `eps`; skipped (the old states returned) in
  windows where no particle resets, since an init per member can cost as much as a step."""
  def particle(e, init_key, draw_key):
    return jax.vmap(lambda sign: system.init(init_key, member.params(theta, e, sign, draw_key)))(signs)
  return jax.lax.cond(jnp.any(resets), lambda: jax.vmap(particle)(eps, init_keys, draw_keys), lambda: inner)


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
