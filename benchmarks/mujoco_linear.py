"""Linear policies on the MuJoCo locomotion suite (the ARS benchmark) trained by ES-Single and the other online
estimators, on native MuJoCo.

    python -m benchmarks.mujoco_linear [--quick] [--envs Hopper-v5,Ant-v5] [--methods es_single,pes] [--seeds R]
                                    [--first-seed S]

What is run: the control task's linear policy (W = 0 at the start, ARS V2 observation normalisation kept in θ and
merged after every update, ARS's survival-bonus shift in the training loss only, where the task's settings take one) on Gymnasium's Hopper-v5,
HalfCheetah-v5, Walker2d-v5 and Ant-v5 (tasks/mujoco_native.py: returns as Gymnasium scores them), with the
task's settings (σ = ARS's ν, Adam at ARS's α/√b, N = 32 pairs, K = T, ARS's top 8 directions, unstaggered;
tasks/control.py), for
each method and seed the same budget of member steps (every member's inner step, the staggering burn-in included,
frozen steps after a termination too). The loop, the evaluation (16 episodes on fixed keys, Gymnasium's returns) and the plot are
benchmarks/control.py's. Beside each evaluation the env steps really simulated are logged (`env_steps`, the plots'
x axis; `member_steps` holds the budget's count): the observation statistics' count in θ, one per running member
step (the simulator skips frozen members). That is what ARS counts, and thresholds are reached in it.

Thresholds (ARS, Mania et al. 2018, Table 1, the returns its median episodes are counted to): Hopper 3120,
HalfCheetah 3430, Walker2d 4390, Ant 3580. ARS's Table 1 also reports the median number of episodes (and so
about episodes × up to 1000 env steps) each ARS version needed to reach them: UNVERIFIED here (the paper could not
be read offline); `ARS_TABLE1_ENV_STEPS` stays None until someone fills it from the paper. Each run's first env step
count at which the evaluated return passes the threshold is reported (`steps_to_threshold`).

At the settings the four environments publish (K = T, particles not staggered) each window is one whole
episode, so ES-Single, PES, truncated ES and full ES are one estimator: from the same seed their runs are the same,
bit for bit (tests/test_online_equivalence.py; the four-method --quick run in benchmarks/RESULTS.md). They differ
only at K < T or with staggered particles.

Full mode: 3 seeds, the budgets in ENVS. --quick: 1 seed, ES-Single only unless --methods is given, a 1/50 budget,
no stagger: a pipeline check. Writes mujoco_linear.json / .png (mujoco_linear_quick.* with --quick) to --out.
Seeds can run as separate processes, each `--first-seed S --seeds 1`: a process adds its runs to the runs of
other seeds already in the file when they share the method's settings and the budget (and replaces them
otherwise), so three seeds on two cores take the time of the slowest rather than the sum.
"""
import argparse
import json
import os
import time

import jax
import numpy as np

import unrolled_es_tasks as tasks
from benchmarks.common import check_choices
from benchmarks import control as control_benchmark

THRESHOLDS = {"Hopper-v5": 3120.0, "HalfCheetah-v5": 3430.0, "Walker2d-v5": 4390.0, "Ant-v5": 3580.0}
ARS_TABLE1_ENV_STEPS = {env_id: None for env_id in THRESHOLDS}   # UNVERIFIED: see the module docstring
# Member-step budgets per run (falling bodies run K = T windows: 64k member steps per update, of which the simulator
# runs only the members still standing).
ENVS = {"Hopper-v5": 20_000_000, "HalfCheetah-v5": 8_000_000, "Walker2d-v5": 20_000_000, "Ant-v5": 10_000_000}
METHODS = ("es_single", "pes", "truncated_es", "full_es")
FULL = dict(seeds=3, num_evals=20, stagger=True, budget_fraction=1)
QUICK = dict(seeds=1, num_evals=4, stagger=False, budget_fraction=50)


def steps_to_threshold(run, threshold, axis="env_steps"):
  """The first logged env step count (`axis`) whose evaluated return reaches `threshold` (None: never)."""
  for steps, ev in zip(run[axis], run["eval"]):
    if ev["return"] is not None and ev["return"] >= threshold:
      return steps
  return None


def train_runs(task, name, cfg, seeds, budget, num_evals):
  """benchmarks/control.py's training loop for one method, logging beside each evaluation the env steps really
  simulated: the observation statistics' count in θ, which every running member's step adds one to (frozen
  steps add none), as ARS counts its timesteps."""
  evaluate, runs, cache = control_benchmark.make_evaluate(task), [], {}
  for seed in seeds:
    rec = {"member_steps": [], "env_steps": [], "wall_time": [], "eval": []}   # env_steps: simulated ones

    def log(member_steps, wall, theta):
      rec["member_steps"].append(int(member_steps))
      rec["env_steps"].append(int(np.asarray(theta["obs_norm"]["count"])))
      rec["wall_time"].append(float(wall))
      rec["eval"].append(evaluate(theta))
    extra = control_benchmark.METHODS[name](task, cfg, jax.random.PRNGKey(seed), budget, num_evals, log, cache)
    runs.append(dict(rec, seed=seed, **(extra or {})))
    print(f"  {task_id(task)} {name} seed {seed}: return {rec['eval'][0]['return']:.1f} -> "
          f"{rec['eval'][-1]['return']:.1f} after {rec['env_steps'][-1]} simulated env steps "
          f"({rec['member_steps'][-1]} member steps), {rec['wall_time'][-1]:.0f} s", flush=True)
  return runs


def task_id(task):
  return task.settings.get("env_id", "")


def run_env(env_id, methods, mode, seeds, budget=None):
  """The entry of one environment: every method's runs for `seeds` (a sequence of seed numbers)."""
  budget = budget or ENVS[env_id] // mode["budget_fraction"]
  start = time.perf_counter()
  task = tasks.get("control", env=env_id)
  task = task._replace(settings=dict(task.settings, env_id=env_id))
  out = {}
  for name in methods:
    cfg = dict({"stagger": mode["stagger"]}, **task.settings)   # a task's own stagger (Hopper: none) wins
    out[name] = summarise(env_id, name, cfg, train_runs(task, name, cfg, seeds, budget, mode["num_evals"]))
  refs = [(THRESHOLDS[env_id], "ARS threshold (Mania et al. 2018, Table 1)")]
  return {"config": {"seeds": len(seeds), "stagger": mode["stagger"], "num_evals": mode["num_evals"],
                     "policy": "linear", "jax_version": jax.__version__}, "budget_env_steps": budget,
          "references": refs, "ars_table1_env_steps": ARS_TABLE1_ENV_STEPS[env_id],
          "seconds": time.perf_counter() - start, "methods": out}


def summarise(env_id, name, cfg, runs):
  """A method's entry from its runs (sorted by seed): final returns, steps to the threshold, simulated speed."""
  runs = sorted(runs, key=lambda r: r["seed"])
  final = [r["eval"][-1]["return"] for r in runs]
  simulated, wall = sum(r["env_steps"][-1] for r in runs), sum(r["wall_time"][-1] for r in runs)
  return {"label": control_benchmark.LABELS.get(name, name), "settings": cfg, "runs": runs,
          "final_return": final, "final_return_mean": float(np.mean(final)),
          "steps_to_threshold": [steps_to_threshold(r, THRESHOLDS[env_id]) for r in runs],
          "simulated_env_steps_per_second": simulated / max(wall, 1e-9)}


def merge_seeds(env_id, earlier, entry):
  """`entry` with the runs of other seeds that `earlier` (the environment's entry already in the file) holds for
  the same method, settings and budget kept: seeds run as separate processes (--first-seed) add up to one entry."""
  if not earlier or earlier.get("budget_env_steps") != entry["budget_env_steps"]:
    return entry
  methods, merged = dict(entry["methods"]), False
  for name, m in entry["methods"].items():
    old = earlier.get("methods", {}).get(name)
    if old is None or old.get("settings") != json.loads(json.dumps(m["settings"])):   # as the file holds them
      continue
    ours = {r["seed"] for r in m["runs"]}
    theirs = [r for r in old["runs"] if r["seed"] not in ours]
    methods[name] = summarise(env_id, name, m["settings"], m["runs"] + theirs)
    merged = merged or bool(theirs)
  if not merged:
    return entry
  seeds = max(len(m["runs"]) for m in methods.values())
  return dict(entry, methods=methods, seconds=entry["seconds"] + earlier.get("seconds", 0.0),
              config=dict(entry["config"], seeds=seeds))


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--envs", type=lambda s: tuple(s.split(",")), default=tuple(ENVS))
  p.add_argument("--methods", type=lambda s: tuple(s.split(",")), default=None)
  p.add_argument("--seeds", type=int, default=None, help="how many seeds (default 3, 1 with --quick)")
  p.add_argument("--first-seed", type=int, default=0,
                 help="the first seed: a process per seed (--first-seed S --seeds 1) adds its runs to the entry")
  p.add_argument("--budget", type=int, default=None, help="env steps per run (default: ENVS, /50 with --quick)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)
  if args.seeds is not None and args.seeds < 1 or args.first_seed < 0:
    p.error(f"--seeds must be at least 1 and --first-seed at least 0; got {args.seeds} and {args.first_seed}")
  check_choices(p, (("envs", args.envs, ENVS), ("methods", args.methods or (), METHODS)))
  return args


def main(argv=None):
  args = parse_args(argv)
  mode = QUICK if args.quick else FULL
  methods = args.methods or (("es_single",) if args.quick else METHODS)
  seeds = tuple(range(args.first_seed, args.first_seed + (args.seeds or mode["seeds"])))
  stem = os.path.join(args.out, "mujoco_linear" + ("_quick" if args.quick else ""))
  for env_id in args.envs:
    entry = run_env(env_id, methods, mode, seeds, args.budget)
    os.makedirs(args.out, exist_ok=True)
    # Read back just before writing: environments run earlier, or by another process at the same time with other
    # --envs, keep their entries.
    result = control_benchmark._load(stem + ".json")
    result["envs"][env_id] = merge_seeds(env_id, result["envs"].get(env_id), entry)
    with open(stem + ".json", "w") as f:   # after every environment: a long run can be split or resumed by --envs
      json.dump(result, f, indent=1)
  control_benchmark.plot(result, stem + ".png")
  print(f"wrote {stem}.json/.png")
  for env_id, e in result["envs"].items():
    for name, m in e["methods"].items():
      print(f"  {env_id:<15} {name:<13} final return {control_benchmark._fmt(m['final_return_mean'])} "
            f"(threshold {THRESHOLDS[env_id]:g}); simulated env steps to threshold per seed "
            f"{m['steps_to_threshold']}; {m['simulated_env_steps_per_second']:.0f} simulated env steps/s; "
            f"ARS Table 1: UNVERIFIED")
  return result


if __name__ == "__main__":
  main()
