"""ES-Single (Vicol, Kolter & Swersky, 2023), also NRES, noise-reuse ES (Li, Metz, Sohl-Dickstein et al., 2023).

One draw ε_i per particle per episode, reused in every window and redrawn at the particle's reset (inside the
window, at the exact step: redrawing per window instead would silently bias the steps after a mid-window reset):

    ĝ = 1/(2Nσ²) Σ_i ε_i (L⁺_i − L⁻_i),   ε ~ N(0, σ²I).

Unbiased for the gradient of the window's loss through the whole episode, with variance flat in the number of
windows unrolled (Li et al. show it is no larger than PES's or full ES's under their assumptions). It stores
only a key per particle: the noise is regenerated each window.
"""
from unrolled_es.estimator import GradientEstimator, build, make_config


def es_single(system, *, num_particles, sigma, truncation_length, antithetic=True, stagger=True,
              noise=None, mesh=None) -> GradientEstimator:
  cfg = make_config(system, num_particles=num_particles, truncation_length=truncation_length, sigma=sigma,
                    noise=noise, antithetic=antithetic, stagger=stagger, mesh=mesh)
  return build(system, cfg._replace(windows_per_draw=None))


nres = es_single
