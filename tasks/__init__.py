"""Tasks built on the UnrolledSystem contract. `get(name, **kwargs)` builds one by name."""
import importlib

from unrolled_es_tasks.base import Task

# name -> module; each module defines a function of the same name returning a Task.
_MODULES = {
    "influence_balancing": "unrolled_es_tasks.influence_balancing",
    "toy_regression": "unrolled_es_tasks.toy_regression",
    "lorenz": "unrolled_es_tasks.lorenz",
    "lr_schedule": "unrolled_es_tasks.lr_schedule",
    "rnn_char": "unrolled_es_tasks.rnn",
    "rnn_copy": "unrolled_es_tasks.rnn",
    "learned_optimizer": "unrolled_es_tasks.learned_optimizer",
    "control": "unrolled_es_tasks.control",
    "int_lm": "unrolled_es_tasks.int_lm",
    "finetune": "unrolled_es_tasks.finetune",
}
NAMES = tuple(_MODULES)


def function(name: str):
  """The function that builds task `name` (its signature lists the task's options)."""
  if name not in _MODULES:
    raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(NAMES)}")
  return getattr(importlib.import_module(_MODULES[name]), name)


def get(name: str, **kwargs) -> Task:
  return function(name)(**kwargs)


__all__ = ["Task", "get", "function", "NAMES"]
