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
  """Full ES: whole episodes per call (unbiased for the smoothed episode loss; T steps of latency)."""
  return es_estimator(system, RULE._replace(pairing=rules.pairing_for(antithetic)), num_particles=num_particles,
                      sigma=sigma, noise=noise, mask=mask, mesh=mesh, fitness=fitness, diagnostics=diagnostics)
