"""The autodiff baselines: truncated BPTT (Williams & Peng, 1990) and full BPTT.

truncated_bptt: ∇θ of the window's mean loss with the window's starting state held constant (biased: it
ignores θ's influence through earlier windows); a reset inside the window starts a new episode from
init(key, θ), which is differentiated through. full_bptt: ∇θ of the mean loss of a whole episode (exact, when
it does not explode). Both average over `num_particles` independent inner problems and leave out particles
whose losses or gradients are not finite.
"""
from unrolled_es.estimator import GradientEstimator, build, make_config
from unrolled_es.system import check_system


def truncated_bptt(system, *, truncation_length, num_particles=1, stagger=True,
                   mesh=None) -> GradientEstimator:
  cfg = make_config(system, num_particles=num_particles, truncation_length=truncation_length, stagger=stagger,
                    mesh=mesh)
  return build(system, cfg)


def full_bptt(system, *, num_particles=1, mesh=None) -> GradientEstimator:
  cfg = make_config(check_system(system), num_particles=num_particles, truncation_length=system.horizon,
                    mesh=mesh)
  return build(system, cfg._replace(fresh_episodes=True))
