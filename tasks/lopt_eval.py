"""The learned optimizer against Adam with a tuned learning rate, on held-out inner problems.

For each problem (the meta-training distribution; held-out widths and depth; a dataset held out of
meta-training; 5× the meta-training horizon), every optimizer trains the same classifiers: `seeds` held-out
episode keys, each fixing the problem drawn from the family, the initial parameters and the minibatches.
Adam (β = 0.9, 0.999, ε = 1e-8) runs at every learning rate of a quarter-decade grid (ADAM_LRS), each with a
constant and with a cosine-decay schedule lr·½(1 + cos(πt/T)), and the best of each schedule is the one with
the lowest mean meta-objective over those same seeds: selection on the evaluation seeds favours Adam, so a
win of the learned optimizer is conservative.

Reported per optimizer: the meta-objective (mean over the run of the meta-split loss / log C, unclipped),
the final test loss / log C and the test accuracy, each as the mean over seeds with a 95% Student-t interval
mean ± t_{0.975, n−1}·s/√n; and for the learned optimizer, the paired difference to the better Adam schedule
(per seed, same classifiers), with its own 95% interval. Runs whose losses go non-finite count as diverged.
"""
import functools
import json
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unrolled_es_tasks import lopt_problems
from unrolled_es_tasks.lopt_optax import as_optax
from unrolled_es.core.system import check_int, episode_keys, step_key

ADAM_LRS = tuple(float(10 ** (k / 4)) for k in range(-16, -1))   # 1e-4 … 10^-0.5, quarter-decade steps
SCHEDULES = ("constant", "cosine")
EVAL_SEED = 10_000


class EvalProblem(NamedTuple):
  label: str
  family: lopt_problems.Family
  steps: int


def problems(config, trained_widths=()) -> list:
  """The report's problems for a LoptConfig: its own distribution, then one held-out change at a time (a width
  in `trained_widths` was meta-trained too, and is labelled so)."""
  fam, horizon = config.family, config.horizon
  out = [EvalProblem(f"meta-training distribution ({_width(fam.hidden)})", fam, horizon)]
  trained = {tuple(w) for w in trained_widths}
  for hidden in ((64, 64), (16,), (32, 32, 32)):
    if tuple(hidden) != tuple(fam.hidden):
      kind = "depth" if len(hidden) != len(fam.hidden) and len(set(hidden)) == 1 and hidden[0] in fam.hidden \
          else "width"
      status = "meta-trained" if tuple(hidden) in trained else "held-out"
      out.append(EvalProblem(f"{status} {kind} {_width(hidden)}", fam._replace(hidden=tuple(hidden)), horizon))
  out.append(EvalProblem("held-out dataset (breast cancer)",
                         fam._replace(datasets=("breast_cancer",), vary=False, data_path=None), horizon))
  out.append(EvalProblem(f"5x horizon ({5 * horizon} steps)", fam, 5 * horizon))
  return out


def _width(hidden):
  return "-".join(str(h) for h in hidden)


def _adam(lr, cosine, steps):
  """Adam whose step size is lr (constant) or lr·½(1 + cos(πt/steps)) (cosine), lr and cosine traced."""
  def schedule(count):
    decay = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count, steps) / steps))
    return -lr * jnp.where(cosine, decay, 1.0)
  return optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(schedule))


def run(family, optimizer, key, steps):
  """One inner training from `key` (the key schedule of unrolled_es.core.system.run_episode): per-step meta-split
  and train losses (/ log C, unclipped) and the final test loss (/ log C) and accuracy."""
  init_key, base = episode_keys(key)
  state = lopt_problems.episode_init(family, optimizer, init_key)
  state, (meta, train) = jax.lax.scan(
      lambda s, t: lopt_problems.episode_step(family, optimizer, s, step_key(base, t)), state, jnp.arange(steps))
  test_loss, test_acc = lopt_problems.inner(family).test_metrics(state.params, state.problem)
  return {"meta": meta, "train": train, "test_loss": test_loss, "test_accuracy": test_acc}


@functools.lru_cache(maxsize=32)
def adam_grid_runner(family, steps):
  """jitted (lrs (G,), cosine (G,) bool, keys (S, 2)) -> run's outputs with leading axes (G, S)."""
  one = lambda lr, cos, key: run(family, _adam(lr, cos, steps), key, steps)
  return jax.jit(jax.vmap(jax.vmap(one, (None, None, 0)), (0, 0, None)))


@functools.lru_cache(maxsize=32)
def learned_runner(family, steps, spec):
  """jitted (theta, keys (S, 2)) -> run's outputs with a leading axis S."""
  one = lambda theta, key: run(family, as_optax(theta, steps, spec), key, steps)
  return jax.jit(jax.vmap(one, (None, 0)))


def summarise(runs) -> dict:
  """Per-seed scores of a batch of runs: meta-objective and train loss (means over the run), final test loss
  and accuracy, diverged."""
  meta = np.asarray(runs["meta"], np.float64).mean(-1)
  finite = np.isfinite(meta) & np.isfinite(np.asarray(runs["test_loss"]))
  return {"meta": meta, "train": np.asarray(runs["train"], np.float64).mean(-1),
          "test_loss": np.asarray(runs["test_loss"], np.float64),
          "test_accuracy": np.asarray(runs["test_accuracy"], np.float64), "diverged": ~finite}


def mean_ci(x, level=0.95):
  """(mean, low, high): the Student-t interval mean ± t_{(1+level)/2, n−1}·s/√n of the samples x."""
  from scipy import stats
  x = np.asarray(x, np.float64)
  n = x.size
  mean = float(x.mean())
  if n < 2 or not np.all(np.isfinite(x)):
    return mean, float("nan"), float("nan")
  half = float(stats.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
  return mean, mean - half, mean + half


def tune_adam(family, steps, keys, lrs=ADAM_LRS):
  """Every (schedule, lr) of the grid on `keys`; returns {schedule: (best lr, per-seed scores, mean meta-split
  loss curve)} and the grid's
  mean meta-objectives {schedule: list over lrs} (non-finite runs score +inf)."""
  lrs = np.asarray(lrs, np.float32)
  g = len(lrs)
  all_lrs = jnp.asarray(np.concatenate([lrs, lrs]))
  cosine = jnp.asarray(np.repeat([False, True], g))
  runs = adam_grid_runner(family, steps)(all_lrs, cosine, keys)
  scores = summarise(runs)
  best, grid = {}, {}
  for i, schedule in enumerate(SCHEDULES):
    rows = slice(i * g, (i + 1) * g)
    mean = np.where(scores["diverged"][rows].any(1), np.inf, scores["meta"][rows].mean(1))
    j = int(np.argmin(mean))
    best[schedule] = (float(lrs[j]), {k: v[i * g + j] for k, v in scores.items()},
                      np.asarray(runs["meta"][i * g + j]).mean(0))
    grid[schedule] = mean.tolist()
  return best, grid


def evaluate_problem(problem: EvalProblem, spec, thetas: dict, seeds: int):
  """Rows and mean curves for one problem: each named θ (or (θ, its own spec)) and Adam's best constant and
  cosine schedules."""
  keys = jax.random.split(jax.random.PRNGKey(EVAL_SEED), seeds)
  best, grid = tune_adam(problem.family, problem.steps, keys)
  scores, curves = {}, {}
  for name, theta in thetas.items():
    theta, own_spec = theta if isinstance(theta, tuple) else (theta, spec)
    runs = learned_runner(problem.family, problem.steps, own_spec)(theta, keys)
    scores[name] = summarise(runs)
    curves[name] = np.asarray(runs["meta"]).mean(0)
  for schedule, (lr, s, curve) in best.items():
    scores[f"adam {schedule} (lr {lr:.3g})"] = s
    curves[f"adam {schedule} (lr {lr:.3g})"] = curve
  adam_names = [n for n in scores if n.startswith("adam")]
  best_adam = min(adam_names, key=lambda n: scores[n]["meta"].mean())
  rows = [_row(problem.label, name, s, scores[best_adam] if name in thetas else None) for name, s in scores.items()]
  edge = {s: bool(np.argmin(grid[s]) in (0, len(ADAM_LRS) - 1)) for s in SCHEDULES}
  return rows, curves, {"adam_grid": grid, "best_at_grid_edge": edge, "best_adam": best_adam}


def _row(label, name, s, adam):
  fmt = lambda m: f"{m[0]:.4f} [{m[1]:.4f}, {m[2]:.4f}]"
  row = {"problem": label, "optimizer": name, "meta-objective": fmt(mean_ci(s["meta"])),
         "train loss": fmt(mean_ci(s["train"])),
         "test loss": fmt(mean_ci(s["test_loss"])), "test accuracy": fmt(mean_ci(s["test_accuracy"])),
         "diverged": int(s["diverged"].sum())}
  if adam is not None:
    row["meta - best adam"] = fmt(mean_ci(s["meta"] - adam["meta"]))
    row["test loss - best adam"] = fmt(mean_ci(s["test_loss"] - adam["test_loss"]))
  return row


def report(config, theta0, theta, out_dir, seeds: int = 8, problem_list=None, trained_widths=()):
  """The meta-trained θ and the untrained θ0 against tuned Adam on `problems(config)`, on `seeds` held-out
  seeds. Writes lopt_vs_adam.json and lopt_vs_adam.png to out_dir; returns the table's rows, with the paired
  differences to the best tuned Adam (by meta-objective) of the meta-objective and of the final test loss."""
  seeds = check_int("seeds", seeds, 2)
  thetas = {"learned (meta-trained)": theta, "learned (untrained θ0)": theta0, **_pretrained_row()}
  rows, curves, extra = [], {}, {}
  for problem in problem_list or problems(config, trained_widths):
    r, c, e = evaluate_problem(problem, config.spec, thetas, seeds)
    rows += r
    curves[problem.label] = {k: v.tolist() for k, v in c.items()}
    extra[problem.label] = e
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "lopt_vs_adam.json"), "w") as f:
    json.dump({"rows": rows, "curves": curves, "adam": extra, "adam_lrs": ADAM_LRS, "held_out_seeds": seeds},
              f, indent=1)
  plot(curves, os.path.join(out_dir, "lopt_vs_adam.png"))
  return rows   # the paired test-loss difference is printed too: claims about test loss need its interval


def _pretrained_row():
  """The shipped pretrained optimizer ({} with a warning when its package data is missing or damaged)."""
  from unrolled_es_tasks import lopt_pretrained
  try:
    theta, spec, meta = lopt_pretrained.load()
  except ValueError as e:
    import warnings
    warnings.warn(f"the pretrained optimizer's row is left out: {e}", RuntimeWarning)
    return {}
  return {f"learned (pretrained, outer step {meta['outer_step']})": (theta, spec)}


def plot(curves, path):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  cols = min(3, len(curves))
  rows = -(-len(curves) // cols)
  fig = Figure(figsize=(4.6 * cols, 3.4 * rows), dpi=100)
  FigureCanvasAgg(fig)
  for i, (label, by_opt) in enumerate(curves.items()):
    ax = fig.add_subplot(rows, cols, i + 1)
    for name, curve in by_opt.items():
      ax.plot(curve, label=name, lw=1.1)
    ax.set(title=label, xlabel="inner step", ylabel="meta-split loss / log C", yscale="log")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
