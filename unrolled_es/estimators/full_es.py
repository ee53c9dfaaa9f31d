"""Full ES (Salimans et al., 2017) on whole episodes: every call unrolls each particle from step 0 to T.

    ĝ = 1/(2Nσ²) Σ_i ε_i (L(θ+ε_i) − L(θ−ε_i)),   ε ~ N(0, σ²I),

unbiased for the gradient of the Gaussian-smoothed episode loss, at T inner steps of latency per estimate.
"""
from unrolled_es.estimator import GradientEstimator, build, make_config
from unrolled_es.system import check_system


def full_es(system, *, num_particles, sigma, antithetic=True, noise=None, mesh=None) -> GradientEstimator:
  cfg = make_config(check_system(system), num_particles=num_particles, truncation_length=system.horizon,
                    sigma=sigma, noise=noise, antithetic=antithetic, mesh=mesh)
  return build(system, cfg._replace(windows_per_draw=None, fresh_episodes=True))
