"""The pipeline every estimator runs, as named stages over the particles' state.

For an ES estimator (a `rules.Rule`), one `estimate` is

    keys     = particles.window_keys(key)            four independent keys per particle
    plan     = particles.plan(state, keys, rule)      who resets at which slot, who redraws
    draws    = window.draw(noise, θ, plan)            each particle's draw(s), regenerated from keys
    losses   = window.unroll_*(...)                   K steps of every member with θ + s·σ·ε, resets inside the scan
    weight   = rule.weighting.weight(...)             ε, or the episode's sum ξ (PES)
    Δ        = rule.pairing.differences(losses)       one loss difference per particle and slot
    c        = gradient.coefficients(Δ)               per-particle weights of the draws before and after a reset
    ĝ        = gradient.combine(noise, c, weight, draws.post)
    state    = particles.advance(...)

and the autodiff baselines (BPTT) share the keys, the plan and the unroll with resets, and differentiate it.
`es_estimator(system, rule, ...)` turns a rule into a `GradientEstimator`; each file in estimators/ is a rule and a
constructor.
"""
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from unrolled_es.core import gradient
from unrolled_es.core import particles
from unrolled_es.core import rules
from unrolled_es.core import window
from unrolled_es.core.estimator import GradientEstimator, Settings, checked_call, settings as make_settings
from unrolled_es.noise.base import Use


class Outcome(NamedTuple):
  """What one window produced, before it becomes a gradient."""
  losses: jax.Array       # [N, M, K] float32
  after_reset: jax.Array  # [N, K] bool: the slot runs in a new episode
  resets: jax.Array       # [N] bool
  valid: jax.Array        # [N] bool: the particle's losses (and autodiff gradients) are all finite
  weight: Any             # what weights the differences before the reset (ES), or per-particle gradients (BPTT)
  eps_post: Any           # the new episode's draw (ES)


def aligned(system, s: Settings) -> bool:
  """Every episode has the same length T and K divides it: every reset falls on a window's first slot."""
  length = s.episode_length(system)
  return length is not None and length % s.truncation_length == 0


def new_horizons(s: Settings, keys):
  """[N] the lengths of the episodes that particles would start in this window (None: the system's fixed T)."""
  return None if s.horizons is None else jax.vmap(s.horizons.sample)(keys.init)


def step_weights(s: Settings, p, new_horizon, after_reset):
  """[N, K] weight of each slot's loss, E[T]/T of the slot's episode, which keeps the estimate unbiased for the
  expected meta-loss over drawn horizons (unrolled_es/options/horizons.py); None for a fixed length (every weight 1)."""
  if s.horizons is None or s.horizons.low == s.horizons.high:
    return None
  length = jnp.where(after_reset, new_horizon[:, None], p.horizon[:, None]).astype(jnp.float32)
  return jnp.float32(s.horizons.mean) / length


def keeps_draws(rule, s: Settings) -> bool:
  """Draws are kept in the state (not regenerated every window) when they are compact (low rank) and change only
  at resets: a few numbers per matrix per particle buy a window without a draw for most particles."""
  return s.noise.compact and rule.redraw is rules.never and not rule.whole_episodes


def draw_settings(system, rule, s: Settings) -> window.DrawSettings:
  """One window's draw plan; the budget of partial draws is the resets a staggered window sees, N·K/T, plus one.
  Over a device mesh every draw is made on each particle's own device (no partial draws)."""
  n, k = s.num_particles, s.truncation_length
  budget = None if s.mesh is not None else min(n, math.ceil(n * k / s.mean_episode_length(system)) + 1)
  return window.DrawSettings(aligned(system, s), keeps_draws(rule, s), budget, s.mesh)


def _unroll(system, rule, s: Settings, theta, p, pl, keys, draws, how):
  """(final states, losses [N, M, K]) of every member, new episodes started at their reset slots."""
  member, signs = window.Member(s.noise, s.sigma), jnp.asarray(rule.pairing.signs, jnp.float32)
  inner = rule.window_start(p.inner)
  if how.aligned:
    draw_keys = jnp.where(pl.resets[:, None], keys.reset, pl.draw_key)
    start = window.fresh_states(system, member, theta, draws.post, signs, keys.init, draw_keys, pl.resets, inner,
                                how.budget)
    return window.unroll_aligned(system, member, theta, start, draws.pre, signs, draw_keys, keys.steps,
                                 s.truncation_length, window.shares_weights(s.noise, theta))
  # `fresh` holds the new episodes' states of the resetting particles; the others never reach their reset slot.
  fresh = window.fresh_states(system, member, theta, draws.post, signs, keys.init, keys.reset, pl.resets, inner,
                              how.budget)
  return window.unroll_general(system, member, theta, inner, fresh, draws, signs, pl.draw_key, keys.reset,
                               keys.steps, pl.reset_slot, s.truncation_length)


def _weights(rule, s: Settings, p, pl, draws):
  """This window's weight of the pre-reset differences, and the weighting's memory for the next window."""
  weight, memory = rule.weighting.weight(s.noise, p.memory, draws.pre, pl.redraw)
  if memory is not None:
    memory = particles.tree_select(pl.resets, rule.weighting.restart(s.noise, draws.post), memory)
  return weight, memory


def es_window(system, rule, s: Settings, theta, p, key, active=None):
  """One window of K steps for every particle. Returns (new particles, Outcome). Inactive particles (`active`
  False, used while staggering) stay where they are and count as not valid."""
  k = s.truncation_length
  keys = particles.window_keys(key, s.num_particles, s.mesh)
  pl = particles.plan(p, keys, k, rule.redraw)
  how = draw_settings(system, rule, s)
  draws = window.draw(s.noise, theta, p, pl, keys, how)
  final, losses = _unroll(system, rule, s, theta, p, pl, keys, draws, how)
  after = jnp.arange(k)[None, :] >= pl.reset_slot[:, None]
  horizon = new_horizons(s, keys)
  losses = _weighted(losses.astype(jnp.float32), step_weights(s, p, horizon, after))
  valid = gradient.finite_particles(losses)
  weight, memory = _weights(rule, s, p, pl, draws)
  new = particles.advance(p, pl, keys, particles.constrain(s.mesh, final), valid, memory, k, draws.kept, horizon)
  if active is not None:
    new = particles.tree_select(active, new, p)._replace(init_steps=p.init_steps)
    valid &= active
  return new, Outcome(losses, after, pl.resets, valid, weight, draws.post)


def _weighted(losses, weights):
  """Losses [N, M, K] times per-slot weights [N, K] (None: unweighted)."""
  return losses if weights is None else losses * weights[:, None, :]


def es_gradient(rule, s: Settings, out: Outcome, theta):
  """Loss differences → (the fitness transform) → per-particle coefficients → the estimate in θ's shape and
  dtypes. Returns (estimate, the transform's info)."""
  diffs = rule.pairing.differences(out.losses, out.valid)
  diffs, extra = (diffs, {}) if s.fitness is None else s.fitness.transform(diffs, out.valid, out.losses)
  c = gradient.coefficients(diffs, out.after_reset, out.valid, s.sigma, s.truncation_length)
  grad = gradient.combine(s.noise, c, out.weight, out.eps_post, theta)
  if s.diagnostics:
    extra = dict(extra, **gradient.diagnostics(s.noise, c, out.weight, out.eps_post, grad, out.valid))
  return grad, extra


def burn_in(window_fn, s: Settings, horizon: float, p, key):
  """Staggers particles: particle i runs ⌊i·W/N⌋ whole windows first (W = ⌈T/K⌉ windows per episode; with a
  horizon schedule, T its mean length).

  The burn-in uses the estimator's own windows (its noise, weighting and resets), so the state it leaves is one
  the estimator itself would have reached, and windows then spread evenly over the horizon.
  """
  n, k = s.num_particles, s.truncation_length
  per_episode = math.ceil(horizon / k)
  if per_episode <= 1:
    return p
  offsets = (jnp.arange(n) * per_episode) // n

  def one(p, w):
    return window_fn(p, jax.random.fold_in(key, w), w < offsets)[0], None
  p, _ = jax.lax.scan(one, p, jnp.arange(per_episode - 1))
  return p._replace(init_steps=(jnp.sum(offsets) * s.members * k).astype(jnp.int32))


def _info(s: Settings, out: Outcome):
  return gradient.info(out.losses, out.valid, out.resets, s.num_particles, s.members, s.truncation_length)


def noise_use(rule: rules.Rule, s: Settings, name: str) -> Use:
  """What the estimator `name` running `rule` guarantees a noise (see noise.base.Use)."""
  with jax.ensure_compile_time_eval():   # constructors may run inside a trace (ue.guided builds one per call)
    redraws_every_window = bool(rule.redraw(jnp.array([2]))[0])
  together = rule.whole_episodes or redraws_every_window
  own = rule.whole_episodes or (redraws_every_window and rule.weighting is rules.CURRENT_DRAW)
  return Use(name, draws_together=together, own_draws_only=own, masked=s.mask is not None)


def es_estimator(system, rule: rules.Rule, *, name: str = "es_estimator", **settings) -> GradientEstimator:
  """The GradientEstimator that runs `rule` on `system` with the shared settings (see estimator.settings):
  num_particles, sigma, truncation_length, stagger, noise, mask, mesh, horizons, fitness, diagnostics. `name` is
  how errors name the estimator (e.g. when its noise needs what the rule does not give)."""
  s = make_settings(system, members=len(rule.pairing.signs), **settings)
  s.noise.check(noise_use(rule, s, name))

  def init(key, theta):
    init_key, burn_key = checked_call(system, s, key, theta)
    draw_shapes = jax.eval_shape(s.noise.sample, init_key, theta) if keeps_draws(rule, s) else None
    p = particles.initial(jax.eval_shape(system.init, init_key, theta), s.num_particles, s.members,
                          system.horizon, rule.weighting.init(theta, s.num_particles), s.mesh, draw_shapes)
    if s.stagger:
      p = burn_in(lambda p, k, active: es_window(system, rule, s, theta, p, k, active), s,
                  s.mean_episode_length(system), p, burn_key)
    return p

  def estimate(key, theta, state):
    checked_call(system, s, key, theta)
    if rule.whole_episodes:
      state = particles.episode_begins(state)
    state, out = es_window(system, rule, s, theta, state, key)
    grad, extra = es_gradient(rule, s, out, theta)
    return grad, state, dict(_info(s, out), **extra)

  return GradientEstimator(init=init, estimate=estimate)


def _member_losses(system, k, theta, inner0, init_key, base, j_reset, weights):
  """Mean loss (and final states, weighted losses) of one particle's single unperturbed member over the window; a
  new episode's init is inside, so autodiff differentiates through it. `weights` [K]: the slots' weights."""
  fresh = jax.vmap(lambda _: system.init(init_key, theta))(jnp.arange(1))
  final, losses = jax.vmap(lambda s0, new: window.scan_steps_with_reset(system, theta, theta, s0, new, base,
                                                                        j_reset, k))(inner0, fresh)
  losses = losses.astype(jnp.float32) * weights
  return jnp.mean(losses), (final, losses)


def autodiff_window(system, s: Settings, theta, p, key, active=None, differentiate=True):
  """One window of K steps for every particle with the unperturbed θ; with `differentiate`, each particle's
  gradient of its window's mean loss by reverse-mode autodiff (truncated BPTT). Returns (new particles, Outcome)."""
  k = s.truncation_length
  keys = particles.window_keys(key, s.num_particles, s.mesh)
  pl = particles.plan(p, keys, k, rules.never)
  after = jnp.arange(k)[None, :] >= pl.reset_slot[:, None]
  horizon = new_horizons(s, keys)
  weights = step_weights(s, p, horizon, after)
  weights = jnp.ones((s.num_particles, k), jnp.float32) if weights is None else weights
  run = lambda th, *a: _member_losses(system, k, th, *a)
  args = (theta, p.inner, keys.init, keys.steps, pl.reset_slot, weights)
  if differentiate:
    (_, (final, losses)), grads = jax.vmap(jax.value_and_grad(run, has_aux=True), (None, 0, 0, 0, 0, 0))(*args)
  else:
    (_, (final, losses)), grads = jax.vmap(run, (None, 0, 0, 0, 0, 0))(*args), None
  valid = gradient.finite_particles(losses, grads)
  new = particles.advance(p, pl, keys, particles.constrain(s.mesh, final), valid, None, k, None, horizon)
  if active is not None:
    new = particles.tree_select(active, new, p)._replace(init_steps=p.init_steps)
    valid &= active
  return new, Outcome(losses, after, pl.resets, valid, grads, None)


def autodiff_estimator(system, whole_episodes: bool = False, **settings) -> GradientEstimator:
  """Truncated BPTT (or, with `whole_episodes`, full BPTT): the mean over particles of autodiff gradients of each
  window's mean loss, the window's starting state held constant."""
  s = make_settings(system, members=1, **settings)

  def init(key, theta):
    init_key, burn_key = checked_call(system, s, key, theta)
    p = particles.initial(jax.eval_shape(system.init, init_key, theta), s.num_particles, 1, system.horizon, None,
                          s.mesh)
    if s.stagger:
      window_fn = lambda p, k, active: autodiff_window(system, s, theta, p, k, active, differentiate=False)
      p = burn_in(window_fn, s, s.mean_episode_length(system), p, burn_key)
    return p

  def estimate(key, theta, state):
    checked_call(system, s, key, theta)
    if whole_episodes:
      state = particles.episode_begins(state)
    state, out = autodiff_window(system, s, theta, state, key)
    grad, info = gradient.mean_gradient(out.weight, out.valid, theta, s.mask), _info(s, out)
    if s.diagnostics:
      info = dict(info, **gradient.sample_diagnostics(out.weight, out.valid, grad))
    return grad, state, info

  return GradientEstimator(init=init, estimate=estimate)
