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
  """ES-Single with the particle's unperturbed run as baseline (one-sided; reports the unperturbed loss)."""
  est = es_estimator(system, RULE, num_particles=num_particles, sigma=sigma, truncation_length=truncation_length,
                     stagger=stagger, noise=noise, mask=mask, mesh=mesh, horizons=horizons, fitness=fitness,
                     diagnostics=diagnostics)

  def estimate(key, theta, state):
    grad, state, info = est.estimate(key, theta, state)
    return grad, state, dict(info, unperturbed_loss=info["member_loss"][1])

  return est._replace(estimate=estimate)
