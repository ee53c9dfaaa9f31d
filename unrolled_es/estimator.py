"""`GradientEstimator`: the interface every estimator shares, shaped like optax's GradientTransformation.

    est = unrolled_es.pes(system, num_particles=64, sigma=0.01, truncation_length=10)
    state = est.init(key, theta)
    grad, state, info = est.estimate(key, theta, state)

Both functions are pure and jit-able; the same key and state give bit-identical output.
"""
from typing import Any, Callable, NamedTuple

import jax

from unrolled_es import particles
from unrolled_es.noise import Noise, gaussian
from unrolled_es.prng import raw_key
from unrolled_es.system import (UnrolledSystem, check_bool, check_int, check_positive_float, check_step_contract,
                                check_system, check_theta)


class GradientEstimator(NamedTuple):
  """init(key, theta) -> state;  estimate(key, theta, state) -> (grad, state, info)."""
  init: Callable[[jax.Array, Any], Any]
  estimate: Callable[[jax.Array, Any, Any], tuple[Any, Any, dict]]


def make_config(system: UnrolledSystem, *, num_particles, truncation_length, sigma=None, noise=None,
                antithetic=True, stagger=False, mesh=None, **settings) -> particles.Config:
  """Validates the shared constructor arguments and returns the engine's settings."""
  check_system(system)
  num_particles = check_int("num_particles", num_particles, 1)
  truncation_length = check_int("truncation_length", truncation_length, 1, system.horizon)
  if sigma is not None:
    sigma = check_positive_float("sigma", sigma)
    noise = gaussian() if noise is None else noise
    if not isinstance(noise, Noise):
      raise ValueError(f"noise must be an unrolled_es noise (gaussian() or low_rank(rank)); got {noise!r}")
  check_bool("antithetic", antithetic)
  check_bool("stagger", stagger)
  if mesh is not None:
    if not (isinstance(mesh, jax.sharding.Mesh) and "particles" in mesh.axis_names):
      raise ValueError(f"mesh must be a jax.sharding.Mesh with a 'particles' axis (see unrolled_es.particle_mesh); "
                       f"got {mesh!r}")
    if num_particles % mesh.shape["particles"]:
      raise ValueError(f"num_particles must be a multiple of the number of devices on the mesh's 'particles' "
                       f"axis ({mesh.shape['particles']}); got {num_particles}")
  return particles.Config(num_particles=num_particles, truncation_length=truncation_length, sigma=sigma,
                          noise=noise, antithetic=antithetic, stagger=stagger, mesh=mesh, **settings)


def particle_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named "particles" over `devices` (default: every device of every process, after
  jax.distributed.initialize on multi-host runs). Pass it as `mesh=` to any estimator."""
  import numpy as np
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.array(devices), ("particles",))


def build(system: UnrolledSystem, cfg: particles.Config) -> GradientEstimator:
  """The estimator that runs `cfg` on `system` (see particles.py for what each setting means)."""

  def init(key, theta):
    check_theta(theta)
    check_step_contract(system, theta, raw_key(key))
    init_key, burn_key = jax.random.split(raw_key(key))
    state = particles.init_particles(system, cfg, theta, init_key)
    if cfg.stagger:
      state = particles.burn_in(system, cfg, theta, state, burn_key)
    return state

  def estimate(key, theta, state):
    check_theta(theta)
    check_step_contract(system, theta, raw_key(key))
    if cfg.fresh_episodes:
      state = state._replace(t=jax.numpy.full_like(state.t, system.horizon))
    state, window = particles.advance(system, cfg, theta, state, key)
    return particles.gradient(cfg, window, theta), state, particles.info(cfg, window)

  return GradientEstimator(init=init, estimate=estimate)
