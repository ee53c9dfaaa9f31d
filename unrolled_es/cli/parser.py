"""The `unrolled-es` argument parser: the options of `train` and `list`, each value checked as it is parsed.

A bad value ends the command with one line on stderr and exit code 2 (no usage block): the same as a
`UsageError` raised later, when the options are combined with the task's settings.
"""
import argparse
import ast
import math

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "integer")  # integer: int8 θ (unrolled_es.saturating_steps)
NOISES = ("gaussian", "low_rank")


class UsageError(Exception):
  """A mistake in the command's options: reported as one line on stderr with exit code 2."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    self.exit(2, f"unrolled-es: error: {message}\n")  # one line, no usage block


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


def _devices(text):
  if text == "all":
    return text
  try:
    n = int(text)
  except ValueError:
    n = 0
  if n < 1:
    raise argparse.ArgumentTypeError(f"expected 'all' or a positive integer, got {text!r}")
  return n


def _shaping(text):
  from unrolled_es.options.fitness import named   # the one parser of these names (it imports jax: only when given)
  try:
    named(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return text


def _horizons(text):
  kind, _, rest = text.partition(":")
  try:
    values = [int(v) for v in rest.split(":")] if rest else []
  except ValueError:
    values = None
  if not ((kind == "constant" and values and len(values) == 1) or (kind == "log_uniform" and values and
                                                                    len(values) == 2)):
    raise argparse.ArgumentTypeError(f"expected constant:T or log_uniform:LOW:HIGH, got {text!r}")
  return text


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
  _estimator_options(t)
  _noise_options(t)
  _loop_options(t)
  return p


def _estimator_options(t):
  pos_int, pos_float = _number(int, 1, True), _number(float, 0, False)
  t.add_argument("--task", help="task name (see `unrolled-es list`)")
  t.add_argument("--task-arg", dest="task_args", action="append", type=_assignment, default=[],
                 metavar="NAME=VALUE", help="task option, repeatable, e.g. --task-arg horizon=200")
  t.add_argument("--estimator", help="estimator name (see `unrolled-es list`; default: the task's published one)")
  t.add_argument("--estimator-arg", dest="estimator_args", action="append", type=_assignment, default=[],
                 metavar="NAME=VALUE", help="extra estimator option, repeatable")
  t.add_argument("--particles", type=pos_int, help="number of particles N")
  t.add_argument("--sigma", type=pos_float, help="perturbation scale σ")
  t.add_argument("--truncation", type=pos_int, help="truncation length K (inner steps per update)")
  t.add_argument("--antithetic", action=argparse.BooleanOptionalAction, default=None, help="antithetic pairs")
  t.add_argument("--stagger", action=argparse.BooleanOptionalAction, default=None,
                 help="start particles at staggered inner steps")
  t.add_argument("--diagnostics", action="store_true", default=None,
                 help="report and plot the estimate's variance from its particles (variance ratio, effective "
                 "particles)")


def _noise_options(t):
  pos_int, pos_float = _number(int, 1, True), _number(float, 0, False)
  t.add_argument("--noise", choices=NOISES, help="perturbation noise: full-rank gaussian (default) or low_rank "
                 "A Bᵀ perturbations of matrix leaves (EGGROLL)")
  t.add_argument("--rank", type=pos_int, help="rank of --noise low_rank (default 1; alone, it implies low_rank)")
  t.add_argument("--factored", action=argparse.BooleanOptionalAction, default=None,
                 help="apply matrix perturbations in factors, xW + σ(xε), through ue.linear / ue.haiku_apply "
                 "layers, without forming a matrix per particle (the fast path)")
  t.add_argument("--devices", type=_devices, help="split particles over a mesh of 'all' devices or the first N")
  t.add_argument("--horizons", type=_horizons, metavar="SCHEDULE", help="per-episode lengths drawn at each reset: "
                 "constant:T or log_uniform:LOW:HIGH (default: the task's fixed horizon)")
  t.add_argument("--shaping", type=_shaping, metavar="FITNESS",
                 help="fitness shaping of the loss differences (biased; default none, or the task's): centered_ranks, "
                      "z_scores, reward_std, top_directions:B (ARS's B best directions), ars or ars:B")
  t.add_argument("--clip-differences", type=pos_float, metavar="C",
                 help="limit each particle's window-mean loss difference to [-C, C]")
  t.add_argument("--clip-gradient", type=pos_float, metavar="C", help="limit the estimate's global norm to C")


def _loop_options(t):
  pos_int, nonneg_int, pos_float = _number(int, 1, True), _number(int, 0, True), _number(float, 0, False)
  t.add_argument("--lr", type=pos_float, help="outer learning rate")
  t.add_argument("--optimizer", choices=OPTIMIZERS, help="outer optimizer")
  t.add_argument("--steps", type=pos_int, help="outer steps")
  t.add_argument("--seed", type=nonneg_int, help="PRNG seed (default 0)")
  t.add_argument("--eval-every", type=nonneg_int, help="evaluate every n steps (0: only at the end)")
  t.add_argument("--checkpoint-every", type=nonneg_int, help="checkpoint every n steps (0: only at the end)")
  t.add_argument("--log-every", type=pos_int, help="log a metrics record every n steps (default 1)")
  t.add_argument("--out", help="run folder (default runs/<task>_<estimator>)")
  g = t.add_mutually_exclusive_group()
  g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
  g.add_argument("--overwrite", action="store_true", help="replace the run in --out")
  t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
  t.add_argument("--tensorboard", action="store_true",
                 help="also log every metrics record to TensorBoard in <out>/tensorboard (needs tensorboardX)")
  t.add_argument("--no-report", dest="report", action="store_false",
                 help="skip the task's end-of-run report (e.g. the learned optimizer's comparison with Adam)")
