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
  """ES-Single / NRES: one draw per particle per episode (unbiased, variance flat in the number of windows)."""
  return es_estimator(system, RULE._replace(pairing=rules.pairing_for(antithetic)), num_particles=num_particles,
                      sigma=sigma, truncation_length=truncation_length, stagger=stagger, noise=noise, mask=mask,
                      mesh=mesh, horizons=horizons, fitness=fitness, diagnostics=diagnostics)


nres = register("nres", es_single)
