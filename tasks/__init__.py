"""Tasks built on the UnrolledSystem contract. `get(name, **kwargs)` builds one by name."""
import importlib

from tasks.base import Task

# name -> module; each module defines a function of the same name returning a Task.
_MODULES = {
    "influence_balancing": "tasks.influence_balancing",
    "toy_regression": "tasks.toy_regression",
    "lorenz": "tasks.lorenz",
    "lr_schedule": "tasks.lr_schedule",
    "rnn_char": "tasks.rnn",
    "rnn_copy": "tasks.rnn",
    "learned_optimizer": "tasks.learned_optimizer",
    "control": "tasks.control",
    "int_lm": "tasks.int_lm",
    "finetune": "tasks.finetune",
}
NAMES = tuple(_MODULES)


def get(name: str, **kwargs) -> Task:
  if name not in _MODULES:
    raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(NAMES)}")
  return getattr(importlib.import_module(_MODULES[name]), name)(**kwargs)


__all__ = ["Task", "get", "NAMES"]
