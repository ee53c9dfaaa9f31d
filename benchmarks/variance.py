"""Error and variance of the gradient estimators against the number of windows unrolled, T/K.

    python -m benchmarks.variance [--quick | --tiny] [--out DIR]

What is estimated. g = ∇θ E_data[L(θ)], the gradient of the expected mean loss of one episode of T steps
(for a deterministic task the expectation is trivial). An online estimator (PES, ES-Single, truncated ES,
truncated BPTT) is run with stagger=False over one whole episode, i.e. T/K consecutive windows from a fresh
inner problem, and its T/K window estimates are averaged: the protocol of Vicol, Metz & Sohl-Dickstein
(ICML 2021, §5.2, Fig. 6). Since the windows have equal length, the average is unbiased for g whenever each
window estimate is unbiased for its window's gradient (PES, ES-Single; ES up to the Gaussian smoothing, which
is exactly zero on a quadratic and O(σ²) in general). Full ES unrolls the whole episode per estimate, so its
figures do not depend on K and are repeated at every T/K. Data (real / random tokens) are drawn per particle
from the same distribution as in the ground truth, with the antithetic partner on the same data.

Ground truth. Autodiff through the whole episode (full BPTT), averaged over `truth_keys` data keys for the
stochastic scenarios; its own Monte-Carlo error, tr Cov/(M‖g‖²), is reported as `truth_floor`.

Figures, each over R independent repeats ĝ_r of an estimator with N particles:
  error     e_r = ‖ĝ_r − g‖² / ‖g‖²;  mean and standard error over r.
  variance  v_r = R/(R−1)·‖ĝ_r − ḡ‖² / ‖g‖²; mean(v) = tr Cov(ĝ)/‖g‖², with SE std(v)/√R.
  bias_sq   ‖ḡ − g‖²/‖g‖², to compare with variance/R, its value for an unbiased estimator.
All configurations of a study use the same seed (common random numbers), so curves are paired across T/K; under
this protocol ES-Single's episode estimate equals full ES's on the same draw, so with deterministic data its
curve is flat to the last bit. The figures against N (`by_particles`) come from separate runs of the estimator
built with each number of particles, on their own seeds.
"""
import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import unrolled_es_tasks as tasks
import unrolled_es as ue
from benchmarks.common import make_taking
from unrolled_es.core.system import episode_losses

ONLINE = ("pes", "es_single", "truncated_es", "truncated_bptt")
COLORS = {"pes": "C0", "es_single": "C1", "truncated_es": "C2", "truncated_bptt": "C3", "full_es": "k"}


def study(task, scenarios, sigma, particles, repeats, ladder, horizon, estimators, baseline_ladder=(),
          baselines=(), truth_keys=1, sigmas=(), low_ranks=(), sweep_scenario=None, sweep_k_over=10,
          particle_counts=(), particle_k_overs=None, **kw):
  """One task's configuration: `estimators` on the whole T/K ladder, `baselines` on `baseline_ladder`; PES and
  ES-Single also with each of `particle_counts` particles at `particle_k_overs` (default: the sweep's T/K and the
  ladder's last), in the sweep's scenario (or the only one)."""
  return dict(task=task, scenarios=scenarios, sigma=sigma, particles=particles, repeats=repeats, ladder=ladder,
              horizon=horizon, estimators=estimators, baseline_ladder=baseline_ladder, baselines=baselines,
              truth_keys=truth_keys, sigmas=sigmas, low_ranks=low_ranks, sweep_scenario=sweep_scenario,
              sweep_k_over=sweep_k_over, particle_counts=particle_counts,
              particle_k_overs=particle_k_overs or (sweep_k_over, ladder[-1]), task_kwargs=kw)


LADDER = (1, 2, 5, 10, 20, 50, 100)
LSTM = dict(task="rnn_char", hidden=5, sigma=1e-3, horizon=100)
PRESETS = {
    "full": [
        study("influence_balancing", (None,), sigma=0.1, particles=16, repeats=1024, ladder=LADDER, horizon=100,
              estimators=("pes", "es_single", "truncated_es", "truncated_bptt", "full_es")),
        study(**LSTM, scenarios=("repeat", "real", "random"), particles=16, repeats=64, ladder=LADDER,
              estimators=("pes", "es_single", "full_es"), baselines=("truncated_es", "truncated_bptt"),
              baseline_ladder=(10, 100), truth_keys=4096, sigmas=(1e-4, 1e-2, 1e-1),
              low_ranks=(1, 4), sweep_scenario="real", particle_counts=(32, 64, 128)),
    ],
    "quick": [
        study("influence_balancing", (None,), sigma=0.1, particles=16, repeats=512, ladder=(1, 10, 100),
              horizon=100, estimators=("pes", "es_single", "full_es"), baselines=("truncated_bptt",),
              baseline_ladder=(10,)),
        study(**LSTM, scenarios=("real",), particles=16, repeats=32, ladder=(1, 100),
              estimators=("pes", "es_single"), truth_keys=1024, sweep_scenario="real", sweep_k_over=100,
              particle_counts=(32, 64)),
    ],
    "tiny": [
        study("influence_balancing", (None,), sigma=0.1, particles=8, repeats=4096, ladder=(1, 10), horizon=100,
              estimators=("pes", "es_single"), particle_counts=(16,), particle_k_overs=(1, 10)),
    ],
}


def make_estimator(name, system, sigma, particles, k, noise=None):
  return make_taking(name, system, num_particles=particles, sigma=sigma, truncation_length=k, stagger=False, noise=noise)


def episode_estimates(est, theta, num_windows, repeats, seed):
  """[repeats, d] float64: each row the mean of one run's `num_windows` window estimates (flattened θ)."""
  def one(key):
    state = est.init(jax.random.fold_in(key, 1 << 30), theta)

    def body(carry, w):
      total, state = carry
      g, state, _ = est.estimate(jax.random.fold_in(key, w), theta, state)
      return (total + ravel_pytree(g)[0], state), None
    zero = jnp.zeros_like(ravel_pytree(theta)[0])
    (total, _), _ = jax.lax.scan(body, (zero, state), jnp.arange(num_windows))
    return total / num_windows
  keys = jax.random.split(jax.random.PRNGKey(seed), repeats)
  return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


def true_gradient(system, theta, num_keys, seed=12345):
  """(g, floor): the full-BPTT gradient of the episode's mean loss averaged over `num_keys` data keys, and its
  Monte-Carlo error tr Cov/(M‖g‖²). Keys are processed in chunks to bound memory."""
  def grad(key):
    return ravel_pytree(jax.grad(lambda th: jnp.mean(episode_losses(system, th, key)))(theta))[0]
  keys = jax.random.split(jax.random.PRNGKey(seed), num_keys)
  chunk = min(num_keys, 512)
  f = jax.jit(jax.vmap(grad))
  grads = np.concatenate([np.asarray(f(keys[i:i + chunk]), np.float64) for i in range(0, num_keys, chunk)])
  g = grads.mean(0)
  floor = 0.0 if num_keys == 1 else float(grads.var(0, ddof=1).sum() / num_keys / np.dot(g, g))
  return g, floor


def summarize(samples, g):
  """The error, variance and bias figures of the module docstring for samples [R, d] against g."""
  r = len(samples)
  norm = float(np.dot(g, g))
  err = np.sum((samples - g) ** 2, axis=1) / norm
  mean = samples.mean(0)
  var = np.sum((samples - mean) ** 2, axis=1) * r / (r - 1) / norm
  return {"error": float(err.mean()), "error_se": float(err.std(ddof=1) / np.sqrt(r)),
          "variance": float(var.mean()), "variance_se": float(var.std(ddof=1) / np.sqrt(r)),
          "bias_sq": float(np.sum((mean - g) ** 2) / norm), "repeats": r}


def configurations(spec):
  """(scenario, estimator, T/K, σ, low rank or None, particles) of every run of a study."""
  n, configs = spec["particles"], []
  sweep_scen = spec["sweep_scenario"] if spec["sweep_scenario"] is not None else spec["scenarios"][0]
  for scen in spec["scenarios"]:
    for name in spec["estimators"]:
      for k_over in (spec["ladder"][:1] if name == "full_es" else spec["ladder"]):
        configs.append((scen, name, k_over, spec["sigma"], None, n))
    for name in spec["baselines"]:
      configs.extend((scen, name, k_over, spec["sigma"], None, n) for k_over in spec["baseline_ladder"])
    if scen == spec["sweep_scenario"]:
      for name in ("pes", "es_single"):
        configs.extend((scen, name, spec["sweep_k_over"], s, None, n) for s in spec["sigmas"])
        configs.extend((scen, name, spec["sweep_k_over"], spec["sigma"], r, n) for r in spec["low_ranks"])
    if scen == sweep_scen:
      for name in ("pes", "es_single"):
        configs.extend((scen, name, k_over, spec["sigma"], None, m)
                       for k_over in spec["particle_k_overs"] for m in spec["particle_counts"])
  return configs


def _store(rec, spec, config, fig):
  """Files one run's figures in the scenario's record."""
  _, name, k_over, sigma, rank, particles = config
  if particles != spec["particles"]:
    rec["estimators"][name][str(k_over)]["by_particles"][str(particles)] = fig
  elif rank is not None:
    rec["low_rank"].setdefault(f"rank{rank}", {})[name] = fig
  elif sigma != spec["sigma"]:
    rec["sigma_sweep"].setdefault(name, {})[repr(sigma)] = fig
  elif name == "full_es":   # independent of K: the same figures at every T/K
    rec["estimators"][name] = {str(k): dict(fig, independent_of_K=True) for k in spec["ladder"]}
  else:
    rec["estimators"].setdefault(name, {})[str(k_over)] = dict(fig, by_particles={str(particles): fig})


def run_study(spec, seed, progress):
  """All configurations of one task; returns its JSON record."""
  t = spec["horizon"]
  for k_over in spec["ladder"] + spec["baseline_ladder"]:
    if t % k_over:
      raise ValueError(f"every T/K must divide the horizon {t}; got {k_over}")
  record = {"horizon": t, "sigma": spec["sigma"], "particles": spec["particles"], "repeats": spec["repeats"],
            "truth": "full BPTT" + (f", mean over {spec['truth_keys']} data keys" if spec["truth_keys"] > 1 else ""),
            "scenarios": {}}
  systems = {}
  for config in progress(configurations(spec), desc=spec["task"]):
    scen, name, k_over, sigma, rank, particles = config
    if scen not in systems:
      kw = dict(spec["task_kwargs"], horizon=t, **({} if scen is None else {"data": scen}))
      task = tasks.get(spec["task"], **kw)
      g, floor = true_gradient(task.system, task.theta0, spec["truth_keys"])
      systems[scen] = (task, g)
      record["scenarios"][str(scen)] = {"grad_norm": float(np.linalg.norm(g)), "truth_floor": floor,
                                        "estimators": {}, "sigma_sweep": {}, "low_rank": {}}
    task, g = systems[scen]
    noise = None if rank is None else ue.low_rank(rank)
    est = make_estimator(name, task.system, sigma, particles, t // k_over, noise)
    start = time.perf_counter()
    run_seed = seed if particles == spec["particles"] else seed + 7919 * particles   # independent of the base run
    samples = episode_estimates(est, task.theta0, 1 if name == "full_es" else k_over, spec["repeats"], run_seed)
    fig = dict(summarize(samples, g), seconds=round(time.perf_counter() - start, 2), particles=particles)
    _store(record["scenarios"][str(scen)], spec, config, fig)
  return record


def plot(results, out_dir, suffix=""):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = []
  for task, rec in results["tasks"].items():
    scens = rec["scenarios"]
    fig, axes = plt.subplots(2, len(scens), figsize=(max(4.2 * len(scens), 6.5), 7), squeeze=False)
    for j, (scen, srec) in enumerate(scens.items()):
      for row, what in enumerate(("error", "variance")):
        ax = axes[row, j]
        for name, by_k in srec["estimators"].items():
          ks = sorted(by_k, key=int)
          x = np.array([int(k) for k in ks])
          y = np.array([by_k[k][what] for k in ks])
          se = np.array([by_k[k][what + "_se"] for k in ks])
          style = "--" if name == "full_es" else "-o"
          ax.errorbar(x, y, yerr=se, fmt=style, color=COLORS.get(name), label=name, ms=4, capsize=2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T/K (windows per episode)")
        ax.set_ylabel("E‖ĝ−g‖²/‖g‖²" if what == "error" else "tr Cov(ĝ)/‖g‖²")
        ax.set_title(f"{task}" + ("" if scen == "None" else f", data={scen}") + f": {what}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{task}: T={rec['horizon']}, σ={rec['sigma']}, N={rec['particles']}, {rec['repeats']} repeats")
    fig.tight_layout()
    path = os.path.join(out_dir, f"variance_{task}{suffix}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    sweep = [(s, srec) for s, srec in scens.items() if srec["sigma_sweep"] or srec["low_rank"]]
    if sweep:
      paths.append(plot_sweeps(task, rec, *sweep[0], out_dir, plt, suffix))
  return paths


def plot_sweeps(task, rec, scen, srec, out_dir, plt, suffix):
  """Error against σ, against N, and with low-rank noise, at the sweep's T/K."""
  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  k_over = str(rec["sweep_k_over"])
  for name in ("pes", "es_single"):
    pts = dict(srec["sigma_sweep"].get(name, {}))
    pts[repr(rec["sigma"])] = srec["estimators"][name][k_over]
    s = sorted(pts, key=float)
    axes[0].errorbar([float(v) for v in s], [pts[v]["error"] for v in s], yerr=[pts[v]["error_se"] for v in s],
                     fmt="-o", color=COLORS[name], label=name, capsize=2)
    for k in sorted(srec["estimators"][name], key=int):
      if len(srec["estimators"][name][k]["by_particles"]) > 1:
        bp = srec["estimators"][name][k]["by_particles"]
        n = sorted(bp, key=int)
        axes[1].errorbar([int(v) for v in n], [bp[v]["error"] for v in n], yerr=[bp[v]["error_se"] for v in n],
                         fmt="-o" if k == k_over else "--s", color=COLORS[name], label=f"{name}, T/K={k}", capsize=2)
    labels = ["gaussian"] + sorted(srec["low_rank"])
    vals = [srec["estimators"][name][k_over]] + [srec["low_rank"][r][name] for r in labels[1:]]
    off = -0.2 if name == "pes" else 0.2
    axes[2].bar(np.arange(len(labels)) + off, [v["error"] for v in vals], width=0.4, yerr=[v["error_se"] for v in vals],
                color=COLORS[name], label=name, capsize=2)
    axes[2].set_xticks(np.arange(len(labels)), labels)
  for ax, xl in zip(axes, ("σ", "N (particles)", "noise")):
    ax.set_xlabel(xl)
    ax.set_ylabel("E‖ĝ−g‖²/‖g‖²")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  axes[0].set_xscale("log")
  axes[1].set_xscale("log")
  axes[0].set_title(f"against σ (T/K={k_over}, N={rec['particles']})")
  axes[1].set_title("against N")
  axes[2].set_title(f"low-rank noise (T/K={k_over}, N={rec['particles']})")
  fig.suptitle(f"{task}, data={scen}, T={rec['horizon']}")
  fig.tight_layout()
  path = os.path.join(out_dir, f"variance_{task}_sweeps{suffix}.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _cell(fig):
  text = f"{fig['error']:.3g} ± {fig['error_se']:.2g}"
  if abs(fig["variance"] - fig["error"]) > 0.02 * fig["error"]:
    text += f" [var {fig['variance']:.3g}]"
  return text


def _scenario_tables(task, rec, scen_name, scen):
  ladder = sorted({int(k) for by in scen["estimators"].values() for k in by})
  lines = [f"{task}, data = {scen_name}: ‖g‖ = {scen['grad_norm']:.4g}, truth floor {scen['truth_floor']:.2g}. "
           f"Normalised error E‖ĝ−g‖²/‖g‖² (mean ± SE; [var] where the variance differs by more than 2%)", "",
           "| estimator | " + " | ".join(f"T/K={k}" for k in ladder) + " |", "|---" * (len(ladder) + 1) + "|"]
  for name, by in scen["estimators"].items():
    lines.append(f"| {name} | " + " | ".join(_cell(by[str(k)]) if str(k) in by else "–" for k in ladder) + " |")
  for name, by in scen["estimators"].items():
    for k, fig in by.items():
      counts = fig.get("by_particles", {})
      if len(counts) > 1:
        lines.append(f"\n{name}, T/K = {k}, separate runs with each N: " + ", ".join(
            f"N={n}: {_cell(f)}" for n, f in sorted(counts.items(), key=lambda c: int(c[0]))))
  for name, by in scen["sigma_sweep"].items():
    lines.append(f"\n{name}, T/K = {rec['sweep_k_over']}, against σ: " + ", ".join(
        f"σ={s}: {_cell(f)} (bias² {f['bias_sq']:.2g})" for s, f in by.items()))
  for rank, by in scen["low_rank"].items():
    lines.append(f"\n{rank}, T/K = {rec['sweep_k_over']}: " + ", ".join(f"{n} {_cell(f)}" for n, f in by.items()))
  return "\n".join(lines)


def report(results):
  """The JSON's figures as markdown tables (what benchmarks/RESULTS.md shows)."""
  out = []
  for task, rec in results["tasks"].items():
    out.append(f"#### {task}: T = {rec['horizon']}, σ = {rec['sigma']}, N = {rec['particles']}, "
               f"{rec['repeats']} repeats; truth: {rec['truth']}\n")
    out.extend(_scenario_tables(task, rec, name, scen) + "\n" for name, scen in rec["scenarios"].items())
  return "\n".join(out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--quick", action="store_true", help="a smaller study (< 2 minutes on 2 CPU cores)")
  mode.add_argument("--tiny", action="store_true", help="influence balancing only, two T/K values (for tests)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument("--replot", metavar="JSON", help="only redraw the figures of an earlier run's JSON")
  parser.add_argument("--report", metavar="JSON", help="only print an earlier run's figures as markdown tables")
  args = parser.parse_args(argv)
  if args.report:
    with open(args.report) as f:
      return print(report(json.load(f)))
  preset = "tiny" if args.tiny else "quick" if args.quick else "full"
  suffix = "" if preset == "full" else f"_{preset}"
  os.makedirs(args.out, exist_ok=True)
  if args.replot:
    with open(args.replot) as f:
      return plot(json.load(f), args.out, suffix)
  if args.no_progress:
    def progress(x, **_):
      return x
  else:
    from tqdm import tqdm as progress
  start = time.perf_counter()
  results = {"preset": preset, "jax": jax.__version__, "backend": jax.default_backend(), "tasks": {}}
  for spec in PRESETS[preset]:
    results["tasks"][spec["task"]] = dict(run_study(spec, args.seed, progress),
                                          sweep_k_over=spec["sweep_k_over"])
  results["seconds"] = round(time.perf_counter() - start, 1)
  path = os.path.join(args.out, f"variance{suffix}.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  if preset != "tiny":
    plot(results, args.out, suffix)
  print(f"wrote {path} in {results['seconds']} s")
  return results


if __name__ == "__main__":
  main()
