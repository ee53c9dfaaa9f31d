"""Full ES (Salimans et al., 2017) on whole episodes: every call unrolls each particle from step 0 to T.

    ĝ = 1/(2Nσ²) Σ_i ε_i (L(θ+ε_i) − L(θ−ε_i)),   ε ~ N(0, σ²I),

unbiased for the gradient of the Gaussian-smoothed episode loss, at T inner steps of latency per estimate.
"""
from unrolled_es.core import rules
from unrolled_es.core.engine import es_estimator
from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.estimators.registry import register

# One draw per episode weights its losses, and every call is a whole new episode.
RULE = rules.Rule(redraw=rules.never, weighting=rules.CURRENT_DRAW, whole_episodes=True)


@register("full_es")
def full_es(system, *, num_particles, sigma, antithetic=True, noise=None, mask=None, mesh=None,
            fitness=None, diagnostics=False) -> GradientEstimator:
  """Full ES: whole episodes per call (unbiased for the smoothed episode loss; T steps of latency).

  system:             the UnrolledSystem(init, step, horizon) whose unroll the estimate goes through.
  num_particles:      N ≥ 1. With antithetic=True each particle is a pair, so an estimate runs 2N whole
                      episodes; with antithetic=False, N.
  sigma:              σ > 0, finite: the perturbation's standard deviation per coordinate.
  antithetic:         True (default): antithetic pairs; False: one member per particle, each against the
                      mean loss of the other particles at the same step.
  noise:              ue.gaussian() (None, the default), ue.gaussian(scale=...) or ue.low_rank(r), either
                      with factored=True, or ue.orthogonal(...) of one.
  mask:               θ-shaped pytree of bools, or None: coordinates outside it are not perturbed and get a
                      zero gradient.
  mesh:               a jax.sharding.Mesh with a "particles" axis (ue.particle_mesh()): particles split over
                      its devices, N a multiple of their number; None: one device.
  fitness:            a transform of the loss differences (ue.fitness.clipped(c), centered_ranks(),
                      z_scores(), chain(...)); None (default): the raw differences, unbiased.
  diagnostics:        True: info also holds variance_ratio, effective_particles and gradient_variance,
                      the estimate's spread over its particles.

  There is no truncation_length, stagger or horizons: every call starts new episodes and runs them to T.

  Returns GradientEstimator(init, estimate): state = init(key, θ); grad, state, info = estimate(key, θ, state).
  """
  return es_estimator(system, RULE._replace(pairing=rules.pairing_for(antithetic)), num_particles=num_particles,
                      sigma=sigma, noise=noise, mask=mask, mesh=mesh, fitness=fitness, diagnostics=diagnostics,
                      name="full_es")
