"""Every accelerator figure the project claims, in one command that fits a short loan of one GPU.

    python -m benchmarks.device_check [--quick] [--out DIR] [--budget SECONDS]

Three sections, written to one JSON file (device_check.json, or device_check_quick.json):

  factored   rank-1 factored ES-Single (`ue.low_rank(1, factored=True)`, staggered, K = 10, T = 100) against the
             bare unroll of the same 2N members (benchmarks/throughput.py's recurrent layer h ← tanh(hW + x_t U),
             θ shared, no keys), at widths 1024–4096 and N up to 2¹⁶, in bfloat16; per cell the median of paired
             rounds of (estimate, bare), the ratio's median over rounds, the bare unroll's TFLOP/s, compile seconds;
             both compiled with their state donated and threaded from call to call, as a training loop runs them;
  int8       the integer character LM's forward pass (unrolled_es_tasks.int_lm: int8 weights and activations,
             int32 accumulation) against its float32 twin (unrolled_es_tasks.char_lm), tokens per second, paired;
  million    10⁶ particles of factored rank-1 ES-Single on the recurrent layer and on the LSTM task rnn_char:
             seconds per estimate, ratio to the bare unroll, every particle valid, the compiled estimate's peak
             bytes per particle (XLA's buffer assignment; every factored cell reports it too).

Made to survive a short, unattended run: cells run most important first; a cell that fails (out of memory, a
compiler error) is recorded with its error and the rest go on; the JSON is rewritten after every cell, so a run
killed by a time limit keeps what it finished; cells that would start after `--budget` seconds are recorded as
skipped. `--quick` runs the same code at CPU sizes in well under a minute (tests/test_device_check.py).
"""
import gc
import os
import subprocess
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import unrolled_es as ue
from benchmarks.common import (median_ratio, paired_rounds, preset_arguments, threaded_bare, threaded_estimate,
                               write_json_atomic)
from benchmarks.throughput import SIGMA, bare_unroll, rnn_system

K, INPUTS = 10, 64
PRESETS = {
    # One H100 / H200: sized for about 6 minutes with compilation (not yet run on one); cells past the budget are
    # recorded as skipped.
    "default": dict(dtype="bfloat16", rounds=7, budget_s=420, vocab=63, horizon=64, batch=4096,
                    # Most wanted first: the ceiling table's cell, then N = 2¹⁶ at both ends of the widths.
                    factored=((1024, 1024, 16), (1024, 65536, 1), (4096, 65536, 1), (4096, 1024, 4),
                              (2048, 512, 32), (2048, 16384, 2)),
                    int8_widths=(256, 1024),
                    million=(dict(model="rnn", width=256, rows=1, particles=1_000_000),
                             dict(model="rnn_char", hidden=5, particles=1_000_000))),
    # The same code path at CPU sizes, for CI.
    "quick": dict(dtype="float32", rounds=3, budget_s=50, vocab=63, horizon=16, batch=32,
                  factored=((32, 64, 2), (64, 256, 1)), int8_widths=(32,),
                  million=(dict(model="rnn_char", hidden=2, particles=2000),)),
}


def bare_flops(width, rows, members):
  """Multiply-adds ×2 of the bare unroll's matmuls over one window: hW, x_t U and the readout h v per member."""
  return 2.0 * K * members * rows * (width * width + INPUTS * width + width)


def compiled(fn, *args, donate=()):
  """(the jitted function, its compile seconds): lowered and compiled ahead of the timed calls; `donate`: the
  argument numbers whose buffers it may reuse (a threaded state, as a training loop runs an estimate)."""
  start = time.perf_counter()
  exe = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
  return exe, time.perf_counter() - start


def factored_estimate(system, theta, n, seed=1):
  """(estimate callable threading its own state, init+compile seconds, estimate compile seconds, the compiled
  estimate's peak bytes from XLA's buffer assignment)."""
  est = ue.es_single(system, num_particles=n, sigma=SIGMA, truncation_length=K, noise=ue.low_rank(1, factored=True),
                     stagger=True)
  key = jax.random.PRNGKey(seed)
  start = time.perf_counter()
  state = jax.block_until_ready(jax.jit(est.init)(key, theta))
  init_s = time.perf_counter() - start
  estimate, compile_s = compiled(est.estimate, key, theta, state, donate=(2,))
  call, _ = threaded_estimate(estimate, key, theta, state)
  return call, init_s, compile_s, compiled_peak_bytes(estimate)


def compiled_peak_bytes(exe):
  """Peak bytes of one compiled program (arguments, outputs, temporaries), or None where XLA does not say."""
  try:
    stats = exe.memory_analysis()
    return int(getattr(stats, "peak_memory_in_bytes", 0) or (stats.argument_size_in_bytes
               + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes))
  except Exception:   # a backend without memory analysis: the figure is missing, the run goes on
    return None


def checked(call, n):
  """What one more estimate says: every particle valid and the gradient finite."""
  grad, info = call()
  finite = all(bool(jnp.all(jnp.isfinite(g.astype(jnp.float32)))) for g in jax.tree_util.tree_leaves(grad))
  return {"num_valid": int(info["num_valid"]), "all_valid": int(info["num_valid"]) == n, "gradient_finite": finite}


def versus_bare(system, theta, n, rounds):
  """Paired rounds of one estimate and the bare unroll of the same 2N members; their medians and ratio."""
  call, init_s, compile_s, peak = factored_estimate(system, theta, n)
  bare, states = bare_unroll(system, 2 * n, K, donate=True)
  bare_call = threaded_bare(bare, theta, states, jax.random.PRNGKey(0))
  start = time.perf_counter()
  jax.block_until_ready(bare_call())
  bare_compile_s = time.perf_counter() - start
  times = paired_rounds({"estimate": call, "bare": bare_call}, rounds)
  out = {"estimate_ms": 1e3 * float(np.median(times["estimate"])), "bare_ms": 1e3 * float(np.median(times["bare"])),
         "ratio_to_bare": median_ratio(times, "estimate", "bare"), "init_s": init_s,
         "estimate_compile_s": compile_s, "bare_compile_and_first_call_s": bare_compile_s,
         "estimate_peak_bytes_per_particle": None if peak is None else peak / n}
  return dict(out, **checked(call, n), particle_steps_per_s=n * K / (out["estimate_ms"] / 1e3))


def factored_cell(spec, width, n, rows):
  system, theta = rnn_system(width, rows, INPUTS, K, spec["dtype"])
  row = dict(width=width, particles=n, rows=rows, **versus_bare(system, theta, n, spec["rounds"]))
  row["bare_tflops"] = bare_flops(width, rows, 2 * n) / (row["bare_ms"] / 1e3) / 1e12
  return row


def int8_cell(spec, width):
  """Tokens per second of the unperturbed forward pass over `batch` sequences, int8 against float32, paired."""
  from unrolled_es_tasks import char_lm, int_lm
  tokens = jax.random.randint(jax.random.PRNGKey(0), (spec["batch"], spec["horizon"]), 0, spec["vocab"])
  int_theta = int_lm.init_int_params(0, spec["vocab"], width, 1)
  float_theta = char_lm.init_params(0, spec["vocab"], width, 1)
  forward_int, int_compile = compiled(jax.vmap(int_lm.int_sequence_logits, (None, 0)), int_theta, tokens)
  forward_float, float_compile = compiled(jax.vmap(char_lm.sequence_logits, (None, 0)), float_theta, tokens)
  times = paired_rounds({"int8": lambda: forward_int(int_theta, tokens),
                         "float32": lambda: forward_float(float_theta, tokens)}, spec["rounds"])
  count = spec["batch"] * spec["horizon"]
  return {"width": width, "batch": spec["batch"], "horizon": spec["horizon"],
          "int8_tokens_per_s": count / float(np.median(times["int8"])),
          "float32_tokens_per_s": count / float(np.median(times["float32"])),
          "int8_speedup": median_ratio(times, "float32", "int8"), "int8_compile_s": int_compile,
          "float32_compile_s": float_compile}


def million_cell(spec, b):
  """One 10⁶-particle (at the default preset) factored ES-Single estimate against its bare unroll."""
  if b["model"] == "rnn":
    system, theta = rnn_system(b["width"], b["rows"], INPUTS, K, spec["dtype"])
  else:
    import unrolled_es_tasks as tasks
    task = tasks.get("rnn_char", horizon=10 * K, hidden=b["hidden"])
    system, theta = task.system, jax.tree_util.tree_map(lambda x: x.astype(spec["dtype"]), task.theta0)
  row = dict(b, **versus_bare(system, theta, b["particles"], max(3, spec["rounds"] // 2)))
  return dict(row, **peak_memory(b["particles"]))


def peak_memory(n):
  """The process's peak device bytes so far (earlier cells included; GPUs only, None on a CPU), per particle too.
  The estimate's own peak is `estimate_peak_bytes_per_particle`."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return {"device_peak_bytes_so_far": peak,
          "device_peak_bytes_so_far_per_particle": None if peak is None else peak / n}


def device_description():
  """The device in words: jax's view, and nvidia-smi's line where there is one."""
  dev = jax.devices()[0]
  out = {"backend": jax.default_backend(), "device_kind": dev.device_kind, "devices": len(jax.devices()),
         "jax": jax.__version__}
  try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20)
    out["nvidia_smi"] = smi.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    out["nvidia_smi"] = None
  return out


def jobs(spec):
  """(section, label, thunk) in the order they run: one cell of each section first, then the other factored cells
  in the preset's order."""
  factored = [("factored", f"width {w}, N {n}, rows {r}", lambda w=w, n=n, r=r: factored_cell(spec, w, n, r))
              for w, n, r in spec["factored"]]
  int8 = [("int8", f"width {w}", lambda w=w: int8_cell(spec, w)) for w in spec["int8_widths"]]
  million = [("million", f"{b['model']}, N {b['particles']}", lambda b=b: million_cell(spec, b))
             for b in spec["million"]]
  return factored[:1] + int8 + million + factored[1:]


def run_job(thunk):
  """A cell's row, or its error: the run goes on after a failing cell (out of memory, a compile error)."""
  start = time.perf_counter()
  try:
    row = thunk()
  except Exception as e:   # recorded, not fatal: one cell must not lose the others
    row = {"error": f"{type(e).__name__}: {str(e)[:500]}", "traceback": traceback.format_exc()[-2000:]}
  gc.collect()
  jax.clear_caches()   # release the cell's executables (and, after an OOM, whatever they held) before the next
  row["seconds"] = round(time.perf_counter() - start, 2)
  return row


def run(spec, path, budget_s, log=print):
  start = time.perf_counter()
  result = {"preset": spec["name"], "device": device_description(), "settings": {
      "dtype": spec["dtype"], "truncation_length": K, "horizon": 10 * K, "sigma": SIGMA, "inputs": INPUTS,
      "rounds": spec["rounds"], "budget_s": budget_s}, "factored": [], "int8": [], "million": [], "complete": False}
  write_json_atomic(result, path)
  for section, label, thunk in jobs(spec):
    elapsed = time.perf_counter() - start
    row = ({"skipped": f"time budget: {elapsed:.0f} s of {budget_s} s spent"} if elapsed > budget_s else
           run_job(thunk))
    row.setdefault("label", label)
    result[section].append(row)
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(result, path)
    log(f"{section} {label}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in row.items() if k != "traceback"))
  result["complete"] = True
  write_json_atomic(result, path)
  log(f"wrote {path} in {result['seconds']} s")
  return result


def main(argv=None):
  args = preset_arguments(__doc__, PRESETS, argv, extra=lambda p: p.add_argument(
      "--budget", type=float, default=None, help="seconds after which remaining cells are skipped"))
  spec = dict(PRESETS[args.preset], name=args.preset)
  if args.preset == "default" and jax.default_backend() == "cpu":
    print("warning: the default preset is sized for one H100/H200; on a CPU it takes hours (use --quick)")
  path = os.path.join(args.out, "device_check" + ("" if args.preset == "default" else f"_{args.preset}") + ".json")
  return run(spec, path, spec["budget_s"] if args.budget is None else args.budget)


if __name__ == "__main__":
  main()
