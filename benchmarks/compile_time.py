"""First-call compile time of every registered estimator on the LSTM and learned-optimizer tasks.

  python -m benchmarks.compile_time [--quick] [--out DIR] [--repeats R]

For each task (unrolled_es_tasks.rnn_char: a character LSTM; unrolled_es_tasks.learned_optimizer: a per-parameter
MLP optimizer training MLP classifiers) and each name in `ue.registered()` (aliases of one constructor once),
the estimator is built with `ue.make(name, system, ...)` from num_particles=N, sigma=σ, truncation_length=K (those
it takes) at the task's published σ and K, and its `estimate` and `init` are traced, lowered and compiled ahead of
time (`jax.jit(f).lower(...).compile()`), nothing executed: the seconds a user waits before the first call returns,
apart from the run itself. Both stages are reported: tracing and lowering (Python: the library's and the task's
code) and XLA's compile. ES-Single with factored rank-1 noise is added as its own row (the fast path compiles a
different step). int_es needs an int8 θ, so it is timed on its own task (unrolled_es_tasks.int_lm) instead.

The persistent compilation cache is switched off, so every figure is a cold compile. Medians of `--repeats`
rounds (each round compiles every estimator once, in turn: the machine's load is shared across rows; one round by
default). Writes
benchmarks/results/compile_time[_quick].json and prints a markdown table.
"""
import time

import jax
import numpy as np

import unrolled_es as ue
from benchmarks.common import make_taking, preset_arguments, write_json_atomic

PRESETS = {
  "default": dict(tasks={"rnn_char": {}, "learned_optimizer": {}, "int_lm": {}}, particles=64, repeats=1),
  "quick": dict(tasks={"rnn_char": {"hidden": 2, "horizon": 20}, "int_lm": {"hidden": 8, "horizon": 8}},
                particles=4, repeats=1, names=("es_single", "truncated_bptt", "int_es")),
}
INTEGER_ONLY = ("int_es",)
EXTRA = {"es_single+low_rank1_factored": ("es_single", lambda: ue.low_rank(1, factored=True))}


def estimator_names(only=None):
  """Registered names, one per constructor (aliases such as nres = es_single once), plus the EXTRA rows."""
  seen, names = set(), []
  for name, ctor in ue.registered().items():
    if ctor not in seen and (only is None or name in only):
      seen.add(ctor)
      names.append(name)
  return names + [n for n in EXTRA if only is None or EXTRA[n][0] in only]


def applies(name, task_name):
  integer = EXTRA.get(name, (name,))[0] in INTEGER_ONLY
  return integer == (task_name == "int_lm")


def build(name, task, particles):
  base, noise = EXTRA.get(name, (name, None))
  settings = dict(task.settings)
  kwargs = dict(num_particles=particles, sigma=settings.get("sigma", 0.01),
                truncation_length=settings.get("truncation_length", 10))
  if noise is not None:
    kwargs["noise"] = noise()
  if base in INTEGER_ONLY:
    kwargs = dict(num_particles=particles)
  return make_taking(base, task.system, **kwargs)   # each estimator keeps the options it takes


def compile_seconds(fn, *args):
  """(trace + lower seconds, XLA compile seconds, process CPU seconds of both) of jax.jit(fn) at these arguments
  (arrays or shapes). CPU seconds (all threads) are the steadier figure when other processes share the machine."""
  start, cpu = time.perf_counter(), time.process_time()
  lowered = jax.jit(fn).lower(*args)
  traced = time.perf_counter()
  lowered.compile()
  return traced - start, time.perf_counter() - traced, time.process_time() - cpu


def measure(est, theta):
  key = jax.random.PRNGKey(0)
  init_lower, init_compile, init_cpu = compile_seconds(est.init, key, theta)
  state = jax.eval_shape(est.init, key, theta)
  lower, compile_, cpu = compile_seconds(est.estimate, key, theta, state)
  return {"estimate_trace_lower_s": lower, "estimate_compile_s": compile_,
          "estimate_first_call_s": lower + compile_, "estimate_first_call_cpu_s": cpu,
          "init_trace_lower_s": init_lower, "init_compile_s": init_compile, "init_first_call_cpu_s": init_cpu}


def one_round(spec, tasks, names):
  out = {}
  for task_name, task in tasks.items():
    for name in names:
      if not applies(name, task_name):
        continue
      try:
        out[(task_name, name)] = measure(build(name, task, spec["particles"]), task.theta0)
      except Exception as e:   # an estimator that cannot run on a task is a row with its reason
        out[(task_name, name)] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
      jax.clear_caches()
      row = out[(task_name, name)]
      print(f"{task_name} {name}: " + (row["error"] if "error" in row else
                                      f"estimate {row['estimate_first_call_s']:.1f} s, init "
                                      f"{row['init_trace_lower_s'] + row['init_compile_s']:.1f} s"), flush=True)
  return out


def summarise(rounds):
  rows = []
  for (task_name, name) in rounds[0]:
    runs = [r[(task_name, name)] for r in rounds]
    row = {"task": task_name, "estimator": name}
    if "error" in runs[0]:
      row["error"] = runs[0]["error"]
    else:
      row.update({k: float(np.median([r[k] for r in runs])) for k in runs[0]})
    rows.append(row)
  return rows


def table(rows):
  lines = ["| task | estimator | estimate: trace + lower s | compile s | first call s (CPU s) | init first call s |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['task']} | {r['estimator']} | error: {r['error'][:60]} | | | |")
      continue
    lines.append(f"| {r['task']} | {r['estimator']} | {r['estimate_trace_lower_s']:.2f} | "
                 f"{r['estimate_compile_s']:.2f} | {r['estimate_first_call_s']:.2f} "
                 f"({r['estimate_first_call_cpu_s']:.2f}) | {r['init_trace_lower_s'] + r['init_compile_s']:.2f} |")
  return "\n".join(lines)


def main(argv=None):
  args = preset_arguments(__doc__, PRESETS, argv, extra=lambda p: p.add_argument("--repeats", type=int))
  spec = PRESETS[args.preset]
  jax.config.update("jax_enable_compilation_cache", False)
  import unrolled_es_tasks as tasks
  start = time.perf_counter()
  loaded = {name: tasks.get(name, **options) for name, options in spec["tasks"].items()}
  names = estimator_names(spec.get("names"))
  rounds = [one_round(spec, loaded, names) for _ in range(args.repeats or spec["repeats"])]
  rows = summarise(rounds)
  result = {"preset": args.preset, "jax": jax.__version__, "backend": jax.default_backend(),
              "particles": spec["particles"], "repeats": len(rounds), "rows": rows,
              "seconds": round(time.perf_counter() - start, 1)}
  suffix = "" if args.preset == "default" else f"_{args.preset}"
  path = f"{args.out}/compile_time{suffix}.json"
  write_json_atomic(result, path)
  print(table(rows))
  print(f"wrote {path} in {result['seconds']} s")
  return result


if __name__ == "__main__":
  main()
