"""Reading a run back: θ from a run folder's verified checkpoints.

A run folder is what `unrolled-es train --out DIR` writes (config.json, checkpoints/, metrics.jsonl), or any folder
whose checkpoints/ `unrolled_es.training.loop.train(..., checkpoint_dir=DIR/checkpoints)` wrote. Checkpoints are
checked leaf by leaf against a template θ (structure, shapes, dtypes) and by their SHA-256, so what comes back is
exactly the θ that was saved (unrolled_es.training.checkpoint).
"""
import json
import os

from unrolled_es.training import checkpoint as ckpt


def load_theta(run_dir: str, step: int | None = None, *, like=None):
  """θ saved at outer step `step` of the run in `run_dir` (default: the newest checkpoint that is intact; a damaged
  newest file is skipped with a warning for the one before).

  like: a θ of the run's structure, shapes and dtypes (e.g. the θ it started from). Default: the starting θ of the
  run's task, rebuilt from its config.json (`task`, `task_args`) through the tasks the command line knows.
  """
  directory = _checkpoint_dir(run_dir)
  template = _template(run_dir) if like is None else like
  if step is None:
    restored = ckpt.restore_latest(directory, template, part="theta")
    if restored is None:
      raise ValueError(f"run_dir {run_dir!r} holds no checkpoint yet")
    return restored[0]
  saved = dict(ckpt.list_checkpoints(directory))
  if step not in saved:
    raise ValueError(f"step {step!r} has no checkpoint in {run_dir!r}; the saved steps are: "
                     f"{', '.join(map(str, sorted(saved))) or 'none'}")
  return ckpt.load(saved[step], template, part="theta")[0]


def _checkpoint_dir(run_dir):
  """run_dir/checkpoints, or run_dir itself when it holds the checkpoints directly."""
  if not os.path.isdir(run_dir):
    raise ValueError(f"run_dir {run_dir!r} is not a folder: pass the --out folder of an `unrolled-es train` run")
  nested = os.path.join(run_dir, "checkpoints")
  return nested if os.path.isdir(nested) else run_dir


def _template(run_dir):
  """The starting θ of the run's task, rebuilt from the run's config.json."""
  path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"run_dir {run_dir!r} holds no config.json to rebuild its task from: pass like=<a θ of the "
                     f"run's structure>")
  with open(path) as f:
    config = json.load(f)
  from unrolled_es.cli.task_registry import build_task   # the tasks the command line knows (entry points)
  return build_task(config["task"], **config.get("task_args", {})).theta0
