"""How much of the pretraining's meta-gradient is signal: ES-Single's own noise diagnostics at θ0, per family problem.

    python -m benchmarks.lopt_meta_noise [--particles N] [--sigma S] [--train all|output] [--problems 0,4]
                                         [--windows W] [--out DIR]

The estimator is benchmarks.lopt_pretrain's for one problem (σ = 0.01, K = 10, episode lengths log-uniform in
[100, 2000), staggered particles) with `diagnostics=True`, at the untrained θ0 of the shipped optimizer's spec;
`--train output` perturbs only the MLP's output layer (d = 18), as `lopt_pretrain --train output` does.
For `windows` consecutive estimates it records `variance_ratio`: the estimate's variance, from its own N particles,
summed over θ's d coordinates, over its squared norm.

How to read it: with ĝ = g + noise, the ratio is about trVar/(‖g‖² + trVar). If the loss differences were only
the directional derivative (σεᵀg per pair), trVar ≈ ‖g‖²(d + 1)/N, so the ratio would be about
((d + 1)/N)/(1 + (d + 1)/N): 0.97 at N = 8 and 0.79 at N = 64 for d = 234. A ratio near 1 at N = 64 means the
particles' loss differences vary far more than the direction of the draw explains: the mean meta-gradient is small
against the spread of the per-particle gradients (different problem draws, episode positions and lengths).
Writes lopt_meta_noise_N<particles>.json to --out.
"""
import argparse
import os
import time

import jax
import numpy as np

import unrolled_es as ue
from benchmarks.common import write_json_atomic
from benchmarks.lopt_pretrain import SETTINGS, SPEC, TRAINED
from unrolled_es_tasks import lopt_family, lopt_network


def ratios(problem, theta0, particles, windows, sigma=SETTINGS["sigma"], mask=None):
  """`variance_ratio` of `windows` consecutive estimates on one problem, from θ0."""
  horizons = ue.horizons.log_uniform(SETTINGS["low"], SETTINGS["high"])
  est = ue.es_single(lopt_family.meta_system(problem, SPEC, horizons), num_particles=particles,
                     sigma=sigma, truncation_length=SETTINGS["truncation"], horizons=horizons,
                     diagnostics=True, mask=mask)
  state, step, out = est.init(jax.random.PRNGKey(1), theta0), jax.jit(est.estimate), []
  for i in range(windows):
    _, state, info = step(jax.random.PRNGKey(100 + i), theta0, state)
    out.append(float(info["variance_ratio"]))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--particles", type=int, default=SETTINGS["particles"])
  p.add_argument("--problems", default=None, help="comma-separated indices into lopt_family.FAMILY (default: all)")
  p.add_argument("--windows", type=int, default=4)
  p.add_argument("--train", choices=TRAINED, default="all", help="the coordinates perturbed (default: all)")
  p.add_argument("--sigma", type=float, default=SETTINGS["sigma"], help="the perturbation's scale (default: the "
                 "pretraining's)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)
  family = lopt_family.FAMILY
  chosen = range(len(family)) if args.problems is None else [int(i) for i in args.problems.split(",")]
  theta0 = lopt_network.init_theta(SPEC, SETTINGS["seed"])
  mask = lopt_network.output_layer_mask(SPEC, theta0) if args.train == "output" else None
  d = sum(int(np.sum(m)) for m in jax.tree_util.tree_leaves(mask)) if mask is not None else \
      sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(theta0))
  rows = {}
  for i in chosen:
    start = time.perf_counter()
    rows[family[i].name] = ratios(family[i], theta0, args.particles, args.windows, args.sigma, mask)
    print(f"{family[i].name:36s} N={args.particles}: {' '.join(f'{r:.3f}' for r in rows[family[i].name])} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
  every = [r for v in rows.values() for r in v]
  directional = ((d + 1) / args.particles) / (1 + (d + 1) / args.particles)
  print(f"mean {np.mean(every):.3f} over {len(every)} estimates; directional-only expectation {directional:.3f} "
        f"(d = {d})")
  suffix = ("" if args.sigma == SETTINGS["sigma"] else f"_sigma{args.sigma:g}") + \
      ("" if args.train == "all" else f"_{args.train}")
  write_json_atomic({"particles": args.particles, "sigma": args.sigma, "train": args.train, "d": d,
                     "ratios": rows, "mean": float(np.mean(every)), "directional_only": directional,
                     "jax": jax.__version__},
                    os.path.join(args.out, f"lopt_meta_noise_N{args.particles}{suffix}.json"))


if __name__ == "__main__":
  main()
