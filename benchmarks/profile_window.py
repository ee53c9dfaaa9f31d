"""Where one estimate's time goes beyond the bare unroll: factored rank-1 ES-Single, stage by stage.

    python -m benchmarks.profile_window [--quick] [--out DIR]

Model and bare unroll as in benchmarks/throughput.py (a tanh recurrent layer, 4 rows per member, K = 10, T = 100,
inputs derived from the state: the bare unroll's step draws no random numbers). For each cell (width, N pairs),
every stage below runs `loops` times inside one compiled loop (`in_loop`: no call overhead, nothing hoisted), and
the rounds call each loop in turn (paired rounds, after compiling); a stage's figure is the median over rounds of
its time over the bare unroll's in the same round:

  bare        the vmapped K-step scan of 2N members with the unperturbed θ (hW one GEMM for all members);
  layout      the engine's aligned unroll (window.unroll_aligned: particles × members) with every member's parameters
              θ itself: the bare arithmetic in the engine's layout, so layout − bare is what the layout costs;
  unroll      the same unroll with one fixed rank-1 draw per particle, factored: layout + the corrections σ(ha)bᵀ,
              so unroll − layout is what the correction costs;
  keys        this window's keys and plan (particles.window_keys, particles.plan);
  draws       the window's draws (window.draw: for ES-Single's kept low-rank draws, only resetting particles draw);
  resets      the new episodes' states of the particles that reset (about N·K/T of them: staggered particles);
  combine     the gradient from a window's outcome (loss differences, coefficients, the combine GEMMs);
  window      engine.es_window: keys, plan, draws, resets, the unroll and the next state together;
  estimate    the whole estimate.

Called directly, as a training loop calls them: `estimate call` (the jitted estimate against the jitted bare
unroll, each with its call overhead, the state donated and threaded from call to call: the figure the targets are
about) and `dispatch`, a jitted function with the estimate's
inputs and outputs that computes nothing: the cost of calling a compiled function with that many arrays.

Stages timed alone do not add up exactly to the estimate (XLA fuses across them inside one program); the table
gives each as a fraction of the bare unroll and the estimate's own ratio. Both wall time and process CPU time (all
threads) are reported: under load from other processes CPU time is the steadier measure of the work done.

Memory: the peak bytes per particle of one estimate at N = 10⁵ particles, factored rank-1 noise, from XLA's buffer
assignment of the compiled estimate (`compiled.memory_analysis()`: arguments, outputs, temporaries), at each
cell's width; nothing is run at that size. Writes benchmarks/results/profile_window[_quick].json.
"""
import argparse
import importlib
import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import unrolled_es as ue
from benchmarks.common import threaded_bare, threaded_estimate
from benchmarks.throughput import SIGMA, bare_unroll, machine, rnn_system
from unrolled_es.core import engine
from unrolled_es.core import estimator
from unrolled_es.core import particles
from unrolled_es.core import window

# (width, N pairs, evaluations per in-loop call, rounds): enough of both that a round of small cells is not all
# call overhead and the medians settle.
CELLS = {"default": ((64, 64, 20, 41), (256, 1024, 2, 15)), "quick": ((64, 64, 5, 5), (64, 1024, 1, 3))}


class _Unperturbed(NamedTuple):
  """Stands in for window.Member: every member runs θ itself, so the unroll has the engine's layout and no noise."""
  def params(self, theta, eps, sign, key):
    return theta


def _parts(width, n, k, rows=4, inputs=16):
  """Everything the stages need for one cell, particles staggered over the horizon (a window has N·K/T resets)."""
  system, theta = rnn_system(width, rows, inputs, k, "float32")
  noise = ue.low_rank(1, factored=True)
  est = ue.es_single(system, num_particles=n, sigma=SIGMA, truncation_length=k, noise=noise, stagger=True)
  key = jax.random.PRNGKey(1)
  state = jax.jit(est.init)(key, theta)
  rule = importlib.import_module("unrolled_es.estimators.es_single").RULE
  s = estimator.settings(system, members=2, num_particles=n, sigma=SIGMA, truncation_length=k, noise=noise)
  return dict(system=system, theta=theta, noise=noise, est=est, key=key, state=state, rule=rule, settings=s,
              how=engine.draw_settings(system, rule, s), k=k, n=n)


def _window_stages(c):
  """keys, draws, resets, unroll and layout: name -> (function, args)."""
  system, theta, k, key, state = c["system"], c["theta"], c["k"], c["key"], c["state"]
  member, signs = window.Member(c["noise"], SIGMA), jnp.array([1.0, -1.0])
  keys = particles.window_keys(key, c["n"], None)
  plan = particles.plan(state, keys, k, c["rule"].redraw)
  draws = window.draw(c["noise"], theta, state, plan, keys, c["how"])
  draw_keys = jnp.where(plan.resets[:, None], keys.reset, plan.draw_key)

  def keys_and_plan(kk, p):
    ks = particles.window_keys(kk, c["n"], None)
    return ks, particles.plan(p, ks, k, c["rule"].redraw)
  unroll = lambda who: lambda th, start, e, dk, ks: window.unroll_aligned(system, who, th, start, e, signs, dk,
                                                                        ks.steps, k, True)
  resets = lambda th, e, ks, dk, pl, inner: window.fresh_states(system, member, th, e, signs, ks.init, dk,
                                                                pl.resets, inner, c["how"].budget)
  return {"keys": (keys_and_plan, (key, state)),
          "draws": (lambda th, p, pl, ks: window.draw(c["noise"], th, p, pl, ks, c["how"]), (theta, state, plan, keys)),
          "resets": (resets, (theta, draws.post, keys, draw_keys, plan, state.inner)),
          "layout": (unroll(_Unperturbed()), (theta, state.inner, draws.pre, draw_keys, keys)),
          "unroll": (unroll(member), (theta, state.inner, draws.pre, draw_keys, keys))}


def _tied(tree, zero):
  """`tree` made to depend on `zero` (a float32 0 computed from the last evaluation's outputs) without changing a
  value: floats + zero, integers + (zero ≠ 0). The compiler cannot prove `zero` is 0, so the next evaluation can be
  neither hoisted out of the loop nor merged with the last one; the elementwise op fuses into each input's first
  use."""
  def tie(x):
    if jnp.issubdtype(x.dtype, jnp.floating):
      return x + zero.astype(x.dtype)
    return x + (zero != 0).astype(x.dtype)
  return jax.tree_util.tree_map(tie, tree)


def in_loop(f, loops: int):
  """f's cost without a call's overhead: `loops` evaluations inside one compiled loop. Each evaluation's inputs
  depend on the previous one's outputs (see `_tied`), and every output is summed, so none of f's work is hoisted,
  merged or dropped (without the tie, XLA hoisted it: 80 evaluations cost what one did)."""
  def run(*args):
    def body(i, carry):
      total, zero = carry
      out = sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree_util.tree_leaves(f(*_tied(args, zero))))
      return total + out, jnp.nan_to_num(out) * 0   # x·0 is not folded for floats (inf·0 is NaN); finite here
    return jax.lax.fori_loop(0, loops, body, (jnp.float32(0), jnp.float32(0)))[0]
  return run


def stage_functions(width, n, loops, k=10):
  """name -> (jitted function, args) for one cell: every stage `loops` times in one call (see in_loop), and the
  bare unroll, the estimate and an empty function called directly (what a user's call costs)."""
  c = _parts(width, n, k)
  system, theta, key, state, est = c["system"], c["theta"], c["key"], c["state"], c["est"]
  bare, bare_states = bare_unroll(system, 2 * n, k)
  window_fn = lambda th, p, kk: engine.es_window(system, c["rule"], c["settings"], th, p, kk)
  _, outcome = window_fn(theta, state, key)
  _, _, info = est.estimate(key, theta, state)
  outputs = (theta, state, info)
  stages = {"bare": (bare, (theta, bare_states, key)), **_window_stages(c),
            "combine": (lambda th, out: engine.es_gradient(c["rule"], c["settings"], out, th), (theta, outcome)),
            "window": (window_fn, (theta, state, key)),
            "estimate": (est.estimate, (key, theta, state))}
  fns = {name: (jax.jit(in_loop(f, loops)), args) for name, (f, args) in stages.items()}
  # Direct calls as a training loop makes them: state donated and threaded (each call is the next window).
  donated_bare, donated_states = bare_unroll(system, 2 * n, k, donate=True)
  estimate_call, _ = threaded_estimate(jax.jit(est.estimate, donate_argnums=(2,)), key, theta,
                                       jax.tree_util.tree_map(jnp.copy, state))
  nothing = jax.jit(lambda kk, th, p: jax.tree_util.tree_map(lambda x: x, outputs))
  return dict(fns, bare_call=(threaded_bare(donated_bare, theta, donated_states, key), ()),
              estimate_call=(estimate_call, ()), dispatch=(nothing, (key, theta, state)))


def interleaved(fns, reps):
  """Per-round wall and CPU seconds of each function, called in turn `reps` times after two warm-up calls."""
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
  return wall, cpu


def summary(times, loops):
  """name -> ms per evaluation (median over rounds; in-loop stages divided by `loops`) and x_bare: the median over
  rounds of its time over the bare unroll's in the same round (in-loop stages against the in-loop bare unroll,
  direct calls against the direct call)."""
  out = {}
  for name, v in times.items():
    direct = name in ("bare_call", "estimate_call", "dispatch")
    per = np.asarray(v) / (1 if direct else loops)
    bare = np.asarray(times["bare_call" if direct else "bare"]) / (1 if direct else loops)
    out[name] = {"ms": 1e3 * float(np.median(per)), "x_bare": float(np.median(per / bare))}
  return out


def profile_cell(width, n, loops, reps):
  wall, cpu = interleaved(stage_functions(width, n, loops), reps)
  return {"width": width, "particles": n, "loops": loops, "reps": reps, "wall": summary(wall, loops),
          "cpu": summary(cpu, loops)}


def memory_per_particle(width, n=100_000, k=10, rows=4, inputs=16):
  """Bytes per particle of one compiled estimate at N particles, factored rank-1 ES-Single (XLA's buffer
  assignment: nothing runs at this size). The state is an argument and an output (not donated)."""
  system, theta = rnn_system(width, rows, inputs, k, "float32")
  est = ue.es_single(system, num_particles=n, sigma=SIGMA, truncation_length=k, noise=ue.low_rank(1, factored=True),
                     stagger=True)
  key = jax.random.PRNGKey(1)
  state = jax.eval_shape(est.init, key, theta)
  stats = jax.jit(est.estimate).lower(key, theta, state).compile().memory_analysis()
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
  peak = getattr(stats, "peak_memory_in_bytes", 0) or (stats.argument_size_in_bytes + stats.output_size_in_bytes
                                                       + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  per = lambda b: b / n
  return {"width": width, "particles": n, "state_bytes_per_particle": per(state_bytes),
          "temp_bytes_per_particle": per(stats.temp_size_in_bytes),
          "arguments_bytes_per_particle": per(stats.argument_size_in_bytes),
          "outputs_bytes_per_particle": per(stats.output_size_in_bytes),
          "peak_bytes_per_particle": per(peak), "peak_bytes": int(peak)}


STAGES = ("layout", "unroll", "keys", "draws", "resets", "combine", "window", "estimate")


def table(rows):
  """Stage ratios (in-loop, against the in-loop bare unroll), then the direct calls: the estimate against the bare
  unroll, and the empty call's ms."""
  lines = ["| width | N | clock | bare ms | " + " | ".join(STAGES) + " | estimate call | dispatch ms |",
           "|---" * (len(STAGES) + 6) + "|"]
  for r in rows:
    for clock in ("wall", "cpu"):
      c = r[clock]
      stages = " | ".join(f"{c[name]['x_bare']:.3f}" for name in STAGES)
      lines.append(f"| {r['width']} | {r['particles']} | {clock} | {c['bare']['ms']:.3f} | {stages} | "
                   f"{c['estimate_call']['x_bare']:.3f} | {c['dispatch']['ms']:.3f} |")
  return "\n".join(lines)


def memory_table(rows):
  lines = ["| width | N | state B/particle | temporaries B/particle | peak B/particle |", "|---" * 5 + "|"]
  lines += [f"| {m['width']} | {m['particles']} | {m['state_bytes_per_particle']:.0f} | "
            f"{m['temp_bytes_per_particle']:.0f} | {m['peak_bytes_per_particle']:.0f} |" for m in rows]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  preset = "quick" if args.quick else "default"
  rows = []
  for width, n, loops, reps in CELLS[preset]:
    rows.append(profile_cell(width, n, loops, reps))
    print(f"width {width}, N {n} done", flush=True)
  memory = [memory_per_particle(width, n=1000 if args.quick else 100_000) for width in sorted({c[0] for c in
                                                                                               CELLS[preset]})]
  result = {"preset": preset, "jax": jax.__version__, "backend": jax.default_backend(), "machine": machine(),
            "rows": rows, "memory": memory}
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "profile_window" + ("_quick" if args.quick else "") + ".json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(table(rows))
  print(memory_table(memory))
  print(f"wrote {path}")
  return result


if __name__ == "__main__":
  main()
