"""What the factored rank-1 correction costs on its own: a shared-W recurrent step over every member's rows, with
and without σ(xa)bᵀ, outside the engine.

    python -m benchmarks.correction_scaling [--quick] [--out DIR]

Model: h ← tanh(h W + σ(h a_m) b_mᵀ) for M members of 4 rows each, K = 10 steps in one compiled scan; W is one
width × width matrix shared by every member (so h W is one GEMM), a_m and b_m each member's rank-1 factors. The
"bare" program is the same scan without the correction. For each (width, M), the two programs are called in turn
31 times after compiling (paired rounds); reported: the median of the per-round ratio corrected / bare, the median
extra microseconds per 10 steps, and the correction's share of the arithmetic (2·width multiply-adds per row and
step, for xa and for adding (xa)bᵀ, against width² for xW).

Compared with benchmarks.profile_window's "unroll − layout" (the same correction inside the engine's unroll), it
says how much of that stage is the correction's arithmetic and how much the way the engine feeds it. Writes
correction_scaling[_quick].json to --out.
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import write_json_atomic

CELLS = {"default": ((16, 128), (32, 128), (64, 128), (128, 128), (256, 128), (256, 2048)),
         "quick": ((16, 8), (32, 8))}
ROUNDS = {"default": 31, "quick": 3}
ROWS, K, SIGMA = 4, 10, 0.01


def scan_program(width, members, corrected):
  """(jitted K-step scan, its input h0) for one cell."""
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  w = jax.random.normal(keys[0], (width, width)) / width ** 0.5
  a, b = (jax.random.normal(k, (members, width, 1)) for k in keys[1:3])

  def step(h, _):
    out = h @ w
    if corrected:
      out = out + SIGMA * jnp.matmul(h, a) * b[:, None, :, 0]
    return jnp.tanh(out), None
  h0 = jax.random.normal(keys[3], (members, ROWS, width))
  return jax.jit(lambda h: jax.lax.scan(step, h, None, length=K)[0]), h0


def measure(width, members, rounds):
  programs = [scan_program(width, members, corrected) for corrected in (False, True)]
  for f, h in programs:
    f(h).block_until_ready()
  ratios, extra = [], []
  for _ in range(rounds):
    seconds = []
    for f, h in programs:
      start = time.perf_counter()
      f(h).block_until_ready()
      seconds.append(time.perf_counter() - start)
    ratios.append(seconds[1] / seconds[0])
    extra.append(seconds[1] - seconds[0])
  return {"width": width, "members": members, "x_bare": float(np.median(ratios)),
          "extra_us_per_window": 1e6 * float(np.median(extra)), "arithmetic_share": 2 / width}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="two small cells, 3 rounds: checks the pipeline")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)
  preset = "quick" if args.quick else "default"
  rows = [measure(w, m, ROUNDS[preset]) for w, m in CELLS[preset]]
  print("| width | members | corrected / bare | extra µs per 10 steps | arithmetic share |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['width']} | {r['members']} | {r['x_bare']:.3f} | {r['extra_us_per_window']:.1f} | "
          f"{r['arithmetic_share']:.3f} |")
  name = "correction_scaling_quick.json" if args.quick else "correction_scaling.json"
  write_json_atomic({"jax": jax.__version__, "rows": rows}, os.path.join(args.out, name))


if __name__ == "__main__":
  main()
