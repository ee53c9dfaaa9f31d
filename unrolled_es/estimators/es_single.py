"""ES-Single (Vicol, Kolter & Swersky, 2023), also NRES, noise-reuse ES (Li, Metz, Sohl-Dickstein et al., 2023).

One draw ε_i per particle per episode, reused in every window and redrawn only at the particle's reset (inside
the window, at the exact step: redrawing per window instead would silently bias the steps after a mid-window
reset):

    ĝ = 1/(2Nσ²) Σ_i ε_i (L⁺_i − L⁻_i),   ε ~ N(0, σ²I).

Unbiased for the gradient of the window's loss through the whole episode, with variance flat in the number of
windows unrolled (Li et al. show it is no larger than PES's or full ES's under their assumptions). It stores
only a key per particle: the noise is regenerated each window.
"""
from unrolled_es.core import rules
from unrolled_es.core.engine import es_estimator
from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.estimators.registry import register

# The draw weights the losses; it changes only when an episode starts.
RULE = rules.Rule(redraw=rules.never, weighting=rules.CURRENT_DRAW)


@register("es_single")
def es_single(system, *, num_particles, sigma, truncation_length, antithetic=True, stagger=True, noise=None,
              mask=None, mesh=None, horizons=None, fitness=None, diagnostics=False) -> GradientEstimator:
  """ES-Single / NRES: one draw per particle per episode (unbiased, variance flat in the number of windows).

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
  return es_estimator(system, RULE._replace(pairing=rules.pairing_for(antithetic)), num_particles=num_particles,
                      sigma=sigma, truncation_length=truncation_length, stagger=stagger, noise=noise, mask=mask,
                      mesh=mesh, horizons=horizons, fitness=fitness, diagnostics=diagnostics, name="es_single")


nres = register("nres", es_single)
