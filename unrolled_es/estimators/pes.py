"""Persistent ES (Vicol, Metz & Sohl-Dickstein, ICML 2021) and its generalisation GPES-k (Li et al., 2023).

Each particle redraws ε every k inner steps (k a multiple of the window K) and keeps ξ_i, the sum of its
draws over the episode so far, this window's included. The estimate for a window is

    ĝ = 1/(2Nσ²) Σ_i ξ_i (L⁺_i − L⁻_i),   with ε ~ N(0, σ²I),

unbiased for the gradient of the window's mean loss through the whole episode so far. k = K is PES (variance
grows with the number of windows unrolled); k ≥ T never redraws within an episode and is ES-Single/NRES.
A reset inside a window weights the losses after it by the new draw only, and ξ restarts from that draw.
"""
from unrolled_es.core import rules
from unrolled_es.core.engine import es_estimator
from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.estimators.registry import register
from unrolled_es.core.system import check_int, check_system


def rule(windows_per_draw: int | None) -> rules.Rule:
  """The sum ξ of the episode's draws weights the losses; a new draw every `windows_per_draw` windows (None: once
  per episode, which makes ξ the one draw: ES-Single)."""
  if windows_per_draw is None:
    return rules.Rule(redraw=rules.never, weighting=rules.CURRENT_DRAW)
  return rules.Rule(redraw=rules.every(windows_per_draw), weighting=rules.EPISODE_SUM)


def _windows_per_draw(resample_every, k, horizon):
  if resample_every is None:
    return None
  resample_every = check_int("resample_every", resample_every, k)
  if resample_every < horizon and resample_every % k:
    raise ValueError(f"resample_every must be a multiple of truncation_length ({k}), >= horizon ({horizon}), "
                     f"or None; got {resample_every}")
  return None if resample_every >= horizon else resample_every // k


@register("generalized_pes")
def generalized_pes(system, *, num_particles, sigma, truncation_length, resample_every=None, antithetic=True,
                    stagger=True, noise=None, mask=None, mesh=None, horizons=None,
                    fitness=None, diagnostics=False) -> GradientEstimator:
  """GPES-k: noise redrawn every `resample_every` inner steps (None: once per episode) and accumulated.

  system:             the UnrolledSystem(init, step, horizon) whose unroll the estimate goes through.
  num_particles:      N ≥ 1. With antithetic=True each particle is a pair (θ+σε and θ−σε on the same step
                      keys), so an estimate runs 2N unrolls; with antithetic=False, N unrolls.
  sigma:              σ > 0, finite: the perturbation's standard deviation per coordinate.
  truncation_length:  K in [1, T]: the inner steps every particle advances per estimate.
  resample_every:     k, a multiple of truncation_length (k = K is PES), or ≥ horizon, or None (once per
                      episode: ES-Single).
  antithetic:         True (default): antithetic pairs; False: one member per particle, each against the
                      mean loss of the other particles at the same step.
  stagger:            True (default): `init` spreads the particles evenly over the horizon, so their
                      estimates are not correlated in time; False: every particle starts at step 0.
  noise:              ue.gaussian() (None, the default), ue.gaussian(scale=...) or ue.low_rank(r), either
                      with factored=True, or ue.orthogonal(...) of one.
  mask:               θ-shaped pytree of bools, or None: coordinates outside it are not perturbed and get a
                      zero gradient.
  mesh:               a jax.sharding.Mesh with a "particles" axis (ue.particle_mesh()): particles split over
                      its devices, N a multiple of their number; None: one device.
  horizons:           a schedule of per-episode lengths (ue.horizons.constant(T), log_uniform(low, high)),
                      drawn at each reset, each step weighted by E[T]/T; None: every episode has the system's T.
  fitness:            a transform of the loss differences (ue.fitness.clipped(c), centered_ranks(),
                      z_scores(), chain(...)); None (default): the raw differences, unbiased.
  diagnostics:        True: info also holds variance_ratio, effective_particles and gradient_variance,
                      the estimate's spread over its particles.

  Returns GradientEstimator(init, estimate): state = init(key, θ); grad, state, info = estimate(key, θ, state).
  """
  return _build(system, resample_every, "generalized_pes" if resample_every is None else
                f"generalized_pes(resample_every={resample_every})", num_particles=num_particles, sigma=sigma,
                truncation_length=truncation_length, antithetic=antithetic, stagger=stagger, noise=noise, mask=mask,
                mesh=mesh, horizons=horizons, fitness=fitness, diagnostics=diagnostics)


def _build(system, resample_every, name, *, truncation_length, antithetic, **settings):
  """GPES-k's estimator, named `name` in errors."""
  check_system(system)
  k = check_int("truncation_length", truncation_length, 1, system.horizon)
  r = rule(_windows_per_draw(resample_every, k, system.horizon))
  return es_estimator(system, r._replace(pairing=rules.pairing_for(antithetic)), name=name, truncation_length=k,
                      **settings)


@register("pes")
def pes(system, *, num_particles, sigma, truncation_length, antithetic=True, stagger=True, noise=None,
        mask=None, mesh=None, horizons=None, fitness=None, diagnostics=False) -> GradientEstimator:
  """PES: a fresh draw every window, weighted by the running sum of the episode's draws.

  system:             the UnrolledSystem(init, step, horizon) whose unroll the estimate goes through.
  num_particles:      N ≥ 1. With antithetic=True each particle is a pair (θ+σε and θ−σε on the same step
                      keys), so an estimate runs 2N unrolls; with antithetic=False, N unrolls.
  sigma:              σ > 0, finite: the perturbation's standard deviation per coordinate.
  truncation_length:  K in [1, T]: the inner steps every particle advances per estimate.
  antithetic:         True (default): antithetic pairs; False: one member per particle, each against the
                      mean loss of the other particles at the same step.
  stagger:            True (default): `init` spreads the particles evenly over the horizon, so their
                      estimates are not correlated in time; False: every particle starts at step 0.
  noise:              ue.gaussian() (None, the default), ue.gaussian(scale=...) or ue.low_rank(r), either
                      with factored=True, or ue.orthogonal(...) of one.
  mask:               θ-shaped pytree of bools, or None: coordinates outside it are not perturbed and get a
                      zero gradient.
  mesh:               a jax.sharding.Mesh with a "particles" axis (ue.particle_mesh()): particles split over
                      its devices, N a multiple of their number; None: one device.
  horizons:           a schedule of per-episode lengths (ue.horizons.constant(T), log_uniform(low, high)),
                      drawn at each reset, each step weighted by E[T]/T; None: every episode has the system's T.
  fitness:            a transform of the loss differences (ue.fitness.clipped(c), centered_ranks(),
                      z_scores(), chain(...)); None (default): the raw differences, unbiased.
  diagnostics:        True: info also holds variance_ratio, effective_particles and gradient_variance,
                      the estimate's spread over its particles.

  Returns GradientEstimator(init, estimate): state = init(key, θ); grad, state, info = estimate(key, θ, state).
  """
  return _build(system, truncation_length, "pes", num_particles=num_particles, sigma=sigma,
                truncation_length=truncation_length, antithetic=antithetic, stagger=stagger, noise=noise, mask=mask,
                mesh=mesh, horizons=horizons, fitness=fitness, diagnostics=diagnostics)
