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
