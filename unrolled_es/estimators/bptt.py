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
  """Truncated BPTT: autodiff through one window from a fixed starting state (biased)."""
  return autodiff_estimator(system, num_particles=num_particles, truncation_length=truncation_length,
                            stagger=stagger, mask=mask, mesh=mesh, horizons=horizons, diagnostics=diagnostics)


@register("full_bptt")
def full_bptt(system, *, num_particles=1, mask=None, mesh=None) -> GradientEstimator:
  """Full BPTT: autodiff through whole episodes (exact; may explode on long or chaotic unrolls)."""
  return autodiff_estimator(system, whole_episodes=True, num_particles=num_particles, mask=mask, mesh=mesh)
