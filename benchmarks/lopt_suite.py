"""The pretrained learned optimizer against per-problem-tuned Adam on a held-out suite.

    python -m benchmarks.lopt_suite [--quick] [--seeds 8] [--steps 1000] [--problems 0,3] [--out benchmarks/results]
                                    [--data-dir DIR]
    python -m benchmarks.lopt_suite --report benchmarks/results/lopt_suite.json   # its figures as markdown tables

Problems: `lopt_family.HELD_OUT` (11 problems of 6 kinds: MLP, CNN, RNN/LSTM, attention, tabular small-data
with breast cancer, regression), none of which the optimizer was meta-trained on. On every problem each
optimizer trains the same `seeds` models: a seed fixes the problem's draw, the initialisation and the
minibatches, so differences are paired.

Baselines, tuned per problem: Adam at every learning rate of a quarter-decade grid (1e-4 … 10^-0.5), constant
and cosine-decayed to 0; on the small-data problems also AdamW (cosine) with decoupled weight decay in
{1e-3, 1e-2, 1e-1, 1}. The tuned baseline is the configuration with the lowest seed-mean validation loss over
the last tenth of the run (the validation split, never the test split; a configuration with a non-finite
run is out). Tuning on the evaluation seeds favours the baseline.

Per problem: the learned optimizer's (`pretrained(num_steps=steps)`) paired difference of final test loss
and of mean training loss over the run, each with its 95% interval; VeLO's speed-up (`lopt_suite_stats`),
for which the tuned baseline also runs 4× as long. Summary: the interquartile mean over problems of the final
test loss normalised by the tuned baseline's (learned / baseline), the counts of problems significantly
better / not different / worse (better: an interval below 0 by test loss or training loss, and neither above
0; worse: either above 0), and the median speed-up. Checks: 10× the longest meta-training horizon (2000) on
the first problem, the learned optimizer and its untrained start θ0 each with the length known and unknown, beside
Adam at the tuned configuration: runs with a non-finite loss, runs that blew up (`blew_up`: ended above where they
began, a divergence that stays finite), final training and test loss; and a width 8× the meta-training MLP width
(32 → 256). --quick: 3 seeds, 60 steps, a coarse grid, short checks.
Writes lopt_suite[_quick].json and .png to --out, with the scored θ's checksum, outer step and command.
A killed run resumes: re-run the same command, and the problems and checks it finished are read back from
<out>/lopt_suite[_quick].progress.json (kept only while the run is unfinished).
--untrained scores the pretraining's start θ0 (the shipped spec at its seed) instead: what meta-training changed.
--report prints a run's figures as the tables of benchmarks/RESULTS.md, from its JSON or, for a run still
going or killed, from its progress file (the finished problems, and a summary over those alone).
--data-dir scores a candidate instead of the shipped θ: a folder written by `python -m benchmarks.lopt_pretrain
--out RUN --export --export-to DIR`, so that a meta-training run is judged on the held-out suite before it ships.
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

from benchmarks import lopt_suite_stats as st
from benchmarks.common import write_json_atomic
from unrolled_es_tasks import lopt_family, lopt_network
from unrolled_es_tasks.lopt_optax import as_optax
from unrolled_es_tasks.lopt_pretrained import DATA_DIR, load as load_shipped, pretrained

ADAM_LRS = tuple(float(10 ** (k / 4)) for k in range(-16, -1))
QUICK_LRS = tuple(float(10 ** (k / 2)) for k in range(-7, -1))
WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0)
SPEEDUP_CAP = 4
EVAL_SEED = 20_000
META_HORIZON = 2000
META_WIDTH = 32
FULL = dict(seeds=8, steps=1000, lrs=ADAM_LRS, long_steps=10 * META_HORIZON)
QUICK = dict(seeds=3, steps=60, lrs=QUICK_LRS, long_steps=600)


def _baseline(lr, cosine, decay, steps):
  """AdamW (decay 0: Adam) at lr, constant or cosine to 0 over `steps`; every argument but steps traced."""
  def schedule(count):
    return lr * jnp.where(cosine, 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count, steps) / steps)), 1.0)
  return optax.adamw(schedule, weight_decay=decay)


@functools.lru_cache(maxsize=64)
def grid_runner(problem, steps):
  """jitted (lrs (G,), cosine (G,), decays (G,), keys (S, 2)) -> run outputs with leading axes (G, S)."""
  one = lambda lr, cos, wd, key: lopt_family.run(problem, _baseline(lr, cos, wd, steps), key, steps)
  return jax.jit(jax.vmap(jax.vmap(one, (None, None, None, 0)), (0, 0, 0, None)))


@functools.lru_cache(maxsize=64)
def learned_runner(problem, steps, num_steps, data_dir=DATA_DIR):
  opt = pretrained(num_steps=num_steps, data_dir=data_dir)
  return jax.jit(jax.vmap(lambda key: lopt_family.run(problem, opt, key, steps)))


def configs(problem, lrs):
  """(lr, cosine, decay) rows of the tuning grid."""
  rows = [(lr, cos, 0.0) for cos in (False, True) for lr in lrs]
  if problem.small_data:
    rows += [(lr, True, wd) for wd in WEIGHT_DECAYS for lr in lrs]
  return rows


def as_numpy(runs):
  return {k: np.asarray(v, np.float64) for k, v in runs.items()}


def pick(runs, steps):
  """(index of the best configuration, every configuration's score) of runs with leading axes (configs, seeds):
  the lowest seed-mean validation loss over the last tenth of the run; a configuration with a non-finite run is
  out (scores +inf)."""
  tail = max(1, steps // 10)
  finite = np.all(np.isfinite(runs["train"]), (1, 2)) & np.all(np.isfinite(runs["test_loss"]), 1)
  score = np.where(finite, runs["valid"][:, :, -tail:].mean((1, 2)), np.inf)
  return int(np.argmin(score)), score.tolist()


def tune(problem, steps, keys, lrs):
  """(best config, its runs, the grid's scores), chosen by `pick`."""
  rows = configs(problem, lrs)
  lr, cos, wd = (jnp.asarray(np.array(c, np.float32)) for c in zip(*rows))
  runs = as_numpy(grid_runner(problem, steps)(lr, cos.astype(bool), wd, keys))
  j, scores = pick(runs, steps)
  best = {"lr": rows[j][0], "schedule": "cosine" if rows[j][1] else "constant", "weight_decay": rows[j][2]}
  return best, {k: v[j] for k, v in runs.items()}, scores


def paired_verdicts(runs, adam):
  """Paired intervals of final test loss and of mean training loss (runs − tuned Adam) over the seeds, their
  verdicts, and the overall one: worse if either is worse, else better if either is better."""
  test = st.paired_ci(runs["test_loss"], adam["test_loss"])
  train = st.paired_ci(runs["train"].mean(1), adam["train"].mean(1))
  verdicts = (st.verdict(test), st.verdict(train))
  overall = "worse" if "worse" in verdicts else "better" if "better" in verdicts else "not different"
  return {"test_diff": test, "train_diff": train, "verdict_test": verdicts[0], "verdict_train": verdicts[1],
          "verdict": overall}


def evaluate_problem(problem, s, keys):
  steps = s["steps"]
  best, adam, scores = tune(problem, steps, keys, s["lrs"])
  runner = untrained_runner if s.get("untrained") else learned_runner
  learned = as_numpy(runner(problem, steps, steps, s["data_dir"])(keys))
  long = grid_runner(problem, SPEEDUP_CAP * steps)
  adam_long = as_numpy(long(*tuned_config(best), keys))
  return {"problem": problem.name, "kind": problem.kind, "tuned": best, "grid_scores": scores,
          "learned_test": float(np.mean(learned["test_loss"])), "adam_test": float(np.mean(adam["test_loss"])),
          **paired_verdicts(learned, adam), "diverged_learned": int(np.sum(non_finite(learned["train"]))),
          "speedup": st.speedup(learned["train"].mean(0), adam_long["train"][0].mean(0), SPEEDUP_CAP),
          "curves": {"learned": learned["train"].mean(0).tolist(), "adam": adam["train"].mean(0).tolist()}}


def tuned_config(tuned):
  """A tuned configuration as grid_runner's (lrs, cosine, decays) arguments, a grid of one."""
  return (jnp.asarray([tuned["lr"]], jnp.float32), jnp.asarray([tuned["schedule"] == "cosine"]),
          jnp.asarray([tuned["weight_decay"]], jnp.float32))


def horizon_check(problem, s, keys, tuned):
  """10× the longest meta-training horizon: the learned optimizer and its untrained start θ0 (each with the length
  known and unknown) beside Adam at the tuned configuration, whose cosine is stretched to the longer run."""
  steps = s["long_steps"]
  runs = {}
  for name, num_steps in (("length known", steps), ("length unknown", None)):
    runs[f"learned, {name}"] = learned_runner(problem, steps, num_steps, s["data_dir"])(keys)
    runs[f"untrained θ0, {name}"] = untrained_runner(problem, steps, num_steps, s["data_dir"])(keys)
  adam = grid_runner(problem, steps)(*tuned_config(tuned), keys)
  runs["adam (tuned at the suite's length)"] = {k: v[0] for k, v in adam.items()}
  return {"problem": problem.name, "steps": steps,
          "results": {name: long_run_summary(as_numpy(r), steps) for name, r in runs.items()}}


@functools.lru_cache(maxsize=64)
def untrained_runner(problem, steps, num_steps, data_dir=DATA_DIR):
  """As learned_runner, with the θ the meta-training starts from (`lopt_network.init_theta`) in place of θ."""
  _, spec, meta = load_shipped(data_dir)
  opt = as_optax(lopt_network.init_theta(spec, meta["settings"]["seed"]), num_steps, spec)
  return jax.jit(jax.vmap(lambda key: lopt_family.run(problem, opt, key, steps)))


def non_finite(train):
  """Per run (rows of `train`): whether any step's training loss is NaN or infinite."""
  return ~np.isfinite(train).all(1)


def blew_up(train):
  """Per run (rows of `train`, the training loss at every step): a non-finite loss, or a mean over the last 5% of
  the run above the mean over its first 1% (it ended worse than it began: a divergence that stays finite)."""
  steps = train.shape[1]
  head, tail = train[:, :max(1, steps // 100)], train[:, -max(1, steps // 20):]
  return non_finite(train) | (tail.mean(1) > head.mean(1))   # a NaN mean compares False


def long_run_summary(runs, steps):
  return {"diverged": int(np.sum(non_finite(runs["train"]))), "blew_up": int(np.sum(blew_up(runs["train"]))),
          "final_train": float(np.mean(runs["train"][:, -max(1, steps // 20):])),
          "test": float(np.mean(runs["test_loss"]))}


def summary(rows):
  ratios = [r["learned_test"] / r["adam_test"] for r in rows]
  return {"iqm_normalised_test_loss": st.iqm(ratios), "baseline_normalised": 1.0,
          "counts": st.counts([r["verdict"] for r in rows]),
          "counts_test_loss": st.counts([r["verdict_test"] for r in rows]),
          "counts_train_loss": st.counts([r["verdict_train"] for r in rows]),
          "median_speedup": float(np.median([r["speedup"] for r in rows]))}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--seeds", type=int, default=None)
  ap.add_argument("--steps", type=int, default=None)
  ap.add_argument("--problems", default=None, help="comma-separated indices into HELD_OUT (default: all)")
  ap.add_argument("--no-checks", action="store_true", help="skip the 10x-horizon and 8x-width checks")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  ap.add_argument("--data-dir", default=DATA_DIR, help="the θ to score: a folder of lopt_pretrain --export-to "
                  "(default: the shipped one)")
  ap.add_argument("--untrained", action="store_true", help="score the pretraining's start θ0 instead of the "
                  "shipped θ (an ablation: what the meta-training changed); writes lopt_suite_untrained[_quick]")
  ap.add_argument("--report", metavar="JSON", help="only print an earlier run's figures as markdown tables: its "
                  "lopt_suite[_quick].json, or the .progress.json of an unfinished run (its finished stages)")
  a = ap.parse_args(argv)
  if a.report:
    with open(a.report) as f:
      print(report(json.load(f)))
    return 0
  s = dict(QUICK if a.quick else FULL, data_dir=a.data_dir)
  if a.untrained:
    s["untrained"] = True   # only when set, so that the default run's identity (and its progress file) stays
  _, _, meta = load_shipped(a.data_dir)   # a missing or damaged θ fails here, before any training
  for name in ("seeds", "steps"):
    if getattr(a, name) is not None:
      s[name] = getattr(a, name)
  if s["seeds"] < 2 or s["steps"] < 10:
    raise ValueError(f"--seeds must be at least 2 and --steps at least 10; got {s['seeds']} and {s['steps']}")
  problems = select_problems(a.problems)
  stem = "lopt_suite" + ("_untrained" if a.untrained else "") + ("_quick" if a.quick else "")
  progress = open_progress(os.path.join(a.out, stem + ".progress.json"), run_identity(s, meta))
  start = time.time()
  result = run_suite(problems, s, progress, checks=not a.no_checks)
  result["theta"] = ({"untrained": "lopt_network.init_theta(spec, seed)", "spec": meta["spec"],
                      "seed": meta["settings"]["seed"]} if a.untrained else
                     {k: meta.get(k) for k in ("sha256", "outer_step", "command", "last_eval")})
  result["seconds"] = time.time() - start   # this sitting's time; stages resumed from a killed run are not in it
  print("summary:", json.dumps(result["summary"]), flush=True)
  write_result(result, a.out, stem)
  os.remove(progress["path"])
  return 0


def run_suite(problems, s, progress, checks=True):
  """Every problem's row, then the width and horizon checks; each stage is saved to `progress` when it ends."""
  keys = jax.random.split(jax.random.PRNGKey(EVAL_SEED), s["seeds"])
  rows = [stage(progress, f"problem {p.name}", lambda p=p: evaluate_problem(p, s, keys), _line) for p in problems]
  result = {"settings": jsonable(s), "rows": rows, "summary": summary(rows)}
  if checks:
    width = lopt_family.HELD_OUT[0]._replace(name=f"mlp digits {8 * META_WIDTH}-{8 * META_WIDTH} (8x width)",
                                             sizes=(8 * META_WIDTH, 8 * META_WIDTH))
    result["width_check"] = stage(progress, "width check", lambda: evaluate_problem(width, s, keys), _line)
    result["horizon_check"] = stage(progress, "horizon check",
                                    lambda: horizon_check(problems[0], s, keys, rows[0]["tuned"]),
                                    lambda h: "10x horizon: " + json.dumps(h["results"]))
  return result


# ---------------------------------------------------------------- resuming a killed run
# The full suite takes hours on a CPU: each finished stage (a problem, a check) is written to
# <out>/<stem>.progress.json, and a run with the same settings and θ skips the stages it finds there.

def jsonable(tree):
  return json.loads(json.dumps(tree))   # tuples become lists, as they come back from the file


def run_identity(s, meta):
  return jsonable({"settings": {k: v for k, v in s.items() if k != "data_dir"}, "theta_sha256": meta.get("sha256")})


def open_progress(path, identity):
  """{path, identity, stages}: the stages a killed run with this identity finished, or none. A damaged file,
  or one from other settings or another θ, is reported and set aside as <path>.old, never mixed in."""
  progress = {"path": path, "identity": identity, "stages": {}}
  if not os.path.exists(path):
    return progress
  try:
    with open(path) as f:
      saved = json.load(f)
    if saved["identity"] == identity:
      progress["stages"] = dict(saved["stages"])
      print(f"resuming from {path}: {len(progress['stages'])} stage(s) already done", flush=True)
      return progress
    reason = "it belongs to a run with other settings or another θ"
  except (OSError, ValueError, KeyError, TypeError) as e:
    reason = f"it cannot be read ({type(e).__name__}: {e})"
  os.replace(path, path + ".old")
  print(f"starting afresh: {path} was set aside as {path}.old because {reason}", flush=True)
  return progress


def stage(progress, name, compute, describe):
  """compute()'s result, or the one saved under `name` by an earlier sitting; a new one is saved at once."""
  if name in progress["stages"]:
    value = progress["stages"][name]
    print(describe(value), "(resumed)", flush=True)
    return value
  value = jsonable(compute())
  progress["stages"][name] = value
  write_json_atomic({"identity": progress["identity"], "stages": progress["stages"]}, progress["path"])
  print(describe(value), flush=True)
  return value


def select_problems(spec):
  if spec is None:
    return list(lopt_family.HELD_OUT)
  try:
    idx = [int(i) for i in spec.split(",")]
    return [lopt_family.HELD_OUT[i] for i in idx]
  except (ValueError, IndexError):
    raise ValueError(f"--problems must be comma-separated indices in 0..{len(lopt_family.HELD_OUT) - 1}; "
                     f"got {spec!r}") from None


def fmt_ci(ci):
  return f"{ci[0]:+.4f} [{ci[1]:+.4f}, {ci[2]:+.4f}]"


def _line(r):
  t = r["tuned"]
  return (f"{r['problem']:34s} test Δ {fmt_ci(r['test_diff'])} ({r['verdict_test']}), "
          f"train Δ {fmt_ci(r['train_diff'])} "
          f"({r['verdict_train']}), speed-up {r['speedup']:.2f}x, tuned {t['schedule']} lr {t['lr']:.3g} "
          f"wd {t['weight_decay']:g}")


# ---------------------------------------------------------------- markdown, as benchmarks/RESULTS.md shows it

def report(saved):
  """Markdown tables of a finished result, or of a progress file: its finished problems, with the summary over
  those alone (marked as such)."""
  partial = "stages" in saved
  if partial:
    stages = saved["stages"]
    rows = [v for name, v in stages.items() if name.startswith("problem ")]
    saved = {"rows": rows, "summary": summary(rows) if rows else None,
             "width_check": stages.get("width check"), "horizon_check": stages.get("horizon check")}
  lines = ["| problem | final test loss, learned / tuned | test Δ | mean training loss Δ | speed-up | tuned | "
           "verdict | learned runs diverged |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  lines += [_table_row(r) for r in saved["rows"]]
  if saved.get("width_check"):
    lines.append(_table_row(saved["width_check"]))
  if saved["summary"]:
    lines += ["", ("Over the finished problems only: " if partial else "Summary: ") + _summary_line(saved["summary"])]
  if saved.get("horizon_check"):
    lines += ["", *_horizon_table(saved["horizon_check"])]
  return "\n".join(lines)


def _tuned_text(t):
  return f"{t['schedule']} {t['lr']:.3g}" + (f", wd {t['weight_decay']:g}" if t["weight_decay"] else "")


def _table_row(r):
  return (f"| {r['problem']} | {r['learned_test']:.4f} / {r['adam_test']:.4f} | {fmt_ci(r['test_diff'])} | "
          f"{fmt_ci(r['train_diff'])} | {r['speedup']:.2f}× | {_tuned_text(r['tuned'])} | {r['verdict']} | "
          f"{r['diverged_learned']} |")


def _summary_line(sm):
  c, ct, cr = sm["counts"], sm["counts_test_loss"], sm["counts_train_loss"]
  trio = lambda c: f"{c['better']} / {c['not different']} / {c['worse']}"
  return (f"better / not different / worse {trio(c)} (by test loss {trio(ct)}, by mean training loss {trio(cr)}); "
          f"interquartile mean of normalised final test loss {sm['iqm_normalised_test_loss']:.3f} (tuned Adam 1); "
          f"median speed-up {sm['median_speedup']:.2f}×.")


def _horizon_table(h):
  lines = [f"{h['problem']}, {h['steps']} steps:", "",
           "| optimizer | non-finite runs | runs that ended above their start | final training loss | test loss |",
           "| --- | --- | --- | --- | --- |"]
  return lines + [f"| {name} | {v['diverged']} | {v.get('blew_up', 'not measured')} | {v['final_train']:.4g} | "
                  f"{v['test']:.4f} |" for name, v in h["results"].items()]


def write_result(result, out, stem, plot_rows=None):
  """<out>/<stem>.json, and <stem>.png drawn by plot_rows(rows, path) (default: this suite's plot)."""
  write_json_atomic(result, os.path.join(out, stem + ".json"))
  (plot_rows or plot)(result["rows"], os.path.join(out, stem + ".png"))


def interval_panel(ax, rows, series, title, names=True):
  """One problem per row: for each (label, [(mean, low, high)] per problem) of `series`, the intervals, offset so
  that several series side by side stay apart; 0 marked."""
  y = np.arange(len(rows))
  for k, (label, cis) in enumerate(series):
    ci = np.asarray(cis, np.float64).reshape(len(rows), 3)
    shift = 0.3 * (k - (len(series) - 1) / 2)
    ax.errorbar(ci[:, 0], y + shift, xerr=[ci[:, 0] - ci[:, 1], ci[:, 2] - ci[:, 0]], fmt="o", capsize=3,
                label=label)
  ax.axvline(0, color="k", lw=0.8)
  ax.set(title=title, yticks=y, yticklabels=[r["problem"] for r in rows] if names else [])
  ax.tick_params(labelsize=7)


def plot(rows, path):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(13, 4.2), dpi=100)
  FigureCanvasAgg(fig)
  y = np.arange(len(rows))
  for i, (key, title) in enumerate((("test_diff", "final test loss: learned − tuned Adam"),
                                    ("train_diff", "mean training loss: learned − tuned Adam"))):
    interval_panel(fig.add_subplot(1, 3, i + 1), rows, [(None, [r[key] for r in rows])], title, names=i == 0)
  ax = fig.add_subplot(1, 3, 3)
  ax.barh(y, [r["speedup"] for r in rows])
  ax.axvline(1, color="k", lw=0.8)
  ax.set(title=f"speed-up over tuned Adam (cap {SPEEDUP_CAP}x)", yticks=y, yticklabels=[])
  fig.tight_layout()
  fig.savefig(path)


if __name__ == "__main__":
  sys.exit(main())
