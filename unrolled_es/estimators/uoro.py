"""UORO, unbiased online recurrent optimization (Tallec & Ollivier, ICLR 2018), for systems with a differentiable
step: the forward-mode baseline that the PES and NRES papers compare against.

Each particle carries a rank-one estimate s̃ θ̃ᵀ of ∂s_t/∂θ, reset to zero when its episode starts. At every inner
step, with ν a fresh vector of random signs in the state's shape,

    a = (∂F/∂s) s̃ (a JVP),   b = νᵀ ∂F/∂θ (a VJP),   ρ₀ = √(‖θ̃‖/‖a‖),   ρ₁ = √(‖b‖/‖ν‖),
    g_t = (∂ℓ_t/∂s · s̃) θ̃ + ∂ℓ_t/∂θ,            s̃ ← ρ₀ a + ρ₁ ν,   θ̃ ← θ̃/ρ₀ + b/ρ₁,

and the estimate for a window is the mean of g_t over its K steps and the particles. E[s̃ θ̃ᵀ] = ∂s_t/∂θ (ν's signs
average the cross terms away; ρ₁ is even in ν), so g_t is unbiased for dℓ_t/dθ through the whole episode, like
PES and ES-Single, at the cost of one JVP and two VJPs per step and with a variance that grows with the state's
dimension. θ's influence through `init` is not carried (s̃ starts at zero): give UORO systems whose init does not
depend on θ, or accept that bias. Integer state leaves are carried as constants.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es.core import gradient
from unrolled_es.core import particles
from unrolled_es.core.engine import Outcome, _info, burn_in
from unrolled_es.core.estimator import GradientEstimator, checked_call, settings as make_settings
from unrolled_es.estimators.registry import register
from unrolled_es.core.rules import never
from unrolled_es.core.system import step_key

_NU = 0x0B0E   # folded into a step's key for its random signs ν
_EPS = 1e-7


class Trace(NamedTuple):
  """A particle's rank-one estimate s̃ θ̃ᵀ of ∂s/∂θ."""
  s: object
  theta: object


def _is_float(x):
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _tangent(state, values=None):
  """A tangent of `state`: `values` (or zeros) on float leaves, float0 zeros on integer leaves."""
  values = jax.tree_util.tree_map(jnp.zeros_like, state) if values is None else values
  return jax.tree_util.tree_map(lambda x, v: v if _is_float(x) else np.zeros(jnp.shape(x), jax.dtypes.float0),
                                state, values)


def _norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)
                      if _is_float(x)))


def signs(key, state):
  """ν: ±1 on every float leaf of the state (zeros elsewhere), from the step's key."""
  leaves, treedef = jax.tree_util.tree_flatten(state)
  keys = jax.random.split(jax.random.fold_in(key, _NU), len(leaves))
  out = [jax.random.rademacher(k, jnp.shape(x), jnp.result_type(x)) if _is_float(x) else jnp.zeros_like(x)
         for k, x in zip(keys, leaves)]
  return jax.tree_util.tree_unflatten(treedef, out)


def uoro_step(system, theta, state, trace: Trace, key):
  """One inner step with its UORO update. Returns (new state, loss, g_t, new trace)."""
  (new_state, loss), (a, dloss) = jax.jvp(lambda s: system.step(theta, s, key), (state,),
                                         (_tangent(state, trace.s),))
  _, vjp = jax.vjp(lambda th: system.step(th, state, key), theta)
  nu = signs(key, new_state)
  (b,) = vjp((_tangent(new_state, nu), jnp.zeros_like(loss)))
  (direct,) = vjp((_tangent(new_state), jnp.ones_like(loss)))
  g = jax.tree_util.tree_map(lambda t, d: dloss.astype(jnp.float32) * t + d.astype(jnp.float32), trace.theta, direct)
  rho0 = jnp.sqrt((_norm(trace.theta) + _EPS) / (_norm(a) + _EPS))
  rho1 = jnp.sqrt((_norm(b) + _EPS) / (_norm(nu) + _EPS))
  s_new = jax.tree_util.tree_map(lambda x, ai, n: (rho0 * ai + rho1 * n).astype(x.dtype) if _is_float(x) else ai,
                                 new_state, _floats_or_zero(a, new_state), nu)
  th_new = jax.tree_util.tree_map(lambda t, bi: t / rho0 + bi.astype(jnp.float32) / rho1, trace.theta, b)
  return new_state, loss, g, Trace(s_new, th_new)


def _floats_or_zero(tangent, state):
  return jax.tree_util.tree_map(lambda t, x: t if _is_float(x) else jnp.zeros_like(x), tangent, state)


def _fresh_trace(state, theta):
  return Trace(jax.tree_util.tree_map(jnp.zeros_like, state),
               jax.tree_util.tree_map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), theta))


def _particle_window(system, k, theta, inner, trace, init_key, base, j_reset):
  """One particle's K steps; at slot j_reset its episode restarts with a zero trace. Returns (state, trace,
  losses [K], mean g over the window)."""
  fresh_state = system.init(init_key, theta)
  fresh = _fresh_trace(fresh_state, theta)

  def slot(carry, j):
    state, tr, total = carry
    restart = j == j_reset
    state = particles.tree_select(restart, fresh_state, state)
    tr = particles.tree_select(restart, fresh, tr)
    state, loss, g, tr = uoro_step(system, theta, state, tr, step_key(base, j))
    return (state, tr, jax.tree_util.tree_map(jnp.add, total, g)), loss
  zero = jax.tree_util.tree_map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), theta)
  (state, trace, total), losses = jax.lax.scan(slot, (inner, trace, zero), jnp.arange(k))
  return state, trace, losses, jax.tree_util.tree_map(lambda t: t / k, total)


def _window(system, s, theta, p, key, active=None):
  k = s.truncation_length
  keys = particles.window_keys(key, s.num_particles, s.mesh)
  pl = particles.plan(p, keys, k, never)
  one = lambda inner, trace, ik, base, jr: _particle_window(system, k, theta, inner, trace, ik, base, jr)
  inner = jax.tree_util.tree_map(lambda x: x[:, 0], p.inner)
  state, trace, losses, grads = jax.vmap(one)(inner, p.memory, keys.init, keys.steps, pl.reset_slot)
  losses = losses[:, None].astype(jnp.float32)
  valid = gradient.finite_particles(losses, grads)
  final = jax.tree_util.tree_map(lambda x: x[:, None], state)
  new = particles.advance(p, pl, keys, particles.constrain(s.mesh, final), valid, trace, k)
  if active is not None:
    new = particles.tree_select(active, new, p)._replace(init_steps=p.init_steps)
    valid &= active
  after = jnp.arange(k)[None, :] >= pl.reset_slot[:, None]
  return new, Outcome(losses, after, pl.resets, valid, grads, None)


@register("uoro")
def uoro(system, *, truncation_length, num_particles=1, stagger=True, mask=None, mesh=None,
         diagnostics=False) -> GradientEstimator:
  """UORO (Tallec & Ollivier 2018): forward-mode rank-one tracking of ∂s/∂θ (unbiased; differentiable steps).

  system:             the UnrolledSystem(init, step, horizon) whose unroll the estimate goes through.
  truncation_length:  K in [1, T]: the inner steps every particle advances per estimate.
  num_particles:      N ≥ 1 independent particles averaged (default 1), each with its own trace s̃ θ̃ᵀ.
  stagger:            True (default): `init` spreads the particles evenly over the horizon, so their
                      estimates are not correlated in time; False: every particle starts at step 0.
  mask:               θ-shaped pytree of bools, or None: coordinates outside it get a zero gradient.
  mesh:               a jax.sharding.Mesh with a "particles" axis (ue.particle_mesh()): particles split over
                      its devices, N a multiple of their number; None: one device.
  diagnostics:        True: info also holds variance_ratio, effective_particles and gradient_variance,
                      the estimate's spread over its particles.

  The step must be differentiable in the state and θ; θ's influence through init is not carried.

  Returns GradientEstimator(init, estimate): state = init(key, θ); grad, state, info = estimate(key, θ, state).
  """
  s = make_settings(system, members=1, num_particles=num_particles, truncation_length=truncation_length,
                    stagger=stagger, mask=mask, mesh=mesh, diagnostics=diagnostics)

  def init(key, theta):
    init_key, burn_key = checked_call(system, s, key, theta)
    shapes = jax.eval_shape(system.init, init_key, theta)
    trace = jax.vmap(lambda _: _fresh_trace(jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes),
                                            theta))(jnp.arange(s.num_particles))
    p = particles.initial(shapes, s.num_particles, 1, system.horizon, trace, s.mesh)
    if s.stagger:
      p = burn_in(lambda p, kk, active: _window(system, s, theta, p, kk, active), s, float(system.horizon), p,
                  burn_key)
    return p

  def estimate(key, theta, state):
    checked_call(system, s, key, theta)
    state, out = _window(system, s, theta, state, key)
    grad, info = gradient.mean_gradient(out.weight, out.valid, theta, s.mask), _info(s, out)
    if s.diagnostics:   # the estimate is a mean of per-particle gradients, as BPTT's
      info = dict(info, **gradient.sample_diagnostics(out.weight, out.valid, grad))
    return grad, state, info

  return GradientEstimator(init=init, estimate=estimate)
