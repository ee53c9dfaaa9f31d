"""The autodiff baselines: truncated BPTT (Williams & Peng, 1990) and full BPTT.

truncated_bptt: ∇θ of the window's mean loss with the window's starting state held constant (biased: it
ignores θ's influence through earlier windows); a reset inside the window starts a new episode from
init(key, θ), which is differentiated through. full_bptt: ∇θ of the mean loss of a whole episode (exact, when
it does not explode). Both average over `num_particles` independent inner problems and leave out particles
whose losses or gradients are not finite.
"""
from unrolled_es.core.engine import autodiff_estimator
from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.estimators.registry import register


@register("truncated_bptt")
def truncated_bptt(system, *, truncation_length, num_particles=1, stagger=True, mask=None, mesh=None,
                   horizons=None, diagnostics=False) -> GradientEstimator:
  """Truncated BPTT: autodiff through one window from a fixed starting state (biased).

  system:             the UnrolledSystem(init, step, horizon) whose unroll the estimate goes through.
  truncation_length:  K in [1, T]: the inner steps differentiated through per estimate.
  num_particles:      N ≥ 1 independent inner problems averaged (default 1): N unrolls per estimate.
  stagger:            True (default): `init` spreads the particles evenly over the horizon, so their
                      estimates are not correlated in time; False: every particle starts at step 0.
  mask:               θ-shaped pytree of bools, or None: coordinates outside it get a zero gradient.
  mesh:               a jax.sharding.Mesh with a "particles" axis (ue.particle_mesh()): particles split over
                      its devices, N a multiple of their number; None: one device.
  horizons:           a schedule of per-episode lengths (ue.horizons.constant(T), log_uniform(low, high)),
                      drawn at each reset, each step weighted by E[T]/T; None: every episode has the system's T.
  diagnostics:        True: info also holds variance_ratio, effective_particles and gradient_variance,
                      the estimate's spread over its particles.

  No σ, noise or fitness: the gradient is exact for the window, biased for the episode.

  Returns GradientEstimator(init, estimate): state = init(key, θ); grad, state, info = estimate(key, θ, state).
  """
  return autodiff_estimator(system, num_particles=num_particles, truncation_length=truncation_length,
                            stagger=stagger, mask=mask, mesh=mesh, horizons=horizons, diagnostics=diagnostics)


@register("full_bptt")
def full_bptt(system, *, num_particles=1, mask=None, mesh=None, diagnostics=False) -> GradientEstimator:
  """Full BPTT: autodiff through whole episodes (exact; may explode on long or chaotic unrolls).

  system:             the UnrolledSystem(init, step, horizon) whose unroll the estimate goes through.
  num_particles:      N ≥ 1 independent episodes averaged (default 1).
  mask:               θ-shaped pytree of bools, or None: coordinates outside it get a zero gradient.
  mesh:               a jax.sharding.Mesh with a "particles" axis (ue.particle_mesh()): particles split over
                      its devices, N a multiple of their number; None: one device.
  diagnostics:        True: info also holds variance_ratio, effective_particles and gradient_variance,
                      the estimate's spread over its particles.

  Memory grows with T (the whole episode's activations are kept for the backward pass).

  Returns GradientEstimator(init, estimate): state = init(key, θ); grad, state, info = estimate(key, θ, state).
  """
  return autodiff_estimator(system, whole_episodes=True, num_particles=num_particles, mask=mask, mesh=mesh,
                            diagnostics=diagnostics)
