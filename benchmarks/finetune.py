"""ES fine-tuning of a pretrained character model against a label-free reward, beside REINFORCE at equal samples.

    python -m benchmarks.finetune [--quick] [--out DIR]

The task (unrolled_es_tasks.finetune): the shipped backprop-pretrained model (33k parameters, 2.39 held-out bits per
character) reads a 16-character prompt and samples T = 32 characters; every 'e' it samples costs 1 (a lipogram),
so the loss is the fraction of e's (9.3% at the start). All parameters are fine-tuned. Every method draws the same
number of sampled characters per unit of budget: 2N episodes of T characters per step for full ES (N antithetic
pairs) and REINFORCE (2N samples), and 2N members × K = T/4 characters per step for ES-Single, which therefore
takes 4× the steps. Methods (ES: σ = 0.01, z-scored fitness, i.e. population-normalised rewards; noise regenerated
from each particle's key, one stream cut into per-tensor blocks; all with Adam):

  full_es_gaussian     whole episodes, full-rank Gaussian noise;
  full_es_low_rank     whole episodes, factored rank-1 noise (EGGROLL);
  es_single_low_rank   ES-Single with K = T/4, staggered particles, factored rank-1 noise;
  reinforce            REINFORCE with a leave-one-out baseline (tasks.finetune_reinforce), 2N samples.

Each method runs every learning rate of its grid (ES 1e-3, 3e-3; REINFORCE 1e-4, 3e-4, 1e-3: REINFORCE's steps are
larger per unit of lr). Evaluation (64 fixed held-out prompts, fixed sampling keys): the fraction of e's, the KL
per character to the pretrained model along the fine-tuned model's samples, held-out bits per character of real
text, and the parameter drift ‖θ − θ₀‖/‖θ₀‖. Writes finetune.json and finetune.png (finetune_quick.* with --quick)
to --out (default benchmarks/results).
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
from unrolled_es_tasks import finetune
from unrolled_es_tasks.finetune_reinforce import reinforce
from unrolled_es.training.loop import make_outer_step

FULL = dict(particles=32, horizon=32, full_steps=300, evals=15, es_lrs=(1e-3, 3e-3), reinforce_lrs=(1e-4, 3e-4, 1e-3))
QUICK = dict(particles=16, horizon=32, full_steps=100, evals=5, es_lrs=(3e-3,), reinforce_lrs=(3e-4,))
SIGMA = 0.01
METHODS = ("full_es_gaussian", "full_es_low_rank", "es_single_low_rank", "reinforce")
COLORS = {"full_es_gaussian": "C0", "full_es_low_rank": "C1", "es_single_low_rank": "C2", "reinforce": "C3"}


def make_estimator(method, task, cfg):
  """(estimator, steps per full-episode step): ES-Single's windows are a quarter episode."""
  n, horizon = cfg["particles"], cfg["horizon"]
  shaping = ue.fitness.z_scores()
  if method == "reinforce":
    return reinforce(2 * n, horizon=horizon), 1
  if method == "es_single_low_rank":
    return ue.es_single(task.system, num_particles=n, sigma=SIGMA, truncation_length=horizon // 4,
                        noise=ue.low_rank(1, factored=True), fitness=shaping), 4
  noise = ue.gaussian() if method == "full_es_gaussian" else ue.low_rank(1, factored=True)
  return ue.full_es(task.system, num_particles=n, sigma=SIGMA, noise=noise, fitness=shaping), 1


def run(method, lr, task, cfg):
  """Curve rows (characters sampled, seconds, evaluation) of one method at one learning rate."""
  est, per_step = make_estimator(method, task, cfg)
  steps = cfg["full_steps"] * per_step
  chars_per_step = 2 * cfg["particles"] * cfg["horizon"] // per_step
  opt = optax.adam(lr)
  outer, evaluate = make_outer_step(est, opt), jax.jit(task.evaluate)
  key = jax.random.PRNGKey(0)
  theta, opt_state, state = task.theta0, opt.init(task.theta0), est.init(key, task.theta0)
  every = max(1, steps // cfg["evals"])
  rows, start = [dict(characters=0, seconds=0.0, **_scalars(evaluate(theta, key)))], time.perf_counter()
  for i in range(steps):
    theta, opt_state, state, _ = outer(theta, opt_state, state, jax.random.PRNGKey(1), jnp.int32(i))
    if (i + 1) % every == 0 or i + 1 == steps:
      rows.append(dict(characters=(i + 1) * chars_per_step, seconds=time.perf_counter() - start,
                       **_scalars(evaluate(theta, key))))
  last = rows[-1]
  print(f"  {method} lr {lr:g}: e fraction {last['meta_loss']:.4f}, KL {last['kl_to_pretrained']:.3f}, held-out "
        f"bits {last['held_out_bits']:.3f} ({last['seconds']:.0f} s)", flush=True)
  return rows


def _scalars(d):
  return {k: float(v) for k, v in jax.device_get(d).items()}


def plot(result, path):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(14, 4.2), dpi=120)
  FigureCanvasAgg(fig)
  panels = [("characters", "meta_loss"), ("characters", "kl_to_pretrained"), ("kl_to_pretrained", "meta_loss")]
  names = {"characters": "characters sampled", "meta_loss": "fraction of 'e' in samples (lower is better)",
           "kl_to_pretrained": "KL to the pretrained model (nats / character)"}
  lrs = sorted({run["lr"] for run in result["runs"]})
  styles = dict(zip(lrs, ("-", "--", ":", "-.")))
  for i, (x, y) in enumerate(panels):
    ax = fig.add_subplot(1, 3, i + 1)
    for run in result["runs"]:
      rows = run["curve"]
      ax.plot([r[x] for r in rows], [r[y] for r in rows], styles[run["lr"]], color=COLORS[run["method"]], marker="o",
              ms=2, label=f"{run['method']} lr {run['lr']:g}")
    ax.set_xlabel(names[x])
    ax.set_ylabel(names[y])
    if y == "meta_loss":
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  fig.axes[0].legend(fontsize=6)
  fig.suptitle(f"finetune: ES against REINFORCE at equal samples ({result['config']['particles']} pairs or "
               f"{2 * result['config']['particles']} samples per step; T = {result['config']['horizon']})", fontsize=9)
  fig.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=0.9, wspace=0.28)
  fig.savefig(path)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="16 pairs, 100 steps, one learning rate each (~2 minutes)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  task = finetune.finetune(horizon=cfg["horizon"])
  result = {"config": dict(cfg, sigma=SIGMA), "device": str(jax.devices()[0]), "jax": jax.__version__,
            "pretrained": finetune.pretrained()[1], "runs": []}
  for method in METHODS:
    for lr in cfg["reinforce_lrs"] if method == "reinforce" else cfg["es_lrs"]:
      result["runs"].append({"method": method, "lr": lr, "curve": run(method, lr, task, cfg)})
  name = "finetune_quick" if args.quick else "finetune"
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, name + ".json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(args.out, name + ".png"))


if __name__ == "__main__":
  main()
