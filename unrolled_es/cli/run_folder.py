"""A run folder's identity: which options make a run what it is, and whether a command may write to, resume or
replace the folder.

A run folder holds config.json (every option, resolved), metrics.jsonl, checkpoints/, meta_loss.png and, with
--tensorboard, tensorboard/. The options in `FINGERPRINTED` change the computation: `--resume` must agree with
the saved run on every one given on its command line (the others may change: more --steps, say), and the
checkpoints are fingerprinted by them so that a different run's checkpoint is never restored.
"""
import json
import os
import shutil
import sys

from unrolled_es.cli.parser import UsageError

FINGERPRINTED = ("task", "task_args", "estimator", "estimator_args", "particles", "sigma", "truncation", "noise",
                 "rank", "factored", "devices", "horizons", "shaping", "clip_differences", "clip_gradient", "lr",
                 "optimizer", "seed", "antithetic", "stagger")
# Options that may change when a run is resumed; saved so that a bare --resume continues as the run was set up.
RESUMABLE = ("steps", "eval_every", "checkpoint_every", "log_every", "diagnostics")
RUN_FILES = ("config.json", "metrics.jsonl", "meta_loss.png", "checkpoints", "tensorboard")
FLAG = {k: "--" + k.replace("_args", "-arg").replace("_", "-") for k in FINGERPRINTED}  # task_args -> --task-arg


def holds_run(out) -> bool:
  return any(os.path.exists(os.path.join(out, f)) for f in RUN_FILES)


def explicit(args) -> dict:
  """The fingerprinted options the user set on this command line."""
  given = {k: getattr(args, k) for k in FINGERPRINTED if getattr(args, k) is not None}
  for k in ("task_args", "estimator_args"):
    if not given.get(k):
      given.pop(k, None)
    else:
      given[k] = dict(given[k])
  return given


def check_same_run(out, saved, given):
  """Every option given on a --resume command line must be the saved run's: all differences are named at once."""
  differences = [f"{FLAG[k]} {saved.get(k)!r}, not {v!r}" for k, v in given.items() if saved.get(k) != v]
  if differences:
    raise UsageError(f"{out} holds a run with {'; '.join(differences)}; drop "
                     f"{'these options' if len(differences) > 1 else 'the option'} to resume that run, or pass "
                     f"--overwrite to replace it")


def read_saved_config(out) -> dict:
  path = os.path.join(out, "config.json")
  try:
    with open(path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      raise ValueError("not a JSON object")
  except (OSError, ValueError) as e:
    raise UsageError(f"cannot resume: {path} is missing or unreadable ({e}); pass --overwrite to start over") from None
  return saved


def prepare(args, out):
  """The saved configuration when resuming the run in `out` (None for a new run); --overwrite empties `out`."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise UsageError(f"--out {out} is a file, not a folder")
  if not holds_run(out):
    if args.resume:
      print(f"unrolled-es: note: nothing to resume in {out}; starting a new run", file=sys.stderr)
    return None
  if not (args.resume or args.overwrite):
    raise UsageError(f"--out {out} already holds a run; pass --resume to continue it or --overwrite to replace it")
  if args.overwrite:
    for f in RUN_FILES:
      path = os.path.join(out, f)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path) if os.path.exists(path) else None
    return None
  saved = read_saved_config(out)
  check_same_run(out, saved, explicit(args))
  return {k: saved[k] for k in FINGERPRINTED + RESUMABLE if k in saved}


def jsonable(x):
  import numpy as np
  a = np.asarray(x)
  return a.item() if a.size == 1 else a.tolist()


def write_json(path, obj):
  """Atomically: a crash never leaves a half-written config.json."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=jsonable)
    f.write("\n")
  os.replace(tmp, path)
