"""One constructor per estimator; each returns a `GradientEstimator`. `make` builds any of them by name."""
import inspect

from unrolled_es.estimators.bptt import full_bptt, truncated_bptt
from unrolled_es.estimators.es_single import es_single, nres
from unrolled_es.estimators.full_es import full_es
from unrolled_es.estimators.pes import generalized_pes, pes
from unrolled_es.estimators.truncated_es import truncated_es

CONSTRUCTORS = {"full_es": full_es, "truncated_es": truncated_es, "pes": pes, "generalized_pes": generalized_pes,
                "es_single": es_single, "nres": nres, "truncated_bptt": truncated_bptt, "full_bptt": full_bptt}


def make(name: str, system, **kwargs):
  """The estimator called `name`, built from whichever of `kwargs` it takes.

  Sweeps over estimators pass one set of settings (num_particles, sigma, truncation_length, stagger, noise, ...);
  each estimator keeps the ones in its signature, so BPTT drops sigma and noise and the whole-episode
  estimators drop truncation_length and stagger. A keyword that no estimator takes is an error.
  """
  if name not in CONSTRUCTORS:
    raise ValueError(f"unknown estimator {name!r}; choose one of: {', '.join(CONSTRUCTORS)}")
  known = set().union(*(inspect.signature(c).parameters for c in CONSTRUCTORS.values())) - {"system"}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise ValueError(f"no estimator takes {', '.join(unknown)}; the settings are: {', '.join(sorted(known))}")
  ctor = CONSTRUCTORS[name]
  takes = inspect.signature(ctor).parameters
  return ctor(system, **{k: v for k, v in kwargs.items() if k in takes})


__all__ = [*CONSTRUCTORS, "CONSTRUCTORS", "make"]
