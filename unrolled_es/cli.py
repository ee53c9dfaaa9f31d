"""`unrolled-es`: train a task with an estimator from the command line, or list what is available.

    unrolled-es list
    unrolled-es train --task learned_optimizer --estimator es_single --particles 32 --steps 500 --out runs/lopt

Options left unset come from the task's published settings (`Task.settings`). A run folder holds
config.json, metrics.jsonl, checkpoints/ and meta_loss.png; `--resume` continues it exactly (options left
unset come from its config.json), `--overwrite` replaces it. Bad input ends with one line on stderr and exit
code 2. After training, a task module's `report(task, theta, out_dir)` is called if it has one.
"""
import argparse
import ast
import importlib
import inspect
import json
import math
import os
import shutil
import sys

ESTIMATORS = ("full_es", "truncated_es", "pes", "es_single", "nres", "generalized_pes", "truncated_bptt",
              "full_bptt")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
# Options that change the computation: a resumed run must agree on them (steps etc. may grow).
FINGERPRINTED = ("task", "task_args", "estimator", "estimator_args", "particles", "sigma", "truncation", "lr",
                 "optimizer", "seed", "antithetic", "stagger")
RUN_FILES = ("config.json", "metrics.jsonl", "meta_loss.png", "checkpoints")
_FLAG = {"particles": "--particles", "sigma": "--sigma", "truncation": "--truncation", "lr": "--lr",
         "optimizer": "--optimizer", "seed": "--seed", "antithetic": "--antithetic", "stagger": "--stagger",
         "task": "--task", "estimator": "--estimator", "task_args": "--task-arg", "estimator_args": "--estimator-arg"}


class UsageError(Exception):
  """Reported as one line on stderr with exit code 2."""


def estimator_constructors() -> dict:
  """name -> constructor, for the estimators `unrolled_es` exports."""
  import unrolled_es
  return {n: getattr(unrolled_es, n) for n in ESTIMATORS if hasattr(unrolled_es, n)}


def task_names() -> tuple:
  import tasks
  return tuple(tasks.NAMES)


def build_task(name, **kwargs):
  import tasks
  return tasks.get(name, **kwargs)


def task_module(name):
  """The module defining task `name`, where the optional `report` hook lives."""
  import tasks
  if hasattr(tasks, "module"):
    return tasks.module(name)
  modules = getattr(tasks, "_MODULES", {})
  return importlib.import_module(modules[name]) if name in modules else None


# ---------------------------------------------------------------- argument parsing

class _Parser(argparse.ArgumentParser):
  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind, low, inclusive):
  def parse(text):
    try:
      x = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    ok = math.isfinite(x) and (x >= low if inclusive else x > low)
    if not ok:
      raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if inclusive else '>'} {low}; got {text!r}")
    return x
  return parse


def _assignment(text):
  name, sep, value = text.partition("=")
  if not sep or not name.strip().isidentifier():
    raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
  try:
    parsed = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    parsed = {"true": True, "false": False, "none": None}.get(value.lower(), value)
  if isinstance(parsed, float) and not math.isfinite(parsed):
    raise argparse.ArgumentTypeError(f"{name} must be finite; got {value!r}")
  return name.strip(), parsed


def make_parser() -> argparse.ArgumentParser:
  p = _Parser(prog="unrolled-es", description="Gradient estimation through long unrolls: train and list.")
  sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
  sub.add_parser("list", help="list tasks, estimators and optimizers")
  t = sub.add_parser("train", help="train a task's outer parameters with an estimator",
                     description="Unset options come from the task's settings (or, with --resume, the run's config).")
  pos_int, nonneg_int, pos_float = _number(int, 1, True), _number(int, 0, True), _number(float, 0, False)
  t.add_argument("--task", help="task name (see `unrolled-es list`)")
  t.add_argument("--task-arg", dest="task_args", action="append", type=_assignment, default=[],
                 metavar="NAME=VALUE", help="task option, repeatable, e.g. --task-arg horizon=200")
  t.add_argument("--estimator", help="estimator name (see `unrolled-es list`)")
  t.add_argument("--estimator-arg", dest="estimator_args", action="append", type=_assignment, default=[],
                 metavar="NAME=VALUE", help="extra estimator option, repeatable")
  t.add_argument("--particles", type=pos_int, help="number of particles N")
  t.add_argument("--sigma", type=pos_float, help="perturbation scale σ")
  t.add_argument("--truncation", type=pos_int, help="truncation length K (inner steps per update)")
  t.add_argument("--lr", type=pos_float, help="outer learning rate")
  t.add_argument("--optimizer", choices=OPTIMIZERS, help="outer optimizer")
  t.add_argument("--steps", type=pos_int, help="outer steps")
  t.add_argument("--seed", type=nonneg_int, help="PRNG seed (default 0)")
  t.add_argument("--eval-every", type=nonneg_int, help="evaluate every n steps (0: only at the end)")
  t.add_argument("--checkpoint-every", type=nonneg_int, help="checkpoint every n steps (0: only at the end)")
  t.add_argument("--log-every", type=pos_int, help="log a metrics record every n steps (default 1)")
  t.add_argument("--antithetic", action=argparse.BooleanOptionalAction, default=None, help="antithetic pairs")
  t.add_argument("--stagger", action=argparse.BooleanOptionalAction, default=None,
                 help="start particles at staggered inner steps")
  t.add_argument("--out", help="run folder (default runs/<task>_<estimator>)")
  g = t.add_mutually_exclusive_group()
  g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
  g.add_argument("--overwrite", action="store_true", help="replace the run in --out")
  t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
  return p


# ---------------------------------------------------------------- train

def _holds_run(out):
  return any(os.path.exists(os.path.join(out, f)) for f in RUN_FILES)


def _explicit(args):
  """The fingerprinted options the user set on this command line."""
  given = {k: getattr(args, k) for k in FINGERPRINTED if getattr(args, k) is not None}
  for k in ("task_args", "estimator_args"):
    if not given.get(k):
      given.pop(k, None)
    else:
      given[k] = dict(given[k])
  return given


def _check_same_run(out, saved, given):
  for k, v in given.items():
    if saved.get(k) != v:
      raise UsageError(f"{out} holds a run with {_FLAG[k]} {saved.get(k)!r}, not {v!r}; drop the option to resume "
                       f"that run, or pass --overwrite to replace it")


def _resolve(args, saved):
  """The full configuration: command line, else the saved run (on --resume), else the task's settings."""
  cfg = dict(saved or {})
  cfg.update(_explicit(args))
  for k in ("steps", "eval_every", "checkpoint_every", "log_every"):
    if getattr(args, k) is not None:
      cfg[k] = getattr(args, k)
  cfg.setdefault("task_args", {})
  cfg.setdefault("estimator_args", {})
  cfg.setdefault("seed", 0)
  names = task_names()
  if cfg.get("task") is None:
    raise UsageError(f"--task is required; choose one of: {', '.join(names)}")
  if cfg["task"] not in names:
    raise UsageError(f"unknown task {cfg['task']!r}; choose one of: {', '.join(names)}")
  ctors = estimator_constructors()
  if cfg.get("estimator") is None:
    raise UsageError(f"--estimator is required; choose one of: {', '.join(ctors) or '(none available)'}")
  if cfg["estimator"] not in ctors:
    raise UsageError(f"unknown estimator {cfg['estimator']!r}; choose one of: {', '.join(ctors) or '(none available)'}")
  return cfg, ctors[cfg["estimator"]]


def _fill_from_task(cfg, task, ctor):
  s = task.settings or {}
  accepts = inspect.signature(ctor).parameters
  defaults = {"particles": s.get("num_particles"), "sigma": s.get("sigma"), "truncation": s.get("truncation_length"),
              "lr": s.get("outer_lr"), "optimizer": s.get("optimizer"), "steps": s.get("steps")}
  for k, v in defaults.items():
    if cfg.get(k) is None:
      cfg[k] = v
  for k, param in (("sigma", "sigma"), ("truncation", "truncation_length")):
    if param not in accepts:
      cfg[k] = None  # e.g. BPTT has no σ, full ES no K: they stay out of the run's identity
    elif cfg[k] is None:
      raise UsageError(f"{_FLAG[k]} is required: task {cfg['task']!r} has no default for it")
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
