"""The one registry of estimator names: `register` adds a constructor, and `make`, `options`,
`unrolled_es.ESTIMATORS` and the `unrolled-es` command line all read it, so a new estimator file needs only its own
`register` call (and an import in estimators/__init__.py, or in the user's code for an estimator outside the
library)."""
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


def options(name: str) -> tuple:
  """The options (keyword arguments besides the system) that the estimator called `name` takes, in signature order.
  A sweep that passes one set of settings to several estimators keeps, deliberately, the ones each takes:

      ue.make(name, system, **{k: v for k, v in settings.items() if k in ue.estimator_options(name)})
  """
  named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  params = inspect.signature(_constructor(name)).parameters.values()
  return tuple(p.name for p in params if p.kind in named and p.name != "system")


def _constructor(name: str):
  if name not in _REGISTRY:
    raise ValueError(f"unknown estimator {name!r}; choose one of: {', '.join(_REGISTRY)}")
  return _REGISTRY[name]


def make(name: str, system, **kwargs):
  """The estimator called `name` on `system`, built from `kwargs`.

  Every keyword must be an option of that estimator: one it does not take (`horizons` for the whole-episode
  `full_es`, `sigma` for BPTT, `mask` for `int_es`) is a ValueError naming it and the options the estimator takes,
  never silently dropped (it would build another estimator than the one asked for). `options(name)` lists them.
  """
  ctor = _constructor(name)
  takes = options(name)
  open_keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(ctor).parameters.values())
  unknown = [k for k in kwargs if k not in takes]
  if unknown and not open_keywords:
    raise ValueError(f"estimator {name!r} takes no option {', '.join(unknown)}; it takes: {', '.join(takes)}")
  return ctor(system, **kwargs)
