"""Meta-train the pretrained learned optimizer that ships with the package (`learned_optimizer.pretrained`).

    python -m benchmarks.lopt_pretrain --out DIR [--steps N] [--max-core-hours H] [--quick]
                                       [--sigma S] [--train all|output] [--outer-lr LR] [--eval-every E]
                                       [--lengths LOW,HIGH]
    python -m benchmarks.lopt_pretrain --out DIR --export      # θ of DIR's newest checkpoint -> tasks/data

ES-Single (Vicol, Kolter & Swersky 2023; = NRES, Li et al. 2023) over the whole `lopt_family.FAMILY` at once
(`ue.multi_task`, equal weights), every episode's length drawn log-uniformly in [100, 2000) (`ue.horizons`,
learned_optimization's LogUniformLength, as Celo's meta-training), each particle starting at its own point
of its episode (stagger), windows of K = 10 inner steps, σ = 0.01, outer Adam 1e-3 with the estimate clipped to
global norm 1 (`ue.clip_gradient`). The optimizer is `LoptSpec(time_features="any")` (half of the episodes
reveal their length), one hidden layer of 8, with the correction along Adam's direction (`correction="aligned"`:
every element moves along Adam's step, by a learned factor, so no θ drifts where the gradient vanishes; the
additive correction of the θ shipped at commit 1376f43 drifted uphill at 10× the horizon). `--train output`
perturbs (and so meta-trains) only the MLP's output layer, 18 of θ's 234 coordinates, over the hidden layer's
fixed random features: ES's variance grows with the number of perturbed coordinates, and at θ0 its per-window
estimate is almost all noise over all 234 (`python -m benchmarks.lopt_meta_noise`).

Faults and sittings: `ue.train` checkpoints every `--checkpoint-every` outer steps (and on Ctrl-C / SIGTERM's
KeyboardInterrupt); every key derives from the run key and the step, so a killed run restarted with the same
command resumes from its newest valid checkpoint and retraces the uninterrupted run bit for bit.

The settings (--steps included) are part of the run's identity: a sitting resumes only the run its own
command started. Budget: at most `--max-core-hours` (default 6) of this process's CPU time summed over sittings (kept in
DIR/cpu_seconds.json at each checkpoint); the run stops early, with a checkpoint, when it is spent. The cost per
outer step is 9 problems × 2N members × K inner steps (N = 8 pairs: 1440 inner steps) plus the staggering
burn-in once per sitting.
"""
import argparse
import json
import os
import resource
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import unrolled_es as ue
from unrolled_es_tasks import lopt_family, lopt_network, lopt_pretrained

SPEC = lopt_network.LoptSpec(time_features="any", correction="aligned")
SETTINGS = dict(particles=8, sigma=0.01, truncation=10, outer_lr=1e-3, max_norm=1.0, low=100, high=2000,
                steps=20000, checkpoint_every=50, eval_every=500, eval_steps=300, eval_keys=2, seed=0, train="all")
TRAINED = ("all", "output")   # which of θ's layers ES perturbs: all, or the output layer only
QUICK = dict(SETTINGS, particles=2, low=20, high=40, steps=3, checkpoint_every=1, eval_every=2, eval_steps=20,
             eval_keys=1)


def estimator(problems, s):
  horizons = ue.horizons.log_uniform(s["low"], s["high"])
  mask = None
  if s["train"] == "output":
    mask = lopt_network.output_layer_mask(SPEC, lopt_network.init_theta(SPEC, s["seed"]))
  members = [ue.es_single(lopt_family.meta_system(p, SPEC, horizons), num_particles=s["particles"],
                          sigma=s["sigma"], truncation_length=s["truncation"], horizons=horizons, mask=mask)
             for p in problems]
  return ue.clip_gradient(ue.multi_task(members), s["max_norm"])


def make_evaluate(problems, s):
  """θ -> per-problem mean (clipped) validation loss over fixed episodes of eval_steps steps, revealed length."""
  keys = jax.random.split(jax.random.PRNGKey(10_000), s["eval_keys"])

  def evaluate(theta, key):
    opt = lopt_family._learned(SPEC, theta, s["eval_steps"])
    out = {}
    for i, p in enumerate(problems):
      runs = jax.vmap(lambda k: lopt_family.run(p, opt, k, s["eval_steps"]))(keys)
      out[f"valid_{i}"] = jnp.mean(lopt_family.clip_meta_loss(runs["valid"]))
    out["valid_mean"] = jnp.mean(jnp.stack(list(out.values())))
    return out
  return evaluate


class CpuBudget:
  """Stops training once this process's CPU seconds plus those of earlier sittings exceed the budget."""

  def __init__(self, out, hours, checkpoint_every):
    self.path, self.limit, self.every = os.path.join(out, "cpu_seconds.json"), hours * 3600.0, checkpoint_every
    self.before = json.load(open(self.path))["cpu_seconds"] if os.path.exists(self.path) else 0.0

  def used(self):
    r = resource.getrusage(resource.RUSAGE_SELF)
    return self.before + r.ru_utime + r.ru_stime

  def __call__(self, step, theta, record):
    if step % self.every == 0:
      with open(self.path + ".tmp", "w") as f:
        json.dump({"cpu_seconds": self.used(), "step": int(step)}, f)
      os.replace(self.path + ".tmp", self.path)
    return self.used() > self.limit


def _config(s, problems):
  """The resume fingerprint's config: a run of the whole family keeps the form its first sitting had."""
  config = {"settings": s, "spec": SPEC._asdict()}
  if len(problems) < len(lopt_family.FAMILY):
    config["problems"] = [p.name for p in problems]
  return config


def train(out, s, hours, progress=True, problems=None):
  """Meta-trains (or resumes) into `out`; `problems`: indices into FAMILY (default: all)."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "command.json"), "w") as f:
    json.dump({"argv": sys.argv, "settings": s, "spec": SPEC._asdict(), "problems": problems}, f, indent=1)
  problems = [lopt_family.FAMILY[i] for i in (range(len(lopt_family.FAMILY)) if problems is None else problems)]
  theta0 = lopt_network.init_theta(SPEC, s["seed"])
  budget = CpuBudget(out, hours, s["checkpoint_every"])
  result = ue.train(estimator(problems, s), optax.adam(s["outer_lr"]), theta0, jax.random.PRNGKey(s["seed"]),
                    steps=s["steps"], evaluate=make_evaluate(problems, s), eval_every=s["eval_every"],
                    checkpoint_dir=os.path.join(out, "checkpoints"), checkpoint_every=s["checkpoint_every"],
                    resume=True, config=_config(s, problems),
                    metrics_path=os.path.join(out, "metrics.jsonl"), callback=budget, progress=progress,
                    progress_desc="lopt pretrain")
  print(f"stopped at outer step {result.step}; cpu seconds {budget.used():.0f}; skipped {result.num_skipped}",
        flush=True)
  return result


def _lengths(text):
  try:
    low, high = (int(x) for x in text.split(","))
  except ValueError:
    low = high = None
  if low is None or not 1 <= low < high:
    raise ValueError(f"--lengths must be LOW,HIGH with integers 1 <= LOW < HIGH; got {text!r}")
  return low, high


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--steps", type=int, default=None)
  ap.add_argument("--max-core-hours", type=float, default=6.0)
  ap.add_argument("--quick", action="store_true", help="a few outer steps on short episodes (a smoke test)")
  ap.add_argument("--export", action="store_true", help="write the newest checkpoint's θ to tasks/data")
  ap.add_argument("--export-to", default=None, help="folder for --export (default: the package's tasks/data)")
  ap.add_argument("--force", action="store_true", help="--export even if the run's evaluation got worse")
  ap.add_argument("--problems", default=None, help="comma-separated indices into FAMILY (default: all; tests)")
  ap.add_argument("--no-progress", action="store_true")
  ap.add_argument("--sigma", type=float, default=None, help=f"ES's σ (default {SETTINGS['sigma']})")
  ap.add_argument("--train", choices=TRAINED, default=None,
                  help="which of θ's layers are meta-trained: all (default) or the output layer only")
  ap.add_argument("--outer-lr", type=float, default=None, help=f"outer Adam's step (default {SETTINGS['outer_lr']})")
  ap.add_argument("--eval-every", type=int, default=None, help=f"default {SETTINGS['eval_every']}")
  ap.add_argument("--lengths", default=None, help="LOW,HIGH: inner episode lengths drawn log-uniformly in "
                  f"[LOW, HIGH) (default {SETTINGS['low']},{SETTINGS['high']})")
  a = ap.parse_args(argv)
  problems = None
  if a.problems is not None:
    problems = [int(i) for i in a.problems.split(",")]
    if not problems or any(not 0 <= i < len(lopt_family.FAMILY) for i in problems):
      raise ValueError(f"--problems must be indices in 0..{len(lopt_family.FAMILY) - 1}; got {a.problems!r}")
  s = dict(QUICK if a.quick else SETTINGS)
  for key, value in (("steps", a.steps), ("sigma", a.sigma), ("train", a.train), ("outer_lr", a.outer_lr),
                     ("eval_every", a.eval_every)):
    if value is not None:
      s[key] = value
  if a.lengths is not None:
    s["low"], s["high"] = _lengths(a.lengths)
  if not (np.isfinite(s["sigma"]) and s["sigma"] > 0):
    raise ValueError(f"--sigma must be a finite number > 0; got {s['sigma']}")
  if a.export:
    return lopt_pretrained.export(a.out, a.export_to, a.force)
  train(a.out, s, a.max_core_hours, progress=not a.no_progress, problems=problems)
  return 0


if __name__ == "__main__":
  sys.exit(main())
