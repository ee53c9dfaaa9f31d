"""Where the command line finds tasks: packages that declare a provider under the `unrolled_es.tasks` entry-point
group. A provider is a module with `NAMES` (a tuple of task names) and `get(name, **options) -> Task`, and
optionally `function(name)`, the callable that builds the task, whose signature lists the task's options (the
command line then names the valid ones when a --task-arg is not among them). This
project's own tasks (`unrolled_es_tasks`) are one provider; a user's package adds its tasks to `unrolled-es` by
declaring another, e.g. in its pyproject.toml:

    [project.entry-points."unrolled_es.tasks"]
    my_tasks = "my_package.tasks"

The library itself never imports a tasks package: only this lookup, when the command line asks for a task.
"""
import functools
import inspect
from importlib import metadata

GROUP = "unrolled_es.tasks"


@functools.lru_cache(maxsize=None)
def providers() -> tuple:
  """The task provider modules installed, in name order of their entry points."""
  found = sorted(metadata.entry_points(group=GROUP), key=lambda ep: ep.name)
  return tuple(ep.load() for ep in found)


def task_names() -> tuple:
  """Every task name the installed providers offer."""
  return tuple(name for provider in providers() for name in provider.NAMES)


def build_task(name: str, **options):
  """The task `name` built with `options`, from the first provider that offers it."""
  for provider in providers():
    if name in provider.NAMES:
      return provider.get(name, **options)
  known = ", ".join(task_names()) or f"none: no package declares the {GROUP!r} entry-point group"
  raise ValueError(f"unknown task {name!r}; choose one of: {known}")


def task_options(name: str):
  """The names of the options task `name` takes, from its function's signature; None when its provider does not say
  (no `function(name)`) or the function takes any keyword (**kwargs)."""
  for provider in providers():
    if name in provider.NAMES:
      function = getattr(provider, "function", None)
      if function is None:
        return None
      params = inspect.signature(function(name)).parameters.values()
      if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
      return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
  return None
