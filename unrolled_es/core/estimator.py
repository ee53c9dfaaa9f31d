"""`GradientEstimator`: the interface every estimator shares, shaped like optax's GradientTransformation.

    est = unrolled_es.pes(system, num_particles=64, sigma=0.01, truncation_length=10)
    state = est.init(key, theta)
    grad, state, info = est.estimate(key, theta, state)

Both functions are pure and jit-able; the same key and state give bit-identical output. This module also holds
the settings every estimator shares and their checks.
"""
from typing import Any, Callable, NamedTuple

import jax

from unrolled_es.options import fitness as fitness_transforms
from unrolled_es.options import horizons as horizon_schedules
from unrolled_es.noise import masks
from unrolled_es.noise import precision
from unrolled_es.noise.base import Noise, gaussian
from unrolled_es.core.prng import raw_key
from unrolled_es.core.system import (UnrolledSystem, check_bool, check_int, check_positive_float, check_step_contract,
                                check_system, check_theta)


class GradientEstimator(NamedTuple):
  """init(key, theta) -> state;  estimate(key, theta, state) -> (grad, state, info)."""
  init: Callable[[jax.Array, Any], Any]
  estimate: Callable[[jax.Array, Any, Any], tuple[Any, Any, dict]]


class Settings(NamedTuple):
  """The validated settings shared by every estimator."""
  num_particles: int
  truncation_length: int
  members: int
  sigma: float | None = None     # None: no noise (autodiff)
  noise: Noise | None = None     # already restricted to `mask`
  stagger: bool = False
  mesh: Any = None               # jax.sharding.Mesh with a "particles" axis: particles split over its devices
  mask: Any = None               # θ-shaped pytree of bools, or None
  horizons: Any = None           # a schedule of per-episode lengths (unrolled_es.horizons), or None: the system's T
  fitness: Any = None            # a transform of the loss differences (unrolled_es.fitness), or None: raw
  diagnostics: bool = False      # report the estimate's variance from its particles in info

  def episode_length(self, system) -> int | None:
    """The one length every episode has (None when the schedule varies)."""
    if self.horizons is None:
      return system.horizon
    return self.horizons.low if self.horizons.low == self.horizons.high else None

  def mean_episode_length(self, system) -> float:
    return float(system.horizon) if self.horizons is None else self.horizons.mean


def _check_mesh(mesh, num_particles):
  if mesh is None:
    return
  if not (isinstance(mesh, jax.sharding.Mesh) and "particles" in mesh.axis_names):
    raise ValueError(f"mesh must be a jax.sharding.Mesh with a 'particles' axis (see unrolled_es.particle_mesh); "
                     f"got {mesh!r}")
  if num_particles % mesh.shape["particles"]:
    raise ValueError(f"num_particles must be a multiple of the number of devices on the mesh's 'particles' "
                     f"axis ({mesh.shape['particles']}); got {num_particles}")


def _check_noise(noise):
  noise = gaussian() if noise is None else noise
  if not isinstance(noise, Noise):
    raise ValueError(f"noise must be an unrolled_es noise (gaussian() or low_rank(rank)); got {noise!r}")
  return noise


def settings(system: UnrolledSystem, *, members: int, num_particles, truncation_length=None, sigma=None,
             noise=None, stagger=False, mask=None, mesh=None, horizons=None, fitness=None,
             diagnostics=False) -> Settings:
  """Checks the shared constructor arguments. truncation_length None: whole episodes (K = T); sigma None: no
  noise (the autodiff baselines); horizons: a per-episode length schedule (None: every episode has T steps);
  fitness: a transform of the loss differences (None: the raw differences, unbiased)."""
  check_system(system)
  num_particles = check_int("num_particles", num_particles, 1)
  k = system.horizon if truncation_length is None else truncation_length
  k = check_int("truncation_length", k, 1, system.horizon)
  mask = masks.check_mask(mask)
  if sigma is not None:
    sigma = check_positive_float("sigma", sigma)
    noise = _check_noise(noise)
    noise = noise if mask is None else masks.masked(noise, mask)
  check_bool("stagger", stagger)
  _check_mesh(mesh, num_particles)
  horizons = horizon_schedules.check(horizons, k)
  fitness = fitness_transforms.check(fitness)
  check_bool("diagnostics", diagnostics)
  return Settings(num_particles, k, members, sigma, noise, stagger, mesh, mask, horizons, fitness, diagnostics)


def checked_call(system: UnrolledSystem, s: Settings, key, theta):
  """The checks run when `init` or `estimate` is traced (they cost no FLOPs); returns the key split in two."""
  check_theta(theta)
  key = raw_key(key)
  check_step_contract(system, theta, key)
  if s.mask is not None:
    masks.check_mask_matches(s.mask, theta)
  if s.sigma is not None:
    precision.check_resolution(theta, s.sigma, s.mask)
  return jax.random.split(key)


def particle_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named "particles" over `devices` (default: every device of every process, after
  jax.distributed.initialize on multi-host runs). Pass it as `mesh=` to any estimator."""
  import numpy as np
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.array(devices), ("particles",))
