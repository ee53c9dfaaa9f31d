"""Variance reduction at equal wall time: which estimator gives the lowest error for the same compute?

    python -m benchmarks.variance_reduction [--quick | --preset sweep] [--out DIR]

Protocol of benchmarks/variance.py (Vicol et al. 2021, §5.2): an online estimator runs one whole episode of T/K
windows from a fresh inner problem (no stagger) and its window estimates are averaged; the error is
‖ĝ − g‖²/‖g‖² against the full-BPTT gradient of the episode (averaged over data keys where the task is stochastic).
Methods, all at the same T and K:

  es_single      ES-Single, Gaussian noise (the reference);
  baseline_es    ES-Single against each particle's unperturbed run (EGGROLL's baseline);
  pes_orth       PES with orthogonal directions within the population (Choromanski et al. 2018);
  uoro           UORO (Tallec & Ollivier 2018), forward-mode, unbiased;
  tbptt          truncated BPTT (biased);
  hybrid         ES-Single and truncated BPTT mixed by inverse variance per coordinate (Metz et al. 2019);
  guided         Guided ES (Maheswaranathan et al. 2019): truncated ES drawing half its variance along the
                 gradient of one-particle truncated BPTT at the same θ (the paper's estimator; biased twice over:
                 truncation and the guidance).

Equal wall time: every method is first timed with `particles` particles (the median of interleaved calls of one
estimate, compiled beforehand), then given N = particles · t_ES / t_method particles (at least 1; for the hybrid,
split evenly between its two parts), so that one of its estimates costs what ES-Single's does; the table reports
the time measured at that N beside the error. Writes benchmarks/results/variance_reduction[_quick].json and .png.

--preset sweep repeats the comparison at several truncation lengths K of the same T (influence balancing and the
learned-optimizer task; `SWEEP_KS`), each K timed and matched afresh, and plots every method's error against T/K
(variance_reduction_sweep.{json,png}).
"""
import time

import jax
import numpy as np

import unrolled_es_tasks as tasks
import unrolled_es as ue
from benchmarks.common import preset_arguments, write_result
from benchmarks.variance import episode_estimates, summarize, true_gradient
from unrolled_es.noise.orthogonal import orthogonal

TASKS = {
    "influence_balancing": dict(kw=dict(horizon=100), sigma=0.1, k=10, truth_keys=1),
    "rnn_char": dict(kw=dict(horizon=100, hidden=5, data="real"), sigma=1e-3, k=10, truth_keys=1024),
    "learned_optimizer": dict(kw=dict(horizon=40, hidden=(16,)), sigma=0.01, k=5, truth_keys=64),
}
METHODS = ("es_single", "baseline_es", "pes_orth", "uoro", "tbptt", "hybrid", "guided")
PRESETS = {"default": dict(particles=16, repeats=64, reps=9), "quick": dict(particles=8, repeats=16, reps=5),
           "tiny": dict(particles=4, repeats=8, reps=2, tasks=("influence_balancing",)),
           "sweep": dict(particles=16, repeats=32, reps=5, tasks=("influence_balancing", "learned_optimizer"),
                         sweep=True)}
# T/K from 1 (one window: every method sees the whole episode) to T (windows of one step).
SWEEP_KS = {"influence_balancing": (100, 50, 20, 10, 5, 1), "learned_optimizer": (40, 20, 10, 5, 2, 1)}


def build(method, system, n, sigma, k):
  kw = dict(truncation_length=k, stagger=False)
  if method == "es_single":
    return ue.es_single(system, num_particles=n, sigma=sigma, **kw)
  if method == "baseline_es":
    return ue.baseline_es(system, num_particles=n, sigma=sigma, **kw)
  if method == "pes_orth" and k == system.horizon:   # PES with one window per episode is full ES
    return ue.full_es(system, num_particles=n, sigma=sigma, noise=orthogonal(ue.gaussian()))
  if method == "pes_orth":
    return ue.pes(system, num_particles=n, sigma=sigma, noise=orthogonal(ue.gaussian()), **kw)
  if method == "uoro":
    return ue.uoro(system, num_particles=n, **kw)
  if method == "tbptt":
    return ue.truncated_bptt(system, num_particles=n, **kw)
  if method == "guided":
    return ue.guided(ue.truncated_es, system, subspace=1, alpha=0.5, num_particles=n, sigma=sigma,
                     surrogate=ue.truncated_bptt(system, num_particles=1, **kw), **kw)
  half = max(1, n // 2)
  return ue.hybrid(ue.es_single(system, num_particles=half, sigma=sigma, diagnostics=True, **kw),
                   ue.truncated_bptt(system, num_particles=half, diagnostics=True, **kw))


def seconds_per_estimate(estimators, theta, reps):
  """Median seconds of one estimate of each estimator, interleaved calls after compiling."""
  key = jax.random.PRNGKey(0)
  runs = {}
  for name, est in estimators.items():
    estimate = jax.jit(est.estimate)
    state = est.init(key, theta)
    jax.block_until_ready(estimate(key, theta, state))
    runs[name] = (estimate, state)
  times = {name: [] for name in runs}
  for _ in range(reps):
    for name, (estimate, state) in runs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(estimate(key, theta, state))
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(t)) for name, t in times.items()}


def run_task(name, preset, log, k=None):
  """Every method of the preset (ES-Single, the reference, first) on task `name` at truncation length k."""
  cfg, methods = TASKS[name], preset.get("methods", METHODS)
  task = tasks.get(name, **cfg["kw"])
  system, theta, n = task.system, task.theta0, preset["particles"]
  k = cfg["k"] if k is None else k
  g, floor = true_gradient(system, theta, cfg["truth_keys"])
  base = seconds_per_estimate({m: build(m, system, n, cfg["sigma"], k) for m in methods}, theta, preset["reps"])
  sizes = {m: max(2 if m == "hybrid" else 1, int(round(n * base["es_single"] / base[m]))) for m in methods}
  matched = {m: build(m, system, sizes[m], cfg["sigma"], k) for m in methods}
  timed = seconds_per_estimate(matched, theta, preset["reps"])
  out = {"truth_floor": floor, "grad_norm": float(np.linalg.norm(g)), "horizon": system.horizon, "k": k,
         "sigma": cfg["sigma"], "methods": {}}
  for m in methods:
    samples = episode_estimates(matched[m], theta, system.horizon // k, preset["repeats"], seed=0)
    fig = summarize(samples, g)
    fig.update(particles=sizes[m], seconds_per_estimate=timed[m], seconds_at_base_n=base[m])
    fig["error_over_es_single"] = fig["error"] / out["methods"]["es_single"]["error"] if m != "es_single" else 1.0
    out["methods"][m] = fig
    log(f"{name} K={k} {m}: N={sizes[m]} {timed[m] * 1e3:.2f} ms/estimate, "
        f"error {fig['error']:.4g} ± {fig['error_se']:.2g}")
  return out


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(result["tasks"])
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
  for ax, name in zip(axes[0], names):
    rec = result["tasks"][name]["methods"]
    errs = [rec[m]["error"] for m in rec]
    ses = [rec[m]["error_se"] for m in rec]
    ax.bar(range(len(rec)), errs, yerr=ses, color=[f"C{i}" for i in range(len(rec))], capsize=2)
    ax.set_xticks(range(len(rec)), list(rec), rotation=30, fontsize=8)
    ax.set(yscale="log", ylabel="‖ĝ − g‖² / ‖g‖² at ES-Single's wall time", title=name)
    ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_sweep(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(result["sweep"])
  fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
  for ax, name in zip(axes[0], names):
    runs = result["sweep"][name]
    ks = sorted(runs, key=lambda k: -int(k))   # ascending T/K
    t_over_k = [runs[k]["horizon"] / int(k) for k in ks]
    top = 1e3 * max(runs[k]["methods"]["es_single"]["error"] for k in ks)
    shown = []
    for i, m in enumerate(runs[ks[0]]["methods"]):
      errs = np.array([runs[k]["methods"][m]["error"] for k in ks])
      ses = np.array([runs[k]["methods"][m]["error_se"] for k in ks])
      drawn = (errs > 0) & (errs < top)   # exact estimates (0) cannot sit on a log axis; diverged ones are cut
      shown.extend(errs[drawn])
      ax.errorbar(t_over_k, np.where(drawn, errs, np.nan), yerr=np.where(drawn, ses, np.nan), marker="o", ms=3,
                  capsize=2, color=f"C{i}", label=m + (" (diverges: off the scale)" if (errs >= top).any() else ""))
    ax.set(xscale="log", yscale="log", title=name, ylabel="‖ĝ − g‖² / ‖g‖² at ES-Single's wall time",
           xlabel="T/K (windows per episode; an exact estimate, error 0, is not drawn)",
           ylim=(min(shown) / 2, max(shown) * 2))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  args = preset_arguments(__doc__, PRESETS, argv)
  preset, start = PRESETS[args.preset], time.perf_counter()
  result = {"preset": args.preset, "settings": preset, "jax": jax.__version__}
  log = lambda m: print(m, flush=True)  # noqa: E731
  names = preset.get("tasks", tuple(TASKS))
  if preset.get("sweep"):
    result["sweep"] = {name: {str(k): run_task(name, preset, log, k) for k in SWEEP_KS[name]}
                       for name in names}
  else:
    result["tasks"] = {name: run_task(name, preset, log) for name in names}
  result["seconds"] = round(time.perf_counter() - start, 1)
  write_result(result, args.out, "variance_reduction", args.preset, plot_sweep if preset.get("sweep") else plot)
  return result


if __name__ == "__main__":
  main()
