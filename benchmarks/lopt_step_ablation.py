"""Ablation: how much of the pretrained optimizer's gap to per-problem-tuned Adam is its step size?

    python -m benchmarks.lopt_step_ablation [--quick] [--problems 0,1,2,7,8,9,10] [--seeds 8] [--steps 1000]
                                            [--data-dir DIR] [--out benchmarks/results]

Tuned Adam gets a step size chosen per problem; the pretrained optimizer has one θ for every problem, so whatever
step size a problem needs it must infer from its features. This benchmark gives it the same help: on each
held-out problem (`lopt_family.HELD_OUT`, the suite's problems, seeds and rule) its update is multiplied by a
constant c, with c tuned per problem over the quarter-decade grid 10^(k/4), k = −6 … 6, by the rule that tunes
Adam (`lopt_suite.pick`: the lowest seed-mean validation loss over the last tenth of the run, non-finite
configurations out). Adam is tuned exactly as in `benchmarks.lopt_suite` (its lr grid, constant and cosine,
AdamW on the small-data problems), on the same seeds.

Per problem, two rows against tuned Adam, each with the paired 95% intervals of final test loss and of mean
training loss over the run and the suite's verdict: c = 1 (the optimizer as shipped, which the suite scores) and
c tuned. The summary counts the verdicts of each. Where c tuned is level with Adam and c = 1 is not, the gap on
that problem is the step size; where c tuned is still worse, it is more than the step size. Both the grid of c
and Adam's are tuned on the evaluation seeds.

The default problems are the seven without a CNN, RNN or attention model (those take hours on a CPU). A killed
run resumes from <out>/lopt_step_ablation.progress.json, as the suite does. --quick: the suite's quick settings (3
seeds, 60 steps, a half-decade Adam grid). Writes lopt_step_ablation[_quick].json and .png to --out.
"""
import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import lopt_suite
from benchmarks import lopt_suite_stats as st
from unrolled_es_tasks import lopt_family
from unrolled_es_tasks.lopt_pretrained import DATA_DIR, load, pretrained

SCALES = tuple(float(10 ** (k / 4)) for k in range(-6, 7))
DEFAULT_PROBLEMS = "0,1,2,7,8,9,10"


@functools.lru_cache(maxsize=64)
def scaled_runner(problem, steps, data_dir=DATA_DIR):
  """jitted (scales (C,), keys (S, 2)) -> run outputs with leading axes (C, S): the pretrained update times c."""
  base = pretrained(num_steps=steps, data_dir=data_dir)
  one = lambda c, key: lopt_family.run(problem, optax.chain(base, optax.scale(c)), key, steps)
  return jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))


def compare(runs, adam):
  """One configuration's mean test loss, and its paired intervals and verdicts against tuned Adam's runs."""
  return {"test_loss": float(np.mean(runs["test_loss"])), **lopt_suite.paired_verdicts(runs, adam)}


def evaluate_problem(problem, s, keys):
  steps = s["steps"]
  tuned, adam, _ = lopt_suite.tune(problem, steps, keys, s["lrs"])
  runs = lopt_suite.as_numpy(scaled_runner(problem, steps, s["data_dir"])(jnp.asarray(SCALES, jnp.float32), keys))
  j, scores = lopt_suite.pick(runs, steps)
  at = lambda i: {k: v[i] for k, v in runs.items()}
  return {"problem": problem.name, "kind": problem.kind, "adam": tuned,
          "adam_test_loss": float(np.mean(adam["test_loss"])), "scale_scores": scores, "tuned_scale": SCALES[j],
          "scale_1": compare(at(SCALES.index(1.0)), adam), "scale_tuned": compare(at(j), adam)}


def summary(rows):
  out = {}
  for key in ("scale_1", "scale_tuned"):
    out[key] = {"counts": st.counts([r[key]["verdict"] for r in rows]),
                "counts_test_loss": st.counts([r[key]["verdict_test"] for r in rows]),
                "counts_train_loss": st.counts([r[key]["verdict_train"] for r in rows]),
                "iqm_normalised_test_loss": st.iqm([r[key]["test_loss"] / r["adam_test_loss"] for r in rows])}
  return out


def _line(r):
  part = lambda k: (f"test Δ {lopt_suite.fmt_ci(r[k]['test_diff'])}, train Δ {lopt_suite.fmt_ci(r[k]['train_diff'])}"
                    f" ({r[k]['verdict']})")
  return f"{r['problem']:34s} c = 1: {part('scale_1')};  c = {r['tuned_scale']:.3g}: {part('scale_tuned')}"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--problems", default=DEFAULT_PROBLEMS, help="comma-separated indices into HELD_OUT")
  ap.add_argument("--seeds", type=int, default=None)
  ap.add_argument("--steps", type=int, default=None)
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  ap.add_argument("--data-dir", default=DATA_DIR, help="the θ to score (default: the shipped one)")
  a = ap.parse_args(argv)
  mode = lopt_suite.QUICK if a.quick else lopt_suite.FULL
  given = {"seeds": a.seeds, "steps": a.steps}
  s = {**{k: mode[k] if v is None else v for k, v in given.items()}, "lrs": mode["lrs"], "scales": SCALES,
       "data_dir": a.data_dir}
  if s["seeds"] < 2 or s["steps"] < 10:
    ap.error(f"--seeds must be at least 2 and --steps at least 10; got {s['seeds']} and {s['steps']}")
  stem = "lopt_step_ablation_quick" if a.quick else "lopt_step_ablation"
  _, _, meta = load(a.data_dir)
  problems = lopt_suite.select_problems(a.problems)
  path = os.path.join(a.out, stem + ".progress.json")
  progress = lopt_suite.open_progress(path, lopt_suite.run_identity(s, meta))
  keys = jax.random.split(jax.random.PRNGKey(lopt_suite.EVAL_SEED), s["seeds"])
  start = time.time()
  rows = [lopt_suite.stage(progress, f"problem {p.name}", lambda p=p: evaluate_problem(p, s, keys), _line)
          for p in problems]
  result = {"settings": lopt_suite.jsonable(s), "rows": rows, "summary": summary(rows),
            "theta": {k: meta.get(k) for k in ("sha256", "outer_step", "command")}, "seconds": time.time() - start}
  print("summary:", json.dumps(result["summary"]), flush=True)
  lopt_suite.write_result(result, a.out, stem, plot)
  os.remove(progress["path"])
  return 0


def plot(rows, path):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(11, 4.2), dpi=100)
  FigureCanvasAgg(fig)
  for i, (key, title) in enumerate((("test_diff", "final test loss − tuned Adam's"),
                                    ("train_diff", "mean training loss − tuned Adam's"))):
    series = [(label, [r[which][key] for r in rows])
              for which, label in (("scale_1", "c = 1"), ("scale_tuned", "c tuned per problem"))]
    lopt_suite.interval_panel(fig.add_subplot(1, 2, i + 1), rows, series, title, names=i == 0)
  fig.axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)


if __name__ == "__main__":
  sys.exit(main())
