"""From a run's resolved options to the objects that train: the task, its estimator and the optimizer.

Options come, in order of precedence, from the command line, the saved run (with --resume) and the task's
published settings (`Task.settings`: "num_particles", "sigma", "truncation_length", "outer_lr", "optimizer",
"steps" and, where the task publishes them, "estimator", "stagger" and "shaping", the last two for estimators that
take them). An estimator gets only the options it takes
(`unrolled_es.estimator_options`): a flag that does not apply to it is an error, or, for flags with a sensible
meaning elsewhere (--antithetic, --stagger, --sigma, --truncation), a note on stderr that it is ignored.
"""
import functools
import sys

from unrolled_es.cli import task_registry
from unrolled_es.cli.estimator_kwargs import accepted, build_estimator
from unrolled_es.cli.parser import OPTIMIZERS, UsageError
from unrolled_es.cli.run_folder import FLAG, explicit

# The command line looks tasks and estimators up through these names (tests replace them with fakes).
task_names = task_registry.task_names
build_task = task_registry.build_task


def estimator_constructors() -> dict:
  """name -> constructor, from the one registry of estimators."""
  import unrolled_es
  return unrolled_es.registered()


def resolve(args, saved) -> dict:
  """The options from the command line over the saved run (on --resume); the task must be known."""
  cfg = dict(saved or {})
  cfg.update(explicit(args))
  for k in ("steps", "eval_every", "checkpoint_every", "log_every", "diagnostics"):
    if getattr(args, k) is not None:
      cfg[k] = getattr(args, k)
  for k, default in (("task_args", {}), ("estimator_args", {}), ("seed", 0)):
    cfg.setdefault(k, default)
  names = task_names()
  if cfg.get("task") is None:
    raise UsageError(f"--task is required; choose one of: {', '.join(names)}")
  if cfg["task"] not in names:
    raise UsageError(f"unknown task {cfg['task']!r}; choose one of: {', '.join(names)}")
  return cfg


def make_task(name, task_args):
  """The task built with its --task-arg options; an option its function does not take is named, with the ones it
  does take."""
  takes = task_registry.task_options(name)
  unknown = [k for k in task_args if takes is not None and k not in takes]
  if unknown:
    raise UsageError(f"task {name!r} takes no option {', '.join(unknown)}; it takes: {', '.join(takes)}")
  try:
    return build_task(name, **task_args)
  except (TypeError, ValueError) as e:
    raise UsageError(f"task {name!r}: {e}") from None


def choose_estimator(cfg, task):
  """The estimator's constructor: --estimator, else the one the task publishes in its settings."""
  ctors = estimator_constructors()
  if cfg.get("estimator") is None:
    cfg["estimator"] = (task.settings or {}).get("estimator")
    if cfg["estimator"] is None:
      raise UsageError(f"--estimator is required: task {cfg['task']!r} publishes none; choose one of: "
                       f"{', '.join(ctors)}")
  if cfg["estimator"] not in ctors:
    raise UsageError(f"unknown estimator {cfg['estimator']!r}; choose one of: {', '.join(ctors)}")
  return ctors[cfg["estimator"]]


def fill_from_task(cfg, task, ctor):
  """Options left unset take the task's settings; those the estimator has no use for are cleared."""
  s, takes = task.settings or {}, accepted(ctor)
  defaults = {"particles": s.get("num_particles"), "sigma": s.get("sigma"), "truncation": s.get("truncation_length"),
              "lr": s.get("outer_lr"), "optimizer": s.get("optimizer"), "steps": s.get("steps")}
  for k, v in defaults.items():
    if cfg.get(k) is None:
      cfg[k] = v
  # Published only for the estimators that take them: a task's ARS-style choices do not refuse BPTT.
  for k, param in (("stagger", "stagger"), ("shaping", "fitness")):
    if cfg.get(k) is None and param in takes and s.get(k) is not None:
      cfg[k] = s[k]
  for k, param in (("antithetic", "antithetic"), ("stagger", "stagger"), ("sigma", "sigma"),
                   ("truncation", "truncation_length")):
    if param not in takes:
      cfg[k] = None  # e.g. BPTT has no σ, full ES no K: they stay out of the run's identity
    elif k in ("sigma", "truncation") and cfg[k] is None:
      raise UsageError(f"{FLAG[k]} is required: task {cfg['task']!r} has no default for it")
  for k in ("particles", "lr", "optimizer", "steps"):
    if cfg.get(k) is None:
      raise UsageError(f"--{k} is required: task {cfg['task']!r} has no default for it")
  if cfg["optimizer"] not in OPTIMIZERS:
    raise UsageError(f"optimizer {cfg['optimizer']!r} is not one of: {', '.join(OPTIMIZERS)}")
  if cfg.get("eval_every") is None:
    cfg["eval_every"] = int(s.get("eval_every", max(1, cfg["steps"] // 20)))
  if cfg.get("checkpoint_every") is None:
    cfg["checkpoint_every"] = max(1, cfg["steps"] // 10)
  if cfg.get("log_every") is None:
    cfg["log_every"] = 1
  return cfg


def note_ignored(args, cfg, ctor):
  """One note per flag given that the chosen estimator has no use for."""
  takes = accepted(ctor)
  for k in ("antithetic", "stagger"):
    if getattr(args, k) is not None and k not in takes:
      print(f"unrolled-es: note: {cfg['estimator']} has no {k} option; --{k} ignored", file=sys.stderr)
  for k in ("sigma", "truncation"):
    if getattr(args, k) is not None and cfg[k] is None:
      print(f"unrolled-es: note: {cfg['estimator']} takes no {FLAG[k]}; ignored", file=sys.stderr)


def check_integer_theta(cfg, task):
  """Integer θ (e.g. unrolled_es_tasks.int_lm) trains with int_es and --optimizer integer only (a float optimizer
  would round and wrap it); float θ with the others."""
  import jax
  import jax.numpy as jnp
  integer = any(jnp.issubdtype(jnp.result_type(x), jnp.integer) for x in jax.tree_util.tree_leaves(task.theta0))
  kind = "integer" if integer else "float"
  if integer and cfg["estimator"] != "int_es":
    raise UsageError(f"task {cfg['task']!r} has integer parameters: use --estimator int_es, not "
                     f"{cfg['estimator']!r}")
  if not integer and cfg["estimator"] == "int_es":
    raise UsageError(f"task {cfg['task']!r} has float parameters, which int_es (int8 only) cannot train; choose "
                     f"another --estimator")
  optimizer = cfg.get("optimizer") or (task.settings or {}).get("optimizer")
  if optimizer is not None and integer != (optimizer == "integer"):
    raise UsageError(f"task {cfg['task']!r} has {kind} parameters: use --optimizer "
                     f"{'integer' if integer else 'sgd, adam, adamw or rmsprop'}, not {optimizer!r}")


@functools.lru_cache(maxsize=16)  # one object per setting, so repeated runs in a process reuse the compiled step
def make_optimizer(name: str, lr: float):
  if name == "integer":   # int8 θ moves by lr whole steps per update, saturating at ±127
    import unrolled_es
    try:
      return unrolled_es.saturating_steps(lr)
    except ValueError as e:
      raise UsageError(f"--optimizer integer: {e}") from None
  import optax
  return getattr(optax, name)(lr)


def masked_optimizer(optimizer, task):
  """The optimizer restricted to the leaves the task's mask trains: a masked leaf gets no update at all, not
  even weight decay (adamw), so statistics kept in θ (observation normalisation) stay as after_update set them."""
  mask = getattr(task, "mask", None)
  if mask is None:
    return optimizer
  import jax
  import numpy as np
  import optax
  return optax.masked(optimizer, jax.tree_util.tree_map(lambda m: bool(np.any(m)), mask))


def configure(args, saved):
  """(config, task, estimator, optimizer) from the command line, the saved run and the task's settings."""
  cfg = resolve(args, saved)
  task = make_task(cfg["task"], cfg["task_args"])
  ctor = choose_estimator(cfg, task)
  check_integer_theta(cfg, task)
  cfg = fill_from_task(cfg, task, ctor)
  note_ignored(args, cfg, ctor)
  optimizer = masked_optimizer(make_optimizer(cfg["optimizer"], cfg["lr"]), task)
  return cfg, task, build_estimator(cfg, task, ctor), optimizer
