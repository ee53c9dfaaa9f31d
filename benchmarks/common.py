"""What the benchmark commands share: a preset option, writing a result as JSON beside its plot, and timing a
compiled call."""
import argparse
import json
import os
import time

import jax
import numpy as np


def preset_arguments(doc, presets, argv=None, extra=None):
  """--preset NAME (default "default"), --quick (= --preset quick) and --out DIR; `extra(parser)` adds a
  command's own options."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(presets), default="default")
  parser.add_argument("--quick", action="store_const", dest="preset", const="quick")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  if extra is not None:
    extra(parser)
  return parser.parse_args(argv)


def write_result(result, out_dir, stem, preset, plot):
  """<stem>[_<preset>].json and .png in out_dir (no suffix for the default preset); returns the JSON's path."""
  os.makedirs(out_dir, exist_ok=True)
  suffix = "" if preset == "default" else f"_{preset}"
  path = os.path.join(out_dir, f"{stem}{suffix}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  plot(result, path[:-5] + ".png")
  print(f"wrote {path} in {result['seconds']} s")
  return path


def median_time(fn, *args, repeats=5):
  """Median seconds of `fn(*args)` (jitted) over `repeats` calls, after one call that compiles it."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def paired_rounds(fns, rounds: int, warmup: int = 1):
  """Per-name lists of seconds: every function of `fns` (name -> zero-argument callable returning arrays) called
  once per round, in turn, after `warmup` untimed calls each. Functions timed within one round see the same
  machine load, so per-round ratios between them are fairer than ratios of separate medians on a shared machine."""
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return times


def median_ratio(times, numerator: str, denominator: str) -> float:
  """The median over rounds of times[numerator][i] / times[denominator][i] (see `paired_rounds`)."""
  return float(np.median(np.asarray(times[numerator]) / np.asarray(times[denominator])))


def write_json_atomic(result, path):
  """Writes `result` as JSON to `path` by a rename, so a reader (or a run killed mid-write) never sees half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, path)


def threaded_estimate(estimate, key, theta, state):
  """A zero-argument call of `estimate` (compiled with the state donated: `jax.jit(est.estimate,
  donate_argnums=2)`, as a training loop runs it) that threads the state from call to call, so no call copies
  the particles' state and each call is the next window. Returns (call, holder); holder["state"] is the latest."""
  holder = {"state": state}

  def call():
    grad, holder["state"], info = estimate(key, theta, holder["state"])
    return grad, info
  return call, holder


def threaded_bare(bare, theta, states, key):
  """The same for a bare unroll `bare(theta, states, key) -> (final states, loss)` (donated states)."""
  holder = {"states": states}

  def call():
    holder["states"], loss = bare(theta, holder["states"], key)
    return loss
  return call


def make_taking(name, system, **options):
  """`ue.make(name, system, ...)` with only the options estimator `name` takes: a sweep over every estimator passes
  one set of settings (full ES has no truncation length, BPTT no σ), while `ue.make` itself refuses the others."""
  import unrolled_es as ue
  return ue.make(name, system, **{k: v for k, v in options.items() if k in ue.estimator_options(name)})


def check_choices(parser, checks):
  """parser.error naming the option and its allowed values for any (option, given, allowed) whose given values are
  not all allowed."""
  for what, given, allowed in checks:
    unknown = set(given) - set(allowed)
    if unknown:
      parser.error(f"--{what} must be drawn from {', '.join(allowed)}; got {', '.join(sorted(unknown))}")
