"""Truncated ES: antithetic ES on each window alone (the biased baseline; e.g. Metz et al., 2019).

Each window draws a fresh ε_i; both members start from the same inner state (the + member's, carried on), and

    ĝ = 1/(2Nσ²) Σ_i ε_i (L⁺_i − L⁻_i)

ignores θ's influence on the window's starting state, so it is biased whenever the system has memory.
"""
from unrolled_es.core import rules
from unrolled_es.core.engine import es_estimator
from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.estimators.registry import register

# A fresh draw weights each window, and every member starts the window from the first member's state.
RULE = rules.Rule(redraw=rules.every(1), weighting=rules.CURRENT_DRAW, window_start=rules.first_member_state)


@register("truncated_es")
def truncated_es(system, *, num_particles, sigma, truncation_length, antithetic=True, stagger=True,
                 noise=None, mask=None, mesh=None, horizons=None, fitness=None,
                 diagnostics=False) -> GradientEstimator:
  """Truncated ES: a fresh draw per window from a shared start (biased: forgets θ's influence on the past)."""
  return es_estimator(system, RULE._replace(pairing=rules.pairing_for(antithetic)), num_particles=num_particles,
                      sigma=sigma, truncation_length=truncation_length, stagger=stagger, noise=noise, mask=mask,
                      mesh=mesh, horizons=horizons, fitness=fitness, diagnostics=diagnostics)
