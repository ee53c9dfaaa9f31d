"""ES-Single against an unperturbed member: one-sided ES whose baseline is the particle's own θ run.

Each particle runs θ + σε_i and θ itself, from the same episode start and on the same step keys, and

    ĝ = 1/(Nσ²) Σ_i ε_i (L(θ + ε_i) − L(θ)),   ε ~ N(0, σ²I), one draw per particle per episode,

as in EGGROLL's baseline-subtracted variant (Sarkar et al. 2025), which subtracts an unperturbed member's score
within each group. E[ε_i L(θ)] = 0, so it is unbiased wherever ES-Single is. Against one-sided ES with the other
particles' mean as baseline it removes the loss's level exactly for this particle's data, inner state and point in
its episode, which staggered particles do not share (their losses differ by where they are in the episode); and
the unperturbed member's losses are the actual loss along the particle's trajectory, reported as
`info["unperturbed_loss"]`. Antithetic pairs cancel every even-order term of L and are usually lower in variance
for smooth losses at the same cost (two members per particle).
"""

from unrolled_es.core import rules
from unrolled_es.core.engine import es_estimator
from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.estimators.registry import register

# The draw weights L(θ + σε) − L(θ); it changes only when an episode starts.
RULE = rules.Rule(redraw=rules.never, weighting=rules.CURRENT_DRAW, pairing=rules.UNPERTURBED_BASELINE)


@register("baseline_es")
def baseline_es(system, *, num_particles, sigma, truncation_length, stagger=True, noise=None, mask=None,
                mesh=None, horizons=None, fitness=None, diagnostics=False) -> GradientEstimator:
  """ES-Single with the particle's unperturbed run as baseline (one-sided; reports the unperturbed loss).

  system:             the UnrolledSystem(init, step, horizon) whose unroll the estimate goes through.
  num_particles:      N ≥ 1 particles, each running two members, θ+σε and θ: an estimate runs 2N unrolls.
  sigma:              σ > 0, finite: the perturbation's standard deviation per coordinate.
  truncation_length:  K in [1, T]: the inner steps every particle advances per estimate.
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

  There is no antithetic: the pairing is the particle's own unperturbed run. info["unperturbed_loss"] holds
  that run's window loss per particle.

  Returns GradientEstimator(init, estimate): state = init(key, θ); grad, state, info = estimate(key, θ, state).
  """
  est = es_estimator(system, RULE, num_particles=num_particles, sigma=sigma, truncation_length=truncation_length,
                     stagger=stagger, noise=noise, mask=mask, mesh=mesh, horizons=horizons, fitness=fitness,
                     diagnostics=diagnostics, name="baseline_es")

  def estimate(key, theta, state):
    grad, state, info = est.estimate(key, theta, state)
    return grad, state, dict(info, unperturbed_loss=info["member_loss"][1])

  return est._replace(estimate=estimate)
