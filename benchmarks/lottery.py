"""Lottery tickets in ES: do sparse trainable initialisations exist, and does the signal-to-noise rule find sparser
ones than magnitude pruning? (Lange & Sprekeler, "Lottery tickets in evolutionary optimization", ICML 2023.)

    python -m benchmarks.lottery [--quick] [--out DIR]

Tasks: an MLP classifier (64-32-10, tanh) on the shipped 8×8 digits (default), or with `--preset cartpole` an MLP
policy (4-16-16-2, tanh) on gymnax's CartPole-v1 (needs the rl extra; score: mean return of 16 episodes, gradient
descent not applicable). The supervised task: weights θ trained directly by SNES
(unrolled_es.snes: separable NES, per-coordinate σ adapted) on the minibatch cross-entropy (a one-step unrolled
system; the minibatch is drawn from the step key). For each criterion (SNR |μ|/σ, magnitude, random) and seed, the
iterative protocol of unrolled_es.population.pruning.lottery: train, prune 20% of the remaining weights (biases never), rewind
the survivors to the initialisation, repeat, from dense to ≥ 95% sparse. Reported: test accuracy against sparsity,
mean and min–max over seeds. Transfer: the tickets at the sparsities in `transfer_at` retrained, from the same
rewound initialisation, by full ES (ue.full_es with mask=, Adam) and by gradient descent (Adam on backprop, masked
gradient), against the dense model trained the same way. Writes benchmarks/results/lottery[_quick].json and .png.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import unrolled_es as ue
from benchmarks.common import preset_arguments, write_result
from unrolled_es_tasks.datasets import load_images
from unrolled_es.population import pruning

PRESETS = {
    "default": dict(seeds=3, rounds=14, generations=400, population=64, sigma=0.05, batch=256, transfer_at=(0.8, 0.95),
                    transfer_steps=400),
    "quick": dict(seeds=3, rounds=8, generations=150, population=32, sigma=0.05, batch=128, transfer_at=(0.8,),
                  transfer_steps=150),
    "tiny": dict(seeds=1, rounds=2, generations=5, population=8, sigma=0.05, batch=32, transfer_at=(0.2,),
                 transfer_steps=3),
    # CartPole-v1 with an MLP policy (4-16-16-2, tanh), no observation normalisation (ARS V1), return as score.
    "cartpole": dict(seeds=3, rounds=14, generations=80, population=16, sigma=0.3, batch=0, transfer_at=(0.8, 0.95),
                     transfer_steps=80, task="cartpole"),
    "cartpole_quick": dict(seeds=2, rounds=8, generations=40, population=16, sigma=0.3, batch=0, transfer_at=(0.8,),
                           transfer_steps=40, task="cartpole"),
}
CRITERIA = ("snr", "magnitude", "random")
HIDDEN = 32


def digits(batch):
  """(system, θ-initialiser, test accuracy, loss function) of the MLP classifier on the digits."""
  data = load_images()
  train_x, train_y = jnp.asarray(data.train_x), jnp.asarray(data.train_y)
  test_x, test_y = jnp.asarray(data.test_x), jnp.asarray(data.test_y)

  def logits(theta, x):
    return jnp.tanh(x @ theta["w1"] + theta["b1"]) @ theta["w2"] + theta["b2"]

  def loss(theta, x, y):
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits(theta, x)), y[:, None], 1))

  def step(theta, state, key):
    idx = jax.random.randint(key, (batch,), 0, train_x.shape[0])
    return state, loss(theta, train_x[idx], train_y[idx])

  def init_theta(seed):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"w1": jax.random.normal(k1, (64, HIDDEN)) / 8.0, "b1": jnp.zeros(HIDDEN),
            "w2": jax.random.normal(k2, (HIDDEN, 10)) / np.sqrt(HIDDEN), "b2": jnp.zeros(10)}

  accuracy = jax.jit(lambda theta: jnp.mean(jnp.argmax(logits(theta, test_x), -1) == test_y))
  system = ue.UnrolledSystem(lambda key, theta: jnp.zeros(()), step, 1)
  return system, init_theta, accuracy, (loss, train_x, train_y)


def cartpole(seed):
  """(system, θ-initialiser, score: mean return of 16 episodes, None) of CartPole-v1 with an MLP policy."""
  import unrolled_es_tasks as tasks
  task = tasks.get("control", env="CartPole-v1", policy="mlp", hidden=(16, 16), normalize_obs=False, seed=seed)
  score = jax.jit(lambda theta: task.evaluate(theta, jax.random.PRNGKey(77))["return"])
  return task.system, lambda s: tasks.get("control", env="CartPole-v1", policy="mlp", hidden=(16, 16),
                                          normalize_obs=False, seed=s).theta0, score, None


def snes_trainer(system, spec, accuracy, seed):
  """train(start, mask) -> (μ, σ, test accuracy) by SNES for `generations` generations."""
  def train(start, mask):
    es = ue.snes(system, population=spec["population"], sigma=spec["sigma"], mask=mask)
    generation = lambda carry, k: (es.step(k, *carry)[:2], None)   # carry: (μ, state)
    run = jax.jit(lambda theta, state, keys: jax.lax.scan(generation, (theta, state), keys)[0])
    keys = jax.random.split(jax.random.PRNGKey(1000 + seed), spec["generations"])
    mean, state = run(start, es.init(jax.random.PRNGKey(seed), start), keys)
    return mean, state.sigma, float(accuracy(mean))
  return train


def retrain_full_es(system, spec, accuracy, start, mask, seed):
  """The ticket (or the dense model) retrained by full ES with mask= and Adam."""
  est = ue.full_es(system, num_particles=spec["population"] // 2, sigma=spec["sigma"], mask=mask)
  opt = optax.adam(0.03)

  def body(carry, key):
    theta, opt_state, est_state = carry
    g, est_state, _ = est.estimate(key, theta, est_state)
    updates, opt_state = opt.update(g, opt_state)
    return (optax.apply_updates(theta, updates), opt_state, est_state), None
  keys = jax.random.split(jax.random.PRNGKey(2000 + seed), spec["transfer_steps"])
  carry = (start, opt.init(start), est.init(keys[0], start))
  (theta, _, _), _ = jax.jit(lambda c, k: jax.lax.scan(body, c, k))(carry, keys)
  return float(accuracy(theta))


def retrain_gradient_descent(loss_data, spec, accuracy, start, mask, seed):
  """The ticket retrained by Adam on backprop gradients, masked so pruned weights stay zero."""
  loss, train_x, train_y = loss_data
  opt = optax.adam(0.01)

  def body(carry, key):
    theta, opt_state = carry
    idx = jax.random.randint(key, (spec["batch"],), 0, train_x.shape[0])
    g = ue.masks.apply_mask(jax.grad(loss)(theta, train_x[idx], train_y[idx]), mask)
    updates, opt_state = opt.update(g, opt_state)
    return (optax.apply_updates(theta, updates), opt_state), None
  keys = jax.random.split(jax.random.PRNGKey(3000 + seed), spec["transfer_steps"])
  (theta, _), _ = jax.jit(lambda c, k: jax.lax.scan(body, c, k))((start, opt.init(start)), keys)
  return float(accuracy(theta))


def run(spec, log):
  if spec.get("task") == "cartpole":
    system, init_theta, accuracy, loss_data = cartpole(0)
  else:
    system, init_theta, accuracy, loss_data = digits(spec["batch"])
  curves, transfer = {c: [] for c in CRITERIA}, []
  for seed in range(spec["seeds"]):
    theta0 = init_theta(seed)
    for criterion in CRITERIA:
      t0 = time.perf_counter()
      rounds = pruning.lottery(snes_trainer(system, spec, accuracy, seed), theta0, criterion=criterion,
                               rounds=spec["rounds"], fraction=0.2, key=jax.random.PRNGKey(seed))
      curves[criterion].append([(r.sparsity, r.score) for r in rounds])
      log(f"seed {seed} {criterion}: " + " ".join(f"{s:.2f}:{a:.3f}" for s, a in curves[criterion][-1])
          + f" ({time.perf_counter() - t0:.0f} s)")
      for target in (0.0,) + tuple(spec["transfer_at"]):
        r = min(rounds, key=lambda r: abs(r.sparsity - target))
        if target == 0.0 and criterion != CRITERIA[0]:
          continue   # the dense model is the same for every criterion
        transfer.append({"seed": seed, "criterion": "dense" if target == 0.0 else criterion,
                         "sparsity": r.sparsity, "snes": r.score,
                         "full_es": retrain_full_es(system, spec, accuracy, r.start, r.mask, seed),
                         "gradient_descent": None if loss_data is None else retrain_gradient_descent(
                             loss_data, spec, accuracy, r.start, r.mask, seed)})
  return curves, transfer


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for criterion, runs in result["curves"].items():
    s = np.array([[p[0] for p in run] for run in runs])
    a = np.array([[p[1] for p in run] for run in runs])
    ax.plot(s.mean(0), a.mean(0), "-o", ms=3, label=criterion)
    ax.fill_between(s.mean(0), a.min(0), a.max(0), alpha=0.2)
  cart = result["settings"].get("task") == "cartpole"
  ax.set(xlabel="sparsity (fraction of weights pruned)", ylabel="return (16 episodes)" if cart else "test accuracy",
         title=("CartPole-v1 MLP policy" if cart else "digits MLP") + f" trained by SNES, {len(runs)} seeds "
         "(min–max band)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  args = preset_arguments(__doc__, PRESETS, argv)
  spec, start = PRESETS[args.preset], time.perf_counter()
  curves, transfer = run(spec, lambda m: print(m, flush=True))
  result = {"preset": args.preset, "settings": spec, "curves": curves, "transfer": transfer,
            "seconds": round(time.perf_counter() - start, 1), "jax": jax.__version__}
  write_result(result, args.out, "lottery", args.preset, plot)
  return result


if __name__ == "__main__":
  main()
