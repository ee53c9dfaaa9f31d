"""The one registry of estimator names: `register` adds a constructor, and `make`, `unrolled_es.ESTIMATORS` and the
`unrolled-es` command line all read it, so a new estimator file needs only its own `register` call (and an import
in estimators/__init__.py, or in the user's code for an estimator outside the library)."""
import inspect
from typing import Callable

_REGISTRY: dict[str, Callable] = {}


def register(name: str, constructor: Callable = None):
  """Registers `constructor(system, **settings) -> GradientEstimator` under `name`; usable as a decorator."""
  if not (isinstance(name, str) and name.isidentifier()):
    raise ValueError(f"name must be an identifier string; got {name!r}")

  def add(ctor):
    if not callable(ctor):
      raise ValueError(f"constructor must be callable; got {ctor!r}")
    if name in _REGISTRY and _REGISTRY[name] is not ctor:
      raise ValueError(f"an estimator named {name!r} is already registered ({_REGISTRY[name].__module__}); "
                       f"choose another name")
    _REGISTRY[name] = ctor
    return ctor
  return add if constructor is None else add(constructor)


def registered() -> dict:
  """name -> constructor, in registration order."""
  return dict(_REGISTRY)


def make(name: str, system, **kwargs):
  """The estimator called `name`, built from whichever of `kwargs` it takes.

  Sweeps over estimators pass one set of settings (num_particles, sigma, truncation_length, stagger, noise, ...);
  each estimator keeps the ones in its signature, so BPTT drops sigma and noise and the whole-episode
  estimators drop truncation_length and stagger. A keyword that no estimator takes is an error.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown estimator {name!r}; choose one of: {', '.join(_REGISTRY)}")
  known = set().union(*(inspect.signature(c).parameters for c in _REGISTRY.values())) - {"system"}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise ValueError(f"no estimator takes {', '.join(unknown)}; the settings are: {', '.join(sorted(known))}")
  takes = inspect.signature(_REGISTRY[name]).parameters
  return _REGISTRY[name](system, **{k: v for k, v in kwargs.items() if k in takes})
