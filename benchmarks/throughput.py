"""Throughput of the ES estimators against the bare batched unroll of the same model, and against evosax.

    python -m benchmarks.throughput [--quick | --gpu | --preset NAME] [--out DIR]

Model: a recurrent layer h ← tanh(h W + x_t U) on `rows` rows per member, with a readout loss
mean((h v − y)²); θ = {W (w×w), U (d×w), v (w)}; W and U go through `unrolled_es.linear`, so factored
low-rank noise applies as hW + σ/√r·(ha)bᵀ (EGGROLL, Sarkar et al. 2025). T = 10·K, K = 10.

For every width w and particle count N, interleaved repeats (one call of each configuration in turn, blocking
on the result; compiled beforehand, median reported; "× bare" is the median over rounds of the per-round ratio)
of these, each compiled with its state donated and threaded from call to call, as a training loop runs it:
  * bare:  a vmapped K-step scan of the same step over N·M members (M = 2 antithetic members) with the
           unperturbed θ shared: the ceiling, since hW is then one GEMM for all members. Its step draws no random
           numbers (the inputs x_t come from a fixed table indexed by the step counter in the state), so every
           key and noise cost of an estimate shows in the ratio;
  * each estimator (es_single, pes, truncated_es) × noise (gaussian, gaussian factored, low_rank(1) dense,
    low_rank(1) factored, low_rank(4) factored): one `estimate` call (N·M·K member-steps, like bare);
  * evosax's NoiseReuseES and PersistentES (benchmarks/evosax_peer.py) with the same N pairs, σ and K.
Reported per configuration: seconds per estimate, particle-steps/s (N·K/t) and member-steps/s, the ratio to
bare, and memory per particle: bytes of estimator state (every state leaf with a leading N axis, / N) and of
transient noise (the pre- and post-reset draws, plus the per-member perturbed θ where it is materialised).
The --gpu preset adds two 100,000-particle runs of ES-Single with factored rank-1 noise, on this model and on
the LSTM task `unrolled_es_tasks.rnn_char` (`--preset big` runs only those, in float32, with their peak memory).
`--preset factored` runs only the factored noises (rank 1 and Gaussian) of the three estimators.
`--preset draws` times only one window's Gaussian draw for the population, dense against under a 90%-sparse mask
of the matrices (the `gaussian_sparse90` rows time whole estimates under that mask). Writes
benchmarks/results/throughput_<preset>.json and .png and prints a markdown table.
"""
import argparse
import json
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

import unrolled_es as ue
from unrolled_es.noise import masks
from benchmarks.common import median_ratio, median_time, paired_rounds, threaded_bare, threaded_estimate

ESTIMATORS = ("es_single", "pes", "truncated_es")
NOISES = {"gaussian": lambda: ue.gaussian(), "gaussian_factored": lambda: ue.gaussian(factored=True),
          "low_rank1_dense": lambda: ue.low_rank(1),
          "low_rank1_factored": lambda: ue.low_rank(1, factored=True),
          "low_rank4_factored": lambda: ue.low_rank(4, factored=True),
          "gaussian_sparse90": lambda: ue.gaussian()}
# Noises run under a random mask of this density on the matrices W and U (sparse ES; the draw is compacted to the
# live coordinates): the row against plain "gaussian" is what a 90%-sparse mask costs or saves.
SPARSE = {"gaussian_sparse90": 0.1}
PEERS = {"noise_reuse_es": "es_single", "persistent_es": "pes"}
PRESETS = {
    "quick": dict(widths=(64,), particles=(64, 1024), rows=4, inputs=16, k=10, reps=5, dtype="float32",
                  peers=True, big=None, noises=("gaussian", "gaussian_factored", "low_rank1_factored",
                                                "gaussian_sparse90")),
    "default": dict(widths=(64, 256), particles=(64, 1024), rows=4, inputs=16, k=10, reps=7, dtype="float32",
                    peers=True, big=None),
    "gpu": dict(widths=(1024,), particles=(1024,), rows=16, inputs=64, k=10, reps=11, dtype="bfloat16",
                peers=True, big=(dict(model="rnn", width=256, particles=100_000, rows=4),
                                 dict(model="rnn_char", hidden=5, particles=100_000))),
    # Only the two 100,000-particle runs, in float32, on whatever device there is (a CPU takes minutes).
    "big": dict(widths=(), particles=(), rows=4, inputs=16, k=10, reps=3, dtype="float32", peers=False,
                big=(dict(model="rnn", width=256, particles=100_000, rows=4),
                     dict(model="rnn_char", hidden=5, particles=100_000))),
    # The --gpu code path (bf16, the big runs) at sizes a CPU finishes in seconds; and a tiny run for tests.
    "gpu_smoke": dict(widths=(32,), particles=(16,), rows=2, inputs=8, k=10, reps=2, dtype="bfloat16",
                      peers=True, big=(dict(model="rnn", width=16, particles=2000, rows=1),
                                       dict(model="rnn_char", hidden=5, particles=2000))),
    # The factored paths only (rank-1 and Gaussian, ES-Single, PES and truncated ES) beside the bare unroll: the
    # rows the issue about speed at the limit follows, in a few minutes.
    "factored": dict(widths=(64, 256), particles=(64, 1024), rows=4, inputs=16, k=10, reps=9, dtype="float32",
                     peers=False, big=None, noises=("low_rank1_factored", "gaussian_factored")),
    # Only the noise draw of one window's population, dense against a 90%-sparse mask (compacted draws).
    "draws": dict(widths=(64, 256), particles=(64, 1024), rows=4, inputs=16, k=10, reps=15, dtype="float32",
                  peers=False, big=None, draws_only=True),
    "tiny": dict(widths=(8,), particles=(4,), rows=1, inputs=4, k=2, reps=1, dtype="float32", peers=False,
                 big=(dict(model="rnn", width=8, particles=16, rows=1), dict(model="rnn_char", hidden=2, particles=8)),
                 estimators=("es_single",), noises=("low_rank1_factored",)),
}
SIGMA = 0.01


def rnn_system(width, rows, inputs, k, dtype):
  """The benchmark model as an UnrolledSystem, its θ, and its step (for the bare unroll)."""
  horizon, period = 10 * k, 7
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.standard_normal((period, rows, inputs)), dtype)
  target = jnp.asarray(rng.standard_normal((rows,)), dtype)
  theta = {"W": jnp.asarray(rng.standard_normal((width, width)) / np.sqrt(width), dtype),
           "U": jnp.asarray(rng.standard_normal((inputs, width)) / np.sqrt(inputs), dtype),
           "v": jnp.asarray(rng.standard_normal((width,)) / np.sqrt(width), dtype)}

  def init(key, theta):
    return jnp.zeros((rows, width), dtype), jnp.zeros((), jnp.int32)

  def step(theta, state, key):
    h, t = state
    # The state keeps the model's dtype even when θ arrives in another one (evosax hands float32 θ).
    h = jnp.tanh(ue.linear(h, theta["W"]) + ue.linear(xs[t % period], theta["U"])).astype(dtype)
    err = (h @ theta["v"] - target).astype(jnp.float32)
    return (h, t + 1), jnp.mean(err ** 2)

  return ue.UnrolledSystem(init, step, horizon), theta


def bare_unroll(system, members, k, donate=False):
  """A vmapped K-step scan over `members` members with the unperturbed θ: the estimate's ceiling. With `donate`,
  the states' buffers are donated (thread the returned final states into the next call, as estimates do)."""
  def run(theta, states, key):
    def one(state):
      return jax.lax.scan(lambda s, t: system.step(theta, s, key), state, jnp.arange(k))
    final, losses = jax.vmap(one)(states)
    return final, jnp.mean(losses)
  states = jax.vmap(system.init, (0, None))(jax.random.split(jax.random.PRNGKey(0), members), None)
  return jax.jit(run, donate_argnums=(1,) if donate else ()), states


def nbytes(tree):
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


def state_bytes_per_particle(state_shapes, n):
  """Bytes of the estimator state that scale with N, per particle: leaves with a leading axis of N, or of 2N
  (evosax keeps its members, both signs, along one axis)."""
  leaves = [x for x in jax.tree_util.tree_leaves(state_shapes) if x.shape and x.shape[0] in (n, 2 * n)]
  return nbytes(leaves) / n


def noise_bytes_per_particle(noise, theta, members):
  """Transient noise per particle: two draws (before / after a reset) and, for every leaf that `perturb`
  materialises as θ + σε, one perturbed copy per member (a PerturbedMatrix adds nothing: it holds the shared W
  and the draw itself)."""
  eps = jax.eval_shape(noise.sample, jax.random.PRNGKey(0), theta)
  perturbed = jax.eval_shape(lambda e: noise.perturb(theta, e, 0.1), eps)
  private = [p for p in jax.tree_util.tree_leaves(perturbed, is_leaf=lambda p: isinstance(p, ue.PerturbedMatrix))
             if not isinstance(p, ue.PerturbedMatrix)]
  return 2 * nbytes(eps) + members * nbytes(private)


def sparse_mask(theta, density, seed=0):
  """Matrices keep a random `density` of their entries; vectors are kept whole."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda x: rng.random(x.shape) < density if x.ndim == 2 else np.ones(x.shape, bool),
                                theta)


def draw_costs(spec, log):
  """Median ms of one population's Gaussian draw (N keys, vmapped, jitted), dense against under a 90%-sparse mask
  of the matrices (only live coordinates drawn), for each width and N of `spec`."""
  out = []
  for width in spec["widths"]:
    _, theta = rnn_system(width, spec["rows"], spec["inputs"], spec["k"], spec["dtype"])
    for n in spec["particles"]:
      keys = jax.random.split(jax.random.PRNGKey(0), n)
      times = {}
      sparse = masks.masked(ue.gaussian(), sparse_mask(theta, SPARSE["gaussian_sparse90"]))
      for label, noise in (("dense", ue.gaussian()), ("sparse90", sparse)):
        draw = jax.jit(lambda k, noise=noise: sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(
            jax.vmap(noise.sample, (0, None))(k, theta))))
        times[label] = median_time(draw, keys, repeats=spec["reps"]) * 1e3
      out.append({"width": width, "particles": n, "dense_ms": times["dense"], "sparse90_ms": times["sparse90"],
                  "sparse_over_dense": times["sparse90"] / times["dense"]})
      log(f"draw, width {width}, N {n}: dense {times['dense']:.2f} ms, 90% sparse {times['sparse90']:.2f} ms "
          f"({times['sparse90'] / times['dense']:.2f}x)")
  return out


def make(name, noise, system, n, k, theta=None):
  if name in PEERS:
    from benchmarks.evosax_peer import evosax_estimator
    return evosax_estimator(name, system, num_particles=n, sigma=SIGMA, truncation_length=k)
  # Staggered, as estimators run by default: in every window about N·K/T particles reset (new draws and new
  # episodes' states for those), which the estimate pays for.
  mask = sparse_mask(theta, SPARSE[noise]) if noise in SPARSE else None
  return getattr(ue, name)(system, num_particles=n, sigma=SIGMA, truncation_length=k, noise=NOISES[noise](),
                           stagger=True, mask=mask)


def measure_group(width, n, spec, log):
  """Every configuration at one (width, N): compiled, then timed with interleaved repeats."""
  system, theta = rnn_system(width, spec["rows"], spec["inputs"], spec["k"], spec["dtype"])
  k, key = spec["k"], jax.random.PRNGKey(1)
  configs = [(e, nz) for e in spec.get("estimators", ESTIMATORS) for nz in spec.get("noises", NOISES)]
  if spec["peers"]:
    configs += [(peer, "gaussian") for peer in PEERS]
  runners, rows = {}, {}
  bare, states = bare_unroll(system, 2 * n, k, donate=True)
  runners["bare"] = threaded_bare(bare, theta, states, key)
  jax.block_until_ready(runners["bare"]())
  for name, noise in configs:
    try:
      est = make(name, noise, system, n, k, theta)
      # The state is donated, as a training loop would (nothing copies the particles between calls).
      init, estimate = jax.jit(est.init), jax.jit(est.estimate, donate_argnums=(2,))
      shapes = jax.eval_shape(init, key, theta)
      holder = {"state": jax.block_until_ready(init(key, theta))}
      for _ in range(2):   # twice: a state whose dtypes change after one call (evosax with bf16 θ) recompiles once
        _, holder["state"], _ = jax.block_until_ready(estimate(key, theta, holder["state"]))

      def call(estimate=estimate, holder=holder):
        g, holder["state"], info = estimate(key, theta, holder["state"])
        return g, info
      runners[(name, noise)] = call
      rows[(name, noise)] = {"state_bytes_per_particle": state_bytes_per_particle(shapes, n)}
      if name not in PEERS:
        rows[(name, noise)]["noise_bytes_per_particle"] = noise_bytes_per_particle(NOISES[noise](), theta, 2)
    except Exception as e:   # a failing configuration (e.g. out of memory) is reported, not fatal
      rows[(name, noise)] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
      log(f"  {name}/{noise}: {rows[(name, noise)]['error']}")
  times = {c: [] for c in runners}
  for _ in range(spec["reps"]):
    for c, run in runners.items():
      t0 = time.perf_counter()
      jax.block_until_ready(run())
      times[c].append(time.perf_counter() - t0)
  t_bare = float(np.median(times["bare"]))
  out = [dict(width=width, particles=n, estimator="bare", noise="none", seconds=t_bare, ratio_to_bare=1.0,
              particle_steps_per_s=n * k / t_bare, member_steps_per_s=2 * n * k / t_bare)]
  for (name, noise), extra in rows.items():
    row = dict(width=width, particles=n, estimator=name, noise=noise, **extra)
    if (name, noise) in times:
      t = float(np.median(times[(name, noise)]))
      row.update(seconds=t, ratio_to_bare=median_ratio(times, (name, noise), "bare"), particle_steps_per_s=n * k / t,
                 member_steps_per_s=2 * n * k / t)
      if name in PEERS:   # the same Gaussian noise: formed θ ± σε (any system), and applied in factors
        for noise_name, field in (("gaussian", "ours_over_peer"), ("gaussian_factored", "factored_over_peer")):
          if (PEERS[name], noise_name) in times:
            row[field] = float(np.median(times[(PEERS[name], noise_name)])) / t
    out.append(row)
  return out


def big_model(b, spec):
  """(system, θ) of a big run: the benchmark's recurrent layer, or the LSTM task `unrolled_es_tasks.rnn_char`."""
  if b["model"] == "rnn":
    return rnn_system(b["width"], b["rows"], spec["inputs"], spec["k"], spec["dtype"])
  import unrolled_es_tasks as tasks
  task = tasks.get("rnn_char", horizon=10 * spec["k"], hidden=b["hidden"])
  return task.system, jax.tree_util.tree_map(lambda x: x.astype(spec["dtype"]), task.theta0)


def peak_memory():
  """Peak bytes of the default device when it reports them (GPU), else the process's peak resident set."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return {"device_peak_bytes": int(stats["peak_bytes_in_use"])}
  import resource
  return {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def big_run(spec, b, log):
  """One large ES-Single estimate with factored rank-1 noise beside its bare unroll."""
  k, n, key = spec["k"], b["particles"], jax.random.PRNGKey(2)
  system, theta = big_model(b, spec)
  est = ue.es_single(system, num_particles=n, sigma=SIGMA, truncation_length=k,
                     noise=ue.low_rank(1, factored=True), stagger=False)
  init, estimate = jax.jit(est.init), jax.jit(est.estimate, donate_argnums=(2,))
  state = jax.block_until_ready(init(key, theta))
  bare, states = bare_unroll(system, 2 * n, k, donate=True)
  call, holder = threaded_estimate(estimate, key, theta, state)
  times = paired_rounds({"estimate": call, "bare": threaded_bare(bare, theta, states, key)},
                        max(3, spec["reps"] // 2))
  g, info = call()
  state = holder["state"]
  t, tb = float(np.median(times["estimate"])), float(np.median(times["bare"]))
  finite = bool(all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree_util.tree_leaves(g)))
  log(f"  big run: {b}: {t * 1e3:.2f} ms per estimate, {median_ratio(times, 'estimate', 'bare'):.2f}x bare, "
      f"{int(info['num_valid'])} valid")
  return dict(b, estimator="es_single", noise="low_rank1_factored", seconds=t, bare_seconds=tb,
              ratio_to_bare=median_ratio(times, "estimate", "bare"), particle_steps_per_s=n * k / t,
              member_steps_per_s=2 * n * k / t,
              gradient_finite=finite, num_valid=int(info["num_valid"]),
              state_bytes_per_particle=state_bytes_per_particle(state, n), **peak_memory())


def machine():
  try:
    return subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines()[:14]
  except (OSError, subprocess.SubprocessError):
    return [platform.processor() or platform.machine()]


def table(rows):
  head = ("| width | N | estimator | noise | ms / estimate | particle-steps/s | × bare | ours / evosax (formed / factored) "
          "| state B/particle | noise B/particle |\n" + "|---" * 10 + "|")
  lines = [head]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['width']} | {r['particles']} | {r['estimator']} | {r['noise']} | error: "
                   f"{r['error'][:60]} | | | | | |")
      continue
    peer = " / ".join(f"{r[f]:.2f}" for f in ("ours_over_peer", "factored_over_peer") if f in r)
    lines.append(f"| {r['width']} | {r['particles']} | {r['estimator']} | {r['noise']} | {r['seconds'] * 1e3:.2f} "
                 f"| {r['particle_steps_per_s']:.3g} | {r['ratio_to_bare']:.2f} | {peer} "
                 f"| {r.get('state_bytes_per_particle', 0):.0f} | {r.get('noise_bytes_per_particle', 0):.0f} |")
  return "\n".join(lines)


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  widths = sorted({r["width"] for r in result["rows"]})
  fig, axes = plt.subplots(1, len(widths), figsize=(6 * len(widths), 4.5), squeeze=False)
  for ax, w in zip(axes[0], widths):
    rows = [r for r in result["rows"] if r["width"] == w and "seconds" in r]
    for label in sorted({(r["estimator"], r["noise"]) for r in rows}):
      pts = sorted((r["particles"], r["particle_steps_per_s"]) for r in rows if (r["estimator"], r["noise"]) == label)
      style = "k-" if label[0] == "bare" else ("--" if label[0] in PEERS else "-")
      ax.plot(*zip(*pts), style, marker="o", label="bare" if label[0] == "bare" else "/".join(label))
    ax.set(xscale="log", yscale="log", xlabel="particles N", ylabel="particle-steps / s", title=f"width {w}")
    ax.legend(fontsize=6)
  fig.suptitle(f"throughput ({result['preset']}, {result['backend']}, {result['settings']['dtype']})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--quick", action="store_const", dest="preset", const="quick")
  group.add_argument("--gpu", action="store_const", dest="preset", const="gpu")
  group.add_argument("--preset", choices=sorted(PRESETS))
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  preset = args.preset or "default"
  spec = PRESETS[preset]
  if preset == "gpu" and jax.default_backend() == "cpu":
    print("warning: --gpu on a CPU backend; sizes are meant for one H200")
  start = time.perf_counter()
  log = lambda msg: print(msg, flush=True)
  rows = []
  for width in () if spec.get("draws_only") else spec["widths"]:
    for n in spec["particles"]:
      log(f"width {width}, N {n}")
      rows += measure_group(width, n, spec, log)
  result = {"preset": preset, "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "machine": machine(),
            "settings": {k: v for k, v in spec.items() if k != "big"} | {"sigma": SIGMA, "horizon": 10 * spec["k"]},
            "rows": rows, "big": [big_run(spec, b, log) for b in spec["big"]] if spec.get("big") else None,
            "draws": draw_costs(spec, log) if spec.get("draws_only") else None}
  result["seconds"] = round(time.perf_counter() - start, 1)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, f"throughput_{preset}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  if rows:
    plot(result, path[:-5] + ".png")
    print(table(rows))
  print(f"wrote {path} in {result['seconds']} s")
  return result


if __name__ == "__main__":
  main()
