"""Where one estimate's time goes beyond the bare unroll: factored rank-1 ES-Single, stage by stage.

    python -m benchmarks.profile_window [--quick] [--out DIR]

Model and bare unroll as in benchmarks/throughput.py (a tanh recurrent layer, 4 rows per member, K = 10, inputs
derived from the state: the bare unroll's step draws no random numbers). For each cell (width, N pairs), these
jitted functions are timed in turn, interleaved, after compiling, and their medians compared:

  bare        the vmapped K-step scan of 2N members with the unperturbed θ (hW one GEMM for all members);
  unroll      the engine's K-step unroll of the 2N members with one fixed rank-1 draw per particle
              (window.unroll_aligned): the bare step plus the factored corrections σ(ha)bᵀ;
  window      engine.es_window: + this window's keys and plan, the draws and new episodes' states of the
              particles that reset (about N·K/T of them, the particles being staggered), and the next state;
  estimate    the whole estimate: + loss differences, coefficients, the combine GEMM, info;
  dispatch    a jitted function with the estimate's inputs and outputs that computes nothing: the cost of
              calling a compiled function with that many arrays, which any estimate pays.

Both wall time and process CPU time (all threads) are reported: under load from other processes CPU time is the
steadier measure of the work done. Writes benchmarks/results/profile_window[_quick].json.
"""
import argparse
import importlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import unrolled_es as ue
from benchmarks.throughput import SIGMA, bare_unroll, machine, rnn_system
from unrolled_es.core import engine
from unrolled_es.core import estimator
from unrolled_es.core import particles
from unrolled_es.core import window

CELLS = {"default": ((64, 64), (256, 1024)), "quick": ((64, 64), (64, 1024))}


def stage_functions(width, n, k=10, rows=4, inputs=16):
  """name -> (jitted function, args) for one cell, particles staggered over the horizon."""
  system, theta = rnn_system(width, rows, inputs, k, "float32")
  noise = ue.low_rank(1, factored=True)
  est = ue.es_single(system, num_particles=n, sigma=SIGMA, truncation_length=k, noise=noise, stagger=True)
  key = jax.random.PRNGKey(1)
  state = jax.jit(est.init)(key, theta)   # staggered: in the timed window N·K/T particles reset
  bare, bare_states = bare_unroll(system, 2 * n, k)
  keys = particles.window_keys(key, n, None)
  eps = jax.vmap(noise.sample, (0, None))(keys.draw, theta)
  member, signs = window.Member(noise, SIGMA), jnp.array([1.0, -1.0])
  settings = estimator.settings(system, members=2, num_particles=n, sigma=SIGMA, truncation_length=k,
                                 noise=noise)
  rule = importlib.import_module("unrolled_es.estimators.es_single").RULE
  unroll = lambda th, start, e, ks: window.unroll_aligned(system, member, th, start, e, signs, ks.draw, ks.steps,
                                                          k, True)
  win = lambda th, p, kk: engine.es_window(system, rule, settings, th, p, kk)
  _, _, info = est.estimate(key, theta, state)
  outputs = (theta, state, info)
  nothing = lambda kk, th, p: jax.tree_util.tree_map(lambda x: x, outputs)
  return {"bare": (jax.jit(bare), (theta, bare_states, key)),
          "unroll": (jax.jit(unroll), (theta, state.inner, eps, keys)),
          "window": (jax.jit(win), (theta, state, key)),
          "estimate": (jax.jit(est.estimate), (key, theta, state)),
          "dispatch": (jax.jit(nothing), (key, theta, state))}


def interleaved(fns, reps):
  """Median wall and CPU seconds of each function, called in turn `reps` times after two warm-up calls."""
  for f, args in fns.values():
    for _ in range(2):
      jax.block_until_ready(f(*args))
  wall, cpu = {n: [] for n in fns}, {n: [] for n in fns}
  for _ in range(reps):
    for name, (f, args) in fns.items():
      w0, c0 = time.perf_counter(), time.process_time()
      jax.block_until_ready(f(*args))
      wall[name].append(time.perf_counter() - w0)
      cpu[name].append(time.process_time() - c0)
  return ({n: float(np.median(v)) for n, v in wall.items()}, {n: float(np.median(v)) for n, v in cpu.items()})


def profile_cell(width, n, reps):
  wall, cpu = interleaved(stage_functions(width, n), reps)
  row = {"width": width, "particles": n, "reps": reps}
  for clock, t in (("wall", wall), ("cpu", cpu)):
    row[clock] = {name: {"ms": 1e3 * v, "x_bare": v / t["bare"]} for name, v in t.items()}
  return row


def table(rows):
  lines = ["| width | N | clock | bare ms | unroll | window | estimate | dispatch ms |", "|---" * 8 + "|"]
  for r in rows:
    for clock in ("wall", "cpu"):
      c = r[clock]
      lines.append(f"| {r['width']} | {r['particles']} | {clock} | {c['bare']['ms']:.3f} | "
                   f"{c['unroll']['x_bare']:.2f}× | {c['window']['x_bare']:.2f}× | {c['estimate']['x_bare']:.2f}× | "
                   f"{c['dispatch']['ms']:.3f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  preset = "quick" if args.quick else "default"
  rows = []
  for width, n in CELLS[preset]:
    reps = 11 if args.quick else (300 if width * n <= 64 * 64 else 21)
    rows.append(profile_cell(width, n, reps))
    print(f"width {width}, N {n} done", flush=True)
  result = {"preset": preset, "jax": jax.__version__, "backend": jax.default_backend(), "machine": machine(),
            "rows": rows}
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "profile_window" + ("_quick" if args.quick else "") + ".json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(table(rows))
  print(f"wrote {path}")
  return result


if __name__ == "__main__":
  main()
