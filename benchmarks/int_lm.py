"""Pre-training an integer character LM by integer low-rank ES, beside the same model in float32 trained by float
ES and by backprop, and a unigram baseline; and the forward pass's tokens per second, integer against float.

    python -m benchmarks.int_lm [--quick] [--out DIR] [--steps S] [--particles N]
    python -m benchmarks.int_lm --gpu      # the device preset (bigger model and population); not run on CPU

Methods, all on unrolled_es_tasks.int_lm (an embedding, one minGRU layer with a ReLU MLP, 64 wide, 33k parameters; episodes
of T = 64 characters from the first 90% of the corpus; evaluation on 64 fixed held-out segments of the last 10%):

  int_es     θ int8, unrolled_es.int_es (rank 1, sigma_shift 4, α from 1 to 1/16 over the first quarter of the
             run and on down harmonically, fitness "difference"), applied by unrolled_es.saturating_steps(1): N
             antithetic pairs × one episode per step. (At 2000 steps, α reaching 1/16 at step 300 gave 3.90
             bits per character and at step 1000 3.94, one run each; the quarter is between them.)
  float_es   θ float32, ue.es_single with factored rank-1 noise, z-scored fitness, σ = 0.02, K = T (so every step
             sees as many characters as int_es), Adam 3e-3.
  backprop   θ float32, BPTT through 64-character segments, batch 32, Adam 3e-3 (cosine decay).
  unigram    the add-one unigram model of the training split.

Bits per character are exact (the integer model's p ∝ 2^(logits/16), evaluated in float32). The throughput
part times one jitted forward pass over B sequences of T tokens, unperturbed, and the population forward pass
of one ES step (2N members, each perturbed: integer members in int32 accumulators, float members factored).
Writes int_lm.json and int_lm.png (int_lm_quick.* with --quick) to --out (default benchmarks/results).
"""
import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import unrolled_es as ue
from benchmarks.common import median_time
from unrolled_es_tasks import char_lm, int_lm
from unrolled_es.training.loop import make_outer_step

FULL = dict(steps=2000, particles=256, eval_every=100, hidden=64, horizon=64, backprop_batch=32, decay_steps=500)
QUICK = dict(steps=300, particles=64, eval_every=50, hidden=64, horizon=64, backprop_batch=32, decay_steps=100)
GPU = dict(steps=5000, particles=4096, eval_every=250, hidden=256, horizon=128, backprop_batch=256, decay_steps=1000)
GPU_COMMAND = "python -m benchmarks.int_lm --gpu"
THROUGHPUT_BATCH = 256


def _run(outer, theta, opt_state, est_state, evaluate, steps, eval_every, tokens_per_step):
  """Outer steps with evaluations; returns curve rows (step, tokens, seconds, bits) and the final θ."""
  rows, start, key = [], time.perf_counter(), jax.random.PRNGKey(1)
  rows.append({"step": 0, "tokens": 0, "seconds": 0.0, "bits": float(evaluate(theta, key)["bits_per_char"])})
  for i in range(steps):
    theta, opt_state, est_state, info = outer(theta, opt_state, est_state, key, jnp.int32(i))
    if (i + 1) % eval_every == 0 or i + 1 == steps:
      bits = float(evaluate(theta, key)["bits_per_char"])
      rows.append({"step": i + 1, "tokens": (i + 1) * tokens_per_step, "seconds": time.perf_counter() - start,
                   "bits": bits})
      print(f"  step {i + 1}: {bits:.3f} bits/char ({rows[-1]['seconds']:.0f} s)", flush=True)
  return rows, theta


def _run_es(task, estimator, opt, cfg):
  """`_run` of an ES estimator and its optimizer from the task's θ0; every step reads 2N episodes of T tokens."""
  rows, _ = _run(make_outer_step(estimator, opt), task.theta0, opt.init(task.theta0),
                 estimator.init(jax.random.PRNGKey(0), task.theta0), jax.jit(task.evaluate), cfg["steps"],
                 cfg["eval_every"], 2 * cfg["particles"] * cfg["horizon"])
  return rows


def run_int_es(cfg):
  task = int_lm.int_lm(horizon=cfg["horizon"], hidden=cfg["hidden"])
  es = ue.make("int_es", task.system, num_particles=cfg["particles"], fitness="difference",
               decay_steps=cfg["decay_steps"])   # the GradientEstimator form, applied by saturating_steps(1)
  return _run_es(task, es, ue.saturating_steps(1), cfg)


def run_float_es(cfg):
  task = int_lm.int_lm(horizon=cfg["horizon"], hidden=cfg["hidden"], model="float")
  est = ue.es_single(task.system, num_particles=cfg["particles"], sigma=0.02, truncation_length=cfg["horizon"],
                     noise=ue.low_rank(1, factored=True), fitness=ue.fitness.z_scores())
  return _run_es(task, est, optax.adam(3e-3), cfg)


def run_backprop(cfg):
  """Adam on BPTT gradients of random training segments, evaluated like the others."""
  task = int_lm.int_lm(horizon=cfg["horizon"], hidden=cfg["hidden"], model="float")
  train, _, _ = int_lm.splits(cfg["horizon"], 1)
  data, batch, length = jnp.asarray(train), cfg["backprop_batch"], cfg["horizon"]
  opt = optax.adam(optax.cosine_decay_schedule(3e-3, cfg["steps"]))

  def outer(theta, opt_state, est_state, key, step):
    starts = jax.random.randint(jax.random.fold_in(key, step), (batch,), 0, len(train) - length - 1)
    segments = jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (length + 1,)))(starts).astype(jnp.int32)
    grads = jax.grad(char_lm.bits_per_char)(theta, segments)
    updates, opt_state = opt.update(grads, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state, est_state, {}
  rows, _ = _run(jax.jit(outer), task.theta0, opt.init(task.theta0), (), jax.jit(task.evaluate), cfg["steps"],
                 cfg["eval_every"], batch * length)
  return rows


def _forward_rates(hidden, horizon, rounds=5):
  """Median tokens per second of the plain forward pass, integer and float, timed in alternation (the machine is
  shared: interleaving keeps the ratio fair), and the median of the per-round ratios."""
  tokens = jax.random.randint(jax.random.PRNGKey(0), (THROUGHPUT_BATCH, horizon), 0, 63)
  int_theta = int_lm.init_int_params(0, 63, hidden, 1)
  float_theta = char_lm.init_params(0, 63, hidden, 1)
  forward_int = jax.jit(jax.vmap(int_lm.int_sequence_logits, (None, 0)))
  forward_float = jax.jit(jax.vmap(char_lm.sequence_logits, (None, 0)))
  pairs = [(median_time(forward_int, int_theta, tokens, repeats=3),
            median_time(forward_float, float_theta, tokens, repeats=3))
           for _ in range(rounds)]
  count = THROUGHPUT_BATCH * horizon
  return {"int8": count / float(np.median([a for a, _ in pairs])),
          "float32": count / float(np.median([b for _, b in pairs])),
          "int8_over_float32": float(np.median([b / a for a, b in pairs]))}


def throughput(cfg, widths=(64, 256)):
  """Tokens per second of the plain forward pass (B sequences of T tokens) at several widths, and of one ES
  estimate at the run's width (2N members of one episode each, draws and update included), integer and float."""
  horizon, hidden, n, key = cfg["horizon"], cfg["hidden"], cfg["particles"], jax.random.PRNGKey(0)
  out = {"forward_batch": THROUGHPUT_BATCH, "horizon": horizon, "es_particles": n,
         "forward": {str(w): _forward_rates(w, horizon) for w in widths}}
  int_task = int_lm.int_lm(horizon=horizon, hidden=hidden)
  float_task = int_lm.int_lm(horizon=horizon, hidden=hidden, model="float")
  int_es = ue.make("int_es", int_task.system, num_particles=n, fitness="difference")
  float_es = ue.es_single(float_task.system, num_particles=n, sigma=0.02, truncation_length=horizon,
                          noise=ue.low_rank(1, factored=True), fitness=ue.fitness.z_scores())
  for name, est, theta in (("es_step_int8", int_es, int_task.theta0),
                           ("es_step_float32", float_es, float_task.theta0)):
    out[name] = 2 * n * horizon / median_time(jax.jit(est.estimate), key, theta, est.init(key, theta))
  return out


def plot(result, path):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(11, 4.2), dpi=120)
  FigureCanvasAgg(fig)
  labels = {"int_es": "integer ES (int8)", "float_es": "float ES (ES-Single, rank-1)", "backprop": "backprop (Adam)"}
  for col, x in enumerate(("step", "tokens")):
    ax = fig.add_subplot(1, 2, col + 1)
    for name, label in labels.items():
      rows = result["curves"][name]
      ax.plot([r[x] for r in rows], [r["bits"] for r in rows], "o-", ms=2.5, label=label)
    ax.axhline(result["unigram_bits"], color="k", ls="--", lw=1, label="unigram")
    ax.set_xlabel("training steps" if x == "step" else "characters read in training (all members)")
    ax.set_xscale("linear" if x == "step" else "log")
    ax.set_ylabel("held-out bits per character")
    ax.set_ylim(top=min(8.0, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
  tp = result["throughput"]
  fig.axes[0].legend(fontsize=8)
  forward = "; ".join(f"width {w}: int8 {r['int8']:.3g}, float32 {r['float32']:.3g}" for w, r in tp["forward"].items())
  fig.suptitle(f"int_lm on {result['device']}. Forward tokens/s, {forward}. ES step tokens/s: int8 "
               f"{tp['es_step_int8']:.3g}, float32 {tp['es_step_float32']:.3g}", fontsize=8)
  fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
  fig.savefig(path)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="300 steps, 64 pairs (about 2 minutes)")
  p.add_argument("--gpu", action="store_true", help="the device preset: 256 wide, 4096 pairs, T = 128")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  p.add_argument("--steps", type=int)
  p.add_argument("--particles", type=int)
  args = p.parse_args(argv)
  cfg = dict(GPU if args.gpu else QUICK if args.quick else FULL)
  cfg.update({k: v for k, v in (("steps", args.steps), ("particles", args.particles)) if v is not None})
  name = "int_lm_gpu" if args.gpu else "int_lm_quick" if args.quick else "int_lm"
  result = {"config": cfg, "device": str(jax.devices()[0]), "jax": jax.__version__,
            "unigram_bits": int_lm.splits(cfg["horizon"], 64)[2], "curves": {}}
  for method, run in (("int_es", run_int_es), ("float_es", run_float_es), ("backprop", run_backprop)):
    print(f"{method}:", flush=True)
    result["curves"][method] = run(cfg)
  result["throughput"] = throughput(cfg)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, name + ".json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(args.out, name + ".png"))
  final = {m: rows[-1]["bits"] for m, rows in result["curves"].items()}
  print(json.dumps({"unigram": result["unigram_bits"], "final_bits": final, "throughput": result["throughput"]},
                   indent=1))


if __name__ == "__main__":
  main()
