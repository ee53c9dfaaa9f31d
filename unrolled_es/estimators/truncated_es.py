"""Truncated ES: antithetic ES on each window alone (the biased baseline; e.g. Metz et al., 2019).

Each window draws a fresh ε_i; both members start from the same inner state (the + member's, carried on), and

    ĝ = 1/(2Nσ²) Σ_i ε_i (L⁺_i − L⁻_i)

ignores θ's influence on the window's starting state, so it is biased whenever the system has memory.
"""
from unrolled_es.estimator import GradientEstimator, build, make_config


def truncated_es(system, *, num_particles, sigma, truncation_length, antithetic=True, stagger=True,
                 noise=None, mesh=None) -> GradientEstimator:
  cfg = make_config(system, num_particles=num_particles, truncation_length=truncation_length, sigma=sigma,
                    noise=noise, antithetic=antithetic, stagger=stagger, mesh=mesh)
  return build(system, cfg._replace(windows_per_draw=1, sync_members=True))
