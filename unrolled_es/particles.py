"""The one engine every estimator runs: particles advance a window of K inner steps in a compiled scan.

N particles each hold one noise draw ε_i and M members: M = 2 runs θ+σε_i and θ−σε_i on the same step keys
(antithetic, common random numbers), M = 1 runs θ+σε_i alone. A window is `lax.scan` over K slots, `vmap`ped
over particles and members. Everything estimator-specific is a setting of `Config`:

  * when noise is redrawn: at every reset, and at a window start once `windows_per_draw` windows have begun
    since the last draw (1: every window, as truncated ES and PES; None: never, as ES-Single and full ES);
  * what weights a loss: the current draw ε, or with `accumulate` the sum ξ of the episode's draws so far,
    current included (PES, Vicol et al. 2021; Li et al. 2023's GPES);
  * whether members restart each window from one shared state (`sync_members`, truncated ES);
  * whether every call starts new episodes (`fresh_episodes`, full ES and full BPTT);
  * `sigma=None`: no noise, the gradient comes from autodiff through the window (BPTT).

Resets happen per particle inside the scan: a particle that has taken T steps starts a new episode from
`init` at that slot, with fresh noise; losses after the reset are weighted by the new draw only, and the PES
sum restarts from it. Because K ≤ T there is at most one reset per window, so every weight in a window is
one of two per-particle pytrees (before / after the reset) and the gradient is two weighted sums,

    ĝ = 1/(σ·n·K) Σ_i [ c_i^pre · w_i^pre + c_i^post · ε_i^post ],   c_i^· = Σ_{slots in part} Δ_ij,

with Δ_ij = (l⁺_ij − l⁻_ij)/2 (antithetic) or l_ij − b_ij (b: the mean of the other particles' losses at that
slot, which is independent of ε_i and so keeps the estimate unbiased), and n the number of particles whose
window losses are all finite. A non-finite particle is left out and reset before its next window.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from unrolled_es import prng
from unrolled_es.noise import Noise, PerturbedMatrix, weighted_sum
from unrolled_es.system import UnrolledSystem, step_key

class Config(NamedTuple):
  num_particles: int
  truncation_length: int
  sigma: float | None              # None: autodiff through the window, no noise
  noise: Noise | None
  antithetic: bool = True
  windows_per_draw: int | None = 1  # None: one draw per episode
  accumulate: bool = False
  sync_members: bool = False
  fresh_episodes: bool = False
  stagger: bool = False
  mesh: Any = None                  # jax.sharding.Mesh with a "particles" axis: particles split over its devices

  @property
  def members(self):
    return 2 if (self.antithetic and self.sigma is not None) else 1


class Particles(NamedTuple):
  """Estimator state. Leading axis N; `inner` has a second axis M (members)."""
  inner: Any              # [N, M, ...] inner states
  t: jax.Array            # [N] steps taken in the current episode; == horizon: reset before the next step
  noise_key: jax.Array    # [N, 2] key of the current draw (noise is regenerated, never stored)
  windows_since_draw: jax.Array  # [N]
  xi: Any                 # PES only: [N, θ] sum of the episode's draws, current included; else None
  init_steps: jax.Array   # inner steps spent by `init` (staggering burn-in), for honest step counts


class Window(NamedTuple):
  """What one window produced, before it becomes a gradient."""
  losses: jax.Array       # [N, M, K] float32
  after_reset: jax.Array  # [N, K] bool: slot runs in a new episode
  resets: jax.Array       # [N] bool
  valid: jax.Array        # [N] bool: all of the particle's losses (and autodiff gradients) are finite
  weight_pre: Any         # [N, θ] ξ or ε before the reset (ES) / per-particle gradients (autodiff)
  eps_post: Any           # [N, θ] the draw after the reset (ES)


def tree_select(pred, on_true, on_false):
  """Per-leading-index select between two pytrees of the same structure."""
  def sel(a, b):
    p = jnp.reshape(pred, jnp.shape(pred) + (1,) * (jnp.ndim(a) - jnp.ndim(pred)))
    return jnp.where(p, a, b)
  return jax.tree_util.tree_map(sel, on_true, on_false)


def constrain(cfg: Config, tree):
  """Pins the leading (particle) axis of every leaf to the mesh's "particles" axis; theta stays replicated."""
  if cfg.mesh is None:
    return tree
  sharding = jax.sharding.NamedSharding(cfg.mesh, jax.sharding.PartitionSpec("particles"))
  return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def shares_weights(noise: Noise, theta) -> bool:
  """Whether `noise.perturb` keeps some matrix shared across particles (factored noise: PerturbedMatrix)."""
  eps = jax.eval_shape(noise.sample, jnp.zeros((2,), jnp.uint32), theta)
  perturbed = jax.eval_shape(lambda e: noise.perturb(theta, e, 1.0), eps)
  return any(isinstance(x, PerturbedMatrix) for x in jax.tree_util.tree_leaves(
      perturbed, is_leaf=lambda x: isinstance(x, PerturbedMatrix)))


def init_particles(system: UnrolledSystem, cfg: Config, theta, key) -> Particles:
  """All particles about to start an episode (t = T): the first window resets them at its first slot."""
  n, m = cfg.num_particles, cfg.members
  shape = jax.eval_shape(system.init, key, theta)
  inner = jax.tree_util.tree_map(lambda s: jnp.zeros((n, m) + s.shape, s.dtype), shape)
  xi = None
  if cfg.accumulate:
    xi = jax.tree_util.tree_map(lambda x: jnp.zeros((n,) + jnp.shape(x), jnp.result_type(x)), theta)
  p = Particles(inner=inner, t=jnp.full((n,), system.horizon, jnp.int32),
                noise_key=jnp.zeros((n, 2), jnp.uint32), windows_since_draw=jnp.ones((n,), jnp.int32),
                xi=xi, init_steps=jnp.zeros((), jnp.int32))
  return constrain(cfg, p._replace(init_steps=None))._replace(init_steps=p.init_steps)


def advance(system: UnrolledSystem, cfg: Config, theta, p: Particles, key, active=None, differentiate=True):
  """Runs one window of K steps for every particle. Returns (new particles, Window).

  `active` [N] holds inactive particles where they are; `differentiate=False` skips BPTT's backward pass.
  """
  n, k, horizon, es = cfg.num_particles, cfg.truncation_length, system.horizon, cfg.sigma is not None
  signs = jnp.array([1.0, -1.0][:cfg.members]) if es else jnp.zeros((1,))
  draw_keys, reset_keys, init_keys, step_bases = jnp.moveaxis(constrain(
      cfg, prng.split(prng.raw_key(key), 4 * n).reshape(n, 4, 2)), 1, 0)

  reset_slot = horizon - p.t                           # the slot at which the particle starts a new episode
  resets = reset_slot < k
  count = p.windows_since_draw + 1
  redraw = jnp.zeros((n,), bool) if cfg.windows_per_draw is None else count > cfg.windows_per_draw
  count = jnp.where(redraw, 1, count)
  cur_keys = jnp.where(redraw[:, None], draw_keys, p.noise_key)
  inner = p.inner
  if cfg.sync_members:
    inner = jax.tree_util.tree_map(lambda s: jnp.broadcast_to(s[:, :1], s.shape), inner)

  sample = jax.vmap(cfg.noise.sample, (0, None)) if es else None

  def draw(change, keys, unchanged):
    # Each particle's noise from `keys` (which equal `unchanged` where `change` is False), as a conditional:
    # its outputs are materialised, whereas a plain draw lets XLA fuse the normal transform into every consumer
    # (each member's θ ± σε, the gradient's weighted sum) and run it once per consumer (optimization_barrier
    # does not prevent that on CPU). The branch without changes also skips the key select.
    return constrain(cfg, jax.lax.cond(jnp.any(change), lambda: sample(keys, theta), lambda: sample(unchanged, theta)))

  def perturbed(th, e, sign):
    return cfg.noise.perturb(th, e, sign * cfg.sigma) if es else th

  def fresh_states(th, e_post, init_key):  # one particle's members at the start of a new episode
    return jax.vmap(lambda sign: system.init(init_key, perturbed(th, e_post, sign)))(signs)

  def new_episodes(e_post):
    # A new episode's states cost an init per member: skip them in windows where no particle resets.
    return jax.lax.cond(jnp.any(resets), lambda: jax.vmap(fresh_states, (None, 0, 0))(theta, e_post, init_keys),
                        lambda: inner)

  def member(th, inner0, fresh, e_pre, e_post, sign, base, j_reset):
    # θ±σε is formed once per window (twice with a reset inside it), never per step.
    before, after = perturbed(th, e_pre, sign), perturbed(th, e_post, sign)

    def slot(state, j):
      state = tree_select(j == j_reset, fresh, state)
      return system.step(tree_select(j >= j_reset, after, before), state, step_key(base, j))
    return jax.lax.scan(slot, inner0, jnp.arange(k))

  def window(params, start, base):
    return jax.lax.scan(lambda state, j: system.step(params, state, step_key(base, j)), start, jnp.arange(k))

  def whole_windows(eps, start):
    if not es or shares_weights(cfg.noise, theta):
      # Nested vmap: what the noise leaves unbatched (θ itself, or W under factored noise) stays one array
      # shared by every member, so xW is one GEMM.
      return jax.vmap(jax.vmap(lambda th, s0, e, sign, base: window(perturbed(th, e, sign), s0, base),
                               (None, 0, None, 0, None)), (None, 0, 0, None, 0))(theta, start, eps, signs, step_bases)
    # Every member has its own θ ± σε anyway: one flat member axis batches the step's matmuls better than a
    # particle x member pair of batch axes (about 10% on the LSTM task on CPU).
    m = cfg.members
    params = jax.vmap(lambda e: jax.vmap(lambda sign: perturbed(theta, e, sign))(signs))(eps)
    merge = lambda x: x.reshape((n * m,) + x.shape[2:])
    final, losses = jax.vmap(window)(jax.tree_util.tree_map(merge, params), jax.tree_util.tree_map(merge, start),
                                     jnp.repeat(step_bases, m, axis=0))
    return jax.tree_util.tree_map(lambda x: x.reshape((n, m) + x.shape[1:]), (final, losses))

  members = jax.vmap(member, (None, 0, 0, None, None, 0, None, None))
  grads = None
  if (es or not differentiate) and horizon % k == 0:
    # K divides T: particles sit at multiples of K, so every reset falls on a window's first slot. Each particle
    # then needs one draw (its current or its new episode's) and each member one parameter set per window, and
    # the scan body is the bare step.
    eps_pre = eps_post = draw(resets | redraw, jnp.where(resets[:, None], reset_keys, cur_keys),
                              p.noise_key) if es else None
    start = tree_select(resets, new_episodes(eps_post), inner)
    final, losses = whole_windows(eps_pre, start)
  elif es or not differentiate:
    eps_pre = draw(redraw, cur_keys, p.noise_key) if es else None
    eps_post = jax.lax.cond(jnp.any(resets), lambda: constrain(cfg, sample(reset_keys, theta)),
                            lambda: jax.tree_util.tree_map(jnp.zeros_like, eps_pre)) if es else None
    final, losses = jax.vmap(members, (None, 0, 0, 0, 0, None, 0, 0))(
        theta, inner, new_episodes(eps_post), eps_pre, eps_post, signs, step_bases, reset_slot)
  else:
    # Autodiff differentiates through a new episode's init too, so the fresh states are built inside.
    def mean_loss(th, inner0, init_key, base, j_reset):
      final, losses = members(th, inner0, fresh_states(th, None, init_key), None, None, signs, base, j_reset)
      return jnp.mean(losses.astype(jnp.float32)), (final, losses)
    eps_pre = eps_post = None
    (_, (final, losses)), grads = jax.vmap(jax.value_and_grad(mean_loss, has_aux=True), (None, 0, 0, 0, 0))(
        theta, inner, init_keys, step_bases, reset_slot)
  xi_pre = None
  if cfg.accumulate:
    xi_pre = tree_select(redraw, jax.tree_util.tree_map(jnp.add, p.xi, jax.vmap(cfg.noise.dense)(eps_pre)), p.xi)

  losses = losses.astype(jnp.float32)
  valid = jnp.all(jnp.isfinite(losses), axis=(1, 2))
  if grads is not None:
    valid &= jnp.all(jnp.stack([jnp.all(jnp.isfinite(g), axis=tuple(range(1, g.ndim)))
                                for g in jax.tree_util.tree_leaves(grads)]), axis=0)
  new = Particles(
      inner=final,
      t=jnp.where(valid, jnp.where(resets, k - reset_slot, p.t + k), horizon),
      noise_key=jnp.where(resets[:, None], reset_keys, cur_keys),
      windows_since_draw=jnp.where(resets, 1, count),
      xi=None if xi_pre is None else tree_select(resets, jax.vmap(cfg.noise.dense)(eps_post), xi_pre),
      init_steps=p.init_steps)
  new = new._replace(inner=constrain(cfg, new.inner))
  if active is not None:
    new = tree_select(active, new, p)._replace(init_steps=p.init_steps)
    valid &= active
  after = jnp.arange(k)[None, :] >= reset_slot[:, None]
  weight_pre = grads if grads is not None else (xi_pre if cfg.accumulate else eps_pre)
  return new, Window(losses, after, resets, valid, weight_pre, eps_post)


def gradient(cfg: Config, w: Window, theta):
  """Turns a window into the gradient estimate (same structure and dtypes as theta)."""
  n_valid = jnp.sum(w.valid)
  denom = jnp.maximum(n_valid, 1).astype(jnp.float32)
  if cfg.sigma is None:
    coeff = jnp.where(w.valid, 1.0, 0.0) / denom
    g = jax.tree_util.tree_map(
        lambda gi: jnp.tensordot(coeff, jnp.where(_bcast(w.valid, gi), gi, 0).astype(jnp.float32), axes=1),
        w.weight_pre)
  else:
    diffs = _loss_differences(cfg, w)
    scale = 1.0 / (cfg.sigma * denom * cfg.truncation_length)
    c_pre = jnp.sum(jnp.where(w.after_reset, 0.0, diffs), axis=1) * scale
    c_post = jnp.sum(jnp.where(w.after_reset, diffs, 0.0), axis=1) * scale
    combine_pre = weighted_sum if cfg.accumulate else cfg.noise.combine
    g = jax.tree_util.tree_map(jnp.add, combine_pre(c_pre, w.weight_pre), cfg.noise.combine(c_post, w.eps_post))
  return jax.tree_util.tree_map(lambda gi, x: gi.astype(jnp.result_type(x)), g, theta)


def _loss_differences(cfg: Config, w: Window):
  """Δ_ij per particle and slot; zero where the particle is left out."""
  valid = w.valid[:, None]
  if cfg.members == 2:
    diffs = 0.5 * (w.losses[:, 0] - w.losses[:, 1])
  else:
    loss = jnp.where(valid, w.losses[:, 0], 0.0)
    others = jnp.sum(loss, axis=0, keepdims=True) - loss
    n_others = jnp.sum(w.valid) - w.valid.astype(jnp.int32)
    diffs = loss - others / jnp.maximum(n_others, 1)[:, None]
  return jnp.where(valid, diffs, 0.0)


def _bcast(valid, x):
  return jnp.reshape(valid, valid.shape + (1,) * (x.ndim - 1))


def info(cfg: Config, w: Window):
  """Scalars every estimate reports."""
  n_valid = jnp.sum(w.valid)
  per_particle = jnp.mean(w.losses, axis=(1, 2))
  loss = jnp.sum(jnp.where(w.valid, per_particle, 0.0)) / n_valid   # NaN when nothing was finite: say so
  return {"loss": loss,
          "num_nonfinite": (cfg.num_particles - n_valid).astype(jnp.int32),
          "num_valid": n_valid.astype(jnp.int32),
          "resets": jnp.sum(w.resets).astype(jnp.int32),
          "inner_steps": jnp.asarray(cfg.num_particles * cfg.members * cfg.truncation_length, jnp.int32),
          "sequential_inner_steps": jnp.asarray(cfg.truncation_length, jnp.int32)}


def burn_in(system: UnrolledSystem, cfg: Config, theta, p: Particles, key) -> Particles:
  """Staggers particles: particle i runs ⌊i·W/N⌋ whole windows first (W = ⌈T/K⌉ windows per episode).

  The burn-in uses the estimator's own windows (its noise, accumulation and resets), so the state it leaves is
  one the estimator itself would have reached, and windows then spread evenly over the horizon.
  """
  n, k = cfg.num_particles, cfg.truncation_length
  per_episode = -(-system.horizon // k)
  offsets = (jnp.arange(n) * per_episode) // n
  if per_episode <= 1:
    return p

  def one(p, w):
    new, _ = advance(system, cfg, theta, p, jax.random.fold_in(key, w), active=w < offsets, differentiate=False)
    return new, None
  p, _ = jax.lax.scan(one, p, jnp.arange(per_episode - 1))
  steps = jnp.sum(offsets) * cfg.members * k
  return p._replace(init_steps=steps.astype(jnp.int32))
