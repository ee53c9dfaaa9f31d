"""`unrolled-es`: train a task with an estimator from the command line, or list what is available.

    unrolled-es list
    unrolled-es train --task learned_optimizer --estimator es_single --particles 32 --steps 500 --out runs/lopt

Options left unset come from the task's published settings (`Task.settings`). A run folder holds
config.json, metrics.jsonl, checkpoints/ and meta_loss.png; `--resume` continues it exactly (options left
unset come from its config.json), `--overwrite` replaces it. Bad input ends with one line on stderr and exit
code 2. After training, the task's `report(theta, out_dir)` is run if it has one.
"""
import argparse
import ast
import functools
import inspect
import json
import math
import os
import shutil
import sys

from unrolled_es.cli.task_registry import build_task, task_names

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "integer")  # integer: int8 θ (unrolled_es.saturating_steps)
# Options that change the computation: a resumed run must agree on them (steps etc. may grow).
FINGERPRINTED = ("task", "task_args", "estimator", "estimator_args", "particles", "sigma", "truncation", "noise",
                 "rank", "factored", "devices", "horizons", "shaping", "clip_differences", "clip_gradient", "lr",
                 "optimizer", "seed", "antithetic", "stagger")
SHAPINGS = ("centered_ranks", "z_scores")
NOISES = ("gaussian", "low_rank")
RUN_FILES = ("config.json", "metrics.jsonl", "meta_loss.png", "checkpoints", "tensorboard")
_FLAG = {k: "--" + k.replace("_args", "-arg") for k in FINGERPRINTED}  # e.g. task_args -> --task-arg


class UsageError(Exception):
  """Reported as one line on stderr with exit code 2."""


def estimator_constructors() -> dict:
  """name -> constructor, from the one registry of estimators."""
  import unrolled_es
  return unrolled_es.registered()




# ---------------------------------------------------------------- argument parsing

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
  t.add_argument("--estimator", help="estimator name (see `unrolled-es list`)")
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
  t.add_argument("--shaping", choices=SHAPINGS, help="fitness shaping of the loss differences (biased; default none)")
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
  for k in ("steps", "eval_every", "checkpoint_every", "log_every", "diagnostics"):
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
    raise UsageError(f"--estimator is required; choose one of: {', '.join(ctors)}")
  if cfg["estimator"] not in ctors:
    raise UsageError(f"unknown estimator {cfg['estimator']!r}; choose one of: {', '.join(ctors)}")
  return cfg, ctors[cfg["estimator"]]


def _fill_from_task(cfg, task, ctor):
  s = task.settings or {}
  accepts = inspect.signature(ctor).parameters
  defaults = {"particles": s.get("num_particles"), "sigma": s.get("sigma"), "truncation": s.get("truncation_length"),
              "lr": s.get("outer_lr"), "optimizer": s.get("optimizer"), "steps": s.get("steps")}
  for k, v in defaults.items():
    if cfg.get(k) is None:
      cfg[k] = v
  for k in ("antithetic", "stagger"):
    if k not in accepts:
      cfg[k] = None
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


def _build_estimator(cfg, task, ctor):
  params = inspect.signature(ctor).parameters
  open_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
  kw = {"num_particles": cfg["particles"], "sigma": cfg["sigma"], "truncation_length": cfg["truncation"],
        "antithetic": cfg.get("antithetic"), "stagger": cfg.get("stagger"), "diagnostics": cfg.get("diagnostics")}
  kw = {k: v for k, v in kw.items() if v is not None and k in params}
  noise = _build_noise(cfg, "noise" in params)
  if noise is not None:
    kw["noise"] = noise
  if cfg.get("devices") is not None:
    kw["mesh"] = _build_mesh(cfg["devices"], "mesh" in params, cfg["estimator"])
  if getattr(task, "mask", None) is not None and "mask" in params:
    kw["mask"] = task.mask
  kw.update(_robustness_options(cfg, params))
  unknown = [k for k in cfg["estimator_args"] if k not in params and not open_kw]
  if unknown:
    takes = ", ".join(k for k in params if k != "system")
    raise UsageError(f"estimator {cfg['estimator']!r} takes no option {', '.join(unknown)}; it takes: {takes}")
  kw.update(cfg["estimator_args"])
  try:
    estimator = _on_every_system(ctor, task, kw)
    if cfg.get("clip_gradient") is not None:
      import unrolled_es
      estimator = unrolled_es.clip_gradient(estimator, cfg["clip_gradient"])
    return estimator
  except (ValueError, TypeError) as e:
    raise UsageError(f"estimator {cfg['estimator']!r}: {e}") from None


def _on_every_system(ctor, task, kw):
  """The estimator on the task's system, or, when the task has further systems of other shapes, one estimator
  per system combined by unrolled_es.multi_task."""
  extra = tuple(getattr(task, "extra_systems", ()) or ())
  if not extra:
    return ctor(task.system, **kw)
  import unrolled_es
  systems, weights = [task.system] + [s for s, _ in extra], [1.0] + [float(w) for _, w in extra]
  return unrolled_es.multi_task([ctor(system, **kw) for system in systems], weights=weights)


def _robustness_options(cfg, params):
  """horizons= and fitness= from --horizons, --shaping and --clip-differences."""
  import unrolled_es
  out = {}
  if cfg.get("horizons") is not None:
    if "horizons" not in params:
      raise UsageError(f"estimator {cfg['estimator']!r} runs whole episodes, so --horizons does not apply")
    kind, *values = cfg["horizons"].split(":")
    try:
      out["horizons"] = getattr(unrolled_es.horizons, kind)(*map(int, values))
    except ValueError as e:
      raise UsageError(f"--horizons {cfg['horizons']}: {e}") from None
  transforms = []
  if cfg.get("clip_differences") is not None:
    transforms.append(unrolled_es.fitness.clipped(cfg["clip_differences"]))
  if cfg.get("shaping") is not None:
    transforms.append(getattr(unrolled_es.fitness, cfg["shaping"])())
  if transforms:
    if "fitness" not in params:
      raise UsageError(f"estimator {cfg['estimator']!r} has no loss differences to shape or clip")
    out["fitness"] = transforms[0] if len(transforms) == 1 else unrolled_es.fitness.chain(*transforms)
  return out


def _build_noise(cfg, takes_noise):
  """The noise named by --noise/--rank/--factored (None: the estimator's default, full-rank Gaussian)."""
  import unrolled_es
  name, rank, factored = cfg.get("noise"), cfg.get("rank"), cfg.get("factored")
  if name is None and rank is not None:
    name = cfg["noise"] = "low_rank"
  if name is None and not factored:
    return None
  if not takes_noise:
    flag = "--rank" if rank is not None else "--factored" if factored else "--noise"
    raise UsageError(f"estimator {cfg['estimator']!r} takes no noise, so {flag} does not apply")
  if name == "gaussian" or name is None:
    if rank is not None:
      raise UsageError(f"--rank applies to --noise low_rank, not {name or 'gaussian'}")
    return unrolled_es.gaussian(factored=bool(factored))
  return unrolled_es.low_rank(1 if rank is None else rank, factored=bool(factored))


def _build_mesh(devices, takes_mesh, estimator):
  import jax

  import unrolled_es
  if not takes_mesh:
    raise UsageError(f"estimator {estimator!r} cannot split its particles over devices")
  available = jax.devices()
  if devices != "all" and devices > len(available):
    raise UsageError(f"--devices {devices}: only {len(available)} device(s) available ({available[0].platform})")
  return unrolled_es.particle_mesh(available if devices == "all" else available[:devices])


def _notes_for_ignored(args, cfg, ctor):
  params = inspect.signature(ctor).parameters
  for k, param in (("antithetic", "antithetic"), ("stagger", "stagger")):
    if getattr(args, k) is not None and param not in params:
      print(f"unrolled-es: note: {cfg['estimator']} has no {k} option; --{k} ignored", file=sys.stderr)
  for k in ("sigma", "truncation"):
    if getattr(args, k) is not None and cfg[k] is None:
      print(f"unrolled-es: note: {cfg['estimator']} takes no {_FLAG[k]}; ignored", file=sys.stderr)


def _jsonable(x):
  import numpy as np
  a = np.asarray(x)
  return a.item() if a.size == 1 else a.tolist()


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


def _check_integer_theta(cfg, task):
  """Integer θ (unrolled_es_tasks.int_lm) trains with int_es and --optimizer integer only (a float optimizer would round and
  wrap it); float θ with the others."""
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


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
    f.write("\n")
  os.replace(tmp, path)


def _read_saved_config(out):
  path = os.path.join(out, "config.json")
  try:
    with open(path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      raise ValueError("not a JSON object")
  except (OSError, ValueError) as e:
    raise UsageError(f"cannot resume: {path} is missing or unreadable ({e}); pass --overwrite to start over") from None
  return saved


def _train(train, estimator, optimizer, task, cfg, out, resume, sequential, progress, tensorboard=False):
  import jax

  from unrolled_es.training.checkpoint import CheckpointError

  try:
    return train(estimator, optimizer, task.theta0, jax.random.key(cfg["seed"]), steps=cfg["steps"],
                 evaluate=task.evaluate, eval_every=cfg["eval_every"], log_every=cfg["log_every"],
                 checkpoint_dir=os.path.join(out, "checkpoints"), checkpoint_every=cfg["checkpoint_every"],
                 resume=resume, config={k: cfg.get(k) for k in FINGERPRINTED},
                 metrics_path=os.path.join(out, "metrics.jsonl"), sequential_steps_per_update=sequential,
                 progress=progress, progress_desc=f"{cfg['task']}/{cfg['estimator']}",
                 after_update=getattr(task, "after_update", None),
                 tensorboard_dir=os.path.join(out, "tensorboard") if tensorboard else None)
  except CheckpointError as e:
    raise UsageError(f"{e}; pass --overwrite to start over") from None
  except ValueError as e:  # the library's argument checks, e.g. a theta the estimator cannot perturb
    raise UsageError(str(e)) from None
  except KeyboardInterrupt:
    print(f"unrolled-es: interrupted; progress is checkpointed in {out}, continue with --resume", file=sys.stderr)
    return None


def _prepare_out(args):
  """The run folder, and the saved configuration when resuming (None for a new run)."""
  out = args.out or os.path.join("runs", f"{args.task}_{args.estimator}")
  if args.out is None and (args.task is None or args.estimator is None):
    raise UsageError("pass --out (the run folder), or --task and --estimator for the default runs/<task>_<estimator>")
  if os.path.exists(out) and not os.path.isdir(out):
    raise UsageError(f"--out {out} is a file, not a folder")
  if not _holds_run(out):
    if args.resume:
      print(f"unrolled-es: note: nothing to resume in {out}; starting a new run", file=sys.stderr)
    return out, None
  if not (args.resume or args.overwrite):
    raise UsageError(f"--out {out} already holds a run; pass --resume to continue it or --overwrite to replace it")
  if args.overwrite:
    for f in RUN_FILES:
      path = os.path.join(out, f)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path) if os.path.exists(path) else None
    return out, None
  saved = _read_saved_config(out)
  _check_same_run(out, saved, _explicit(args))
  return out, {k: saved[k] for k in FINGERPRINTED + ("steps", "eval_every", "checkpoint_every", "log_every",
                                                    "diagnostics") if k in saved}


def _configure(args, saved):
  """(config, task, estimator, optimizer) from the command line, the saved run and the task's settings."""
  cfg, ctor = _resolve(args, saved)
  try:
    task = build_task(cfg["task"], **cfg["task_args"])
  except (TypeError, ValueError) as e:
    raise UsageError(f"task {cfg['task']!r}: {e}") from None
  _check_integer_theta(cfg, task)
  cfg = _fill_from_task(cfg, task, ctor)
  _notes_for_ignored(args, cfg, ctor)
  return cfg, task, _build_estimator(cfg, task, ctor), _masked_optimizer(make_optimizer(cfg["optimizer"], cfg["lr"]),
                                                                       task)


def _masked_optimizer(optimizer, task):
  """The optimizer restricted to the leaves the task's mask trains: a masked leaf gets no update at all, not
  even weight decay (adamw), so statistics kept in θ (observation normalisation) stay as after_update set them."""
  mask = getattr(task, "mask", None)
  if mask is None:
    return optimizer
  import jax
  import numpy as np
  import optax
  return optax.masked(optimizer, jax.tree_util.tree_map(lambda m: bool(np.any(m)), mask))


def cmd_train(args) -> int:
  import warnings

  import jax
  import optax

  from unrolled_es.training.loop import train

  out, saved = _prepare_out(args)
  cfg, task, estimator, optimizer = _configure(args, saved)
  os.makedirs(out, exist_ok=True)
  versions = {"jax": jax.__version__, "optax": optax.__version__}
  _write_json(os.path.join(out, "config.json"), dict(cfg, versions=versions))
  sequential = cfg["truncation"] if cfg["truncation"] is not None else task.system.horizon
  with warnings.catch_warnings():
    # one line per warning (e.g. a damaged checkpoint skipped), printed when it happens
    warnings.showwarning = lambda message, *a, **k: print(f"unrolled-es: warning: {message}", file=sys.stderr)
    result = _train(train, estimator, optimizer, task, cfg, out, saved is not None, sequential, args.progress,
                    getattr(args, "tensorboard", False))
  if result is None:
    return 130
  _finish(cfg, task, result, out, args.report)
  return 0


def _finish(cfg, task, result, out, report):
  """The plot, the task's report and the one-line summary at the end of a run."""
  plot_metrics(result.metrics, os.path.join(out, "meta_loss.png"), f"{cfg['task']} / {cfg['estimator']}")
  if report:
    run_report(cfg["task"], task, result.theta, out)
  last = next((r for r in reversed(result.metrics) if r.get("eval_meta_loss") is not None), {})
  done = result.metrics[-1] if result.metrics else {}
  print(f"done: {result.step} outer steps, {done.get('total_inner_steps', 0)} total inner steps "
        f"({done.get('sequential_inner_steps', 0)} sequential), {result.num_skipped} skipped updates, "
        f"final meta_loss {_fmt(last.get('eval_meta_loss'))}; results in {out}")


def cmd_list() -> int:
  print("tasks:")
  for name in task_names():
    print(f"  {name}")
  print("estimators:")
  for name, ctor in estimator_constructors().items():
    doc = (inspect.getdoc(ctor) or inspect.getdoc(sys.modules.get(ctor.__module__)) or "").strip().splitlines()
    print(f"  {name:<16} {doc[0] if doc else ''}".rstrip())
  print("optimizers:\n  " + ", ".join(OPTIMIZERS))
  return 0


# ---------------------------------------------------------------- outputs

def _fmt(x):
  if x is None:
    return "n/a"
  if hasattr(x, "dtype") and getattr(x, "size", 0) == 1:
    x = _jsonable(x)
  return f"{x:.4g}" if isinstance(x, float) else str(x)


def format_table(rows) -> str:
  """Rows (dicts with the same keys) as an aligned text table."""
  rows = list(rows)
  if not rows:
    return ""
  cols = list(rows[0])
  cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
  line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))
  return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])


def plot_metrics(metrics, path, title=""):
  """PNG of the training (window) loss and the evaluated meta-loss against total inner steps, and, when the run
  has diagnostics, the estimate's variance ratio and effective number of particles."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  diag = [(r["total_inner_steps"], r["variance_ratio"], r.get("effective_particles")) for r in metrics
          if r.get("variance_ratio") is not None]
  fig = Figure(figsize=(6.4, 6.8 if diag else 4.0), dpi=120)
  FigureCanvasAgg(fig)
  _plot_losses(fig.add_subplot(2 if diag else 1, 1, 1), metrics, title)
  if diag:
    _plot_diagnostics(fig.add_subplot(2, 1, 2), diag)
  fig.subplots_adjust(left=0.12, right=0.88, bottom=0.08 if diag else 0.12, top=0.95, hspace=0.3)
  tmp = path + ".tmp"
  fig.savefig(tmp, format="png")
  os.replace(tmp, path)


def _plot_losses(ax, metrics, title):
  train = [(r["total_inner_steps"], r["loss"]) for r in metrics if r.get("loss") is not None]
  evals = [(r["total_inner_steps"], r["eval_meta_loss"]) for r in metrics if r.get("eval_meta_loss") is not None]
  if train:
    ax.plot(*zip(*train), lw=0.8, alpha=0.6, label="training loss (estimator windows)")
  if evals:
    ax.plot(*zip(*evals), "o-", ms=3, label="meta-loss (unperturbed evaluation)")
  ys = [y for _, y in train + evals]
  if ys and min(ys) > 0 and max(ys) > 20 * min(ys):
    ax.set_yscale("log")
  ax.set(xlabel="total inner steps", ylabel="loss", title=title)
  ax.grid(alpha=0.3)
  if train or evals:
    ax.legend()


def _plot_diagnostics(ax, diag):
  steps, ratio, eff = zip(*diag)
  ax.plot(steps, ratio, lw=0.8, color="C3", label="tr Var(ĝ) / ‖ĝ‖²")
  ax.set(xlabel="total inner steps", ylabel="variance ratio", yscale="log")
  ax.grid(alpha=0.3)
  if all(e is not None for e in eff):
    twin = ax.twinx()
    twin.plot(steps, eff, lw=0.8, color="C4", label="effective particles")
    twin.set_ylabel("effective particles")
    twin.legend(loc="upper right", fontsize=8)
  ax.legend(loc="upper left", fontsize=8)


def run_report(name, task, theta, out):
  """The task's end-of-run report (`Task.report(theta, out_dir)`), printed as a table, if the task has one."""
  if getattr(task, "report", None) is None:
    return
  result = task.report(theta, out)
  if isinstance(result, str):
    print(result)
  elif result:
    print(format_table(result))


def main(argv=None) -> int:
  parser = make_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else 0
  try:
    return cmd_list() if args.command == "list" else cmd_train(args)
  except UsageError as e:
    print(f"unrolled-es: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
