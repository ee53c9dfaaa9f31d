"""The composition matrix (tests/composition_table.py): every tested (estimator, noise, option) triple is either
unbiased against jax.grad through the whole unroll, or refused with an error that names both parts of the pair it
breaks; the table covers every registered estimator, and docs/composition.md is the table's own rendering.

Threshold: each unbiased cell gives S = 256 independent estimates (seeds) of P ≤ 30 numbers (θ's 15 coordinates
per window); a coordinate fails when |mean − exact| exceeds z* standard errors, plus a rounding allowance where the
estimate is bfloat16. z* is the Bonferroni bound for a family-wise false-alarm rate α = 1e-3 over every coordinate
of every cell: z* = Φ⁻¹(1 − α / (2M)), M = (number of cells) × 30, which is about 5.1. Bonferroni holds for
dependent coordinates too. Seeds are fixed, so the result is the same on every run; the bound says how unlikely a
correct estimator was to fail it when the seeds were chosen. Cells with no spread (autodiff on this deterministic
system) must match to float32 precision. The biased combinations this matrix was built to catch were off by 40
and 160 standard errors.
"""
import pathlib
import subprocess
import sys
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
import composition_table as table
from systems import A
from unrolled_es.core.system import episode_losses

K, T, SEEDS, PARTICLES, SIGMA = table.WINDOW, table.HORIZON, 256, 4, 0.1
CELLS = table.cells()
ALPHA = 1e-3
Z = NormalDist().inv_cdf(1 - ALPHA / (2 * 30 * sum(table.cell_status(*c)[0] == "unbiased" for c in CELLS)))
X = jnp.cos(jnp.arange(4.0) + 1.0)
TARGETS = (jnp.array([1.0, 2.0, -1.0]), jnp.array([-0.5, 1.0, 0.5]))
THETA = {"W": 0.1 * jnp.arange(12.0).reshape(4, 3) / 12, "b": jnp.array([0.1, 0.0, -0.1])}
MASK = {"W": np.array([[True] * 3, [False] * 3, [True, False, True], [True] * 3]), "b": np.array([True, False, True])}
SCALE = {"W": np.linspace(0.3, 2.0, 12).reshape(4, 3), "b": np.array([0.5, 1.0, 2.0])}
SCHEDULE = ue.horizons.log_uniform(2, 5)


def quadratic_system(y):
  """s_{t+1} = A s_t + W x + b, l_t = ½‖s_{t+1} − y‖², s_0 = 0: quadratic in θ = {W, b}, with memory, and an init
  that does not depend on θ (so UORO is unbiased too)."""
  def step(theta, s, key):
    s = A @ s + ue.linear(X, theta["W"]) + theta["b"]
    return s, 0.5 * jnp.sum((s - y) ** 2)
  return ue.UnrolledSystem(lambda key, theta: jnp.zeros(3), step, T)


def make_noise(name):
  if name.startswith("orthogonal("):
    return ue.orthogonal(make_noise(name[len("orthogonal("):-1]))
  return {"gaussian": lambda: ue.gaussian(), "gaussian(scale)": lambda: ue.gaussian(scale=SCALE),
          "gaussian(factored)": lambda: ue.gaussian(factored=True), "low_rank(2)": lambda: ue.low_rank(2),
          "low_rank(2, factored)": lambda: ue.low_rank(2, factored=True)}[name]()


def settings(est, option, diagnostics=False):
  """The constructor's keyword arguments for this estimator and option."""
  kw = {"num_particles": PARTICLES}
  if est == "int_es":
    return kw
  if table.ESTIMATORS[est].takes_noise:
    kw["sigma"] = SIGMA
  if table.ESTIMATORS[est].target != "episode":
    kw.update(truncation_length=K, stagger=False)
  if est == "generalized_pes":
    kw["resample_every"] = 2 * K
  if diagnostics:
    kw["diagnostics"] = True
  extra = {"mask": {"mask": MASK}, "horizons": {"horizons": SCHEDULE}, "mesh": {"mesh": ue.particle_mesh()}}
  return dict(kw, **extra.get(option, {}))


def construct(est, noise, option, system, diagnostics=False):
  ctor, kw = ue.registered()[est], settings(est, option, diagnostics)
  if noise == "guided":
    return ue.guided(ctor, system, unbiased=True, alpha=0.5, **kw)
  return ctor(system, **kw) if noise is None else ctor(system, noise=make_noise(noise), **kw)


def partner(est):
  """The other part of a hybrid: an exact autodiff part for an ES estimator, an ES part for an autodiff one."""
  episode = table.ESTIMATORS[est].target == "episode"
  if table.ESTIMATORS[est].takes_noise:
    return "full_bptt" if episode else "truncated_bptt"
  return "full_es" if episode else "es_single"


def build(cell):
  """(the estimator of this cell, θ to run it at)."""
  est, noise, option = cell
  theta = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), THETA) if option == "bfloat16" else THETA
  system = quadratic_system(TARGETS[0])
  if option == "multi_task":
    return ue.multi_task([construct(est, noise, option, quadratic_system(y)) for y in TARGETS], [1.0, 3.0]), theta
  if option == "clip_gradient":
    return ue.clip_gradient(construct(est, noise, option, system), max_norm=1e6), theta
  if option == "hybrid":
    parts = [construct(est, noise, option, system, True), construct(partner(est), None, option, system, True)]
    return ue.hybrid(*(parts if table.ESTIMATORS[est].takes_noise else parts[::-1])), theta
  return construct(est, noise, option, system), theta


def windows(cell):
  est, _, option = cell
  return 2 if table.ESTIMATORS[est].target == "windows" and option != "hybrid" else 1


def run(est, theta, num_windows):
  """[SEEDS, windows] estimates, and the clip flags where the estimator reports them."""
  def one(key):
    def body(state, w):
      g, state, info = est.estimate(jax.random.fold_in(key, w), theta, state)
      return state, (g, info.get("grad_clipped", jnp.bool_(False)))
    return jax.lax.scan(body, est.init(jax.random.fold_in(key, 10**6), theta), jnp.arange(num_windows))[1]
  return jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(1234), SEEDS))


def per_step(theta, y):
  """[T] pytree of ∂l_t/∂θ through the whole episode."""
  return jax.jacrev(lambda th: episode_losses(quadratic_system(y), th, jax.random.PRNGKey(0)))(theta)


def horizon_windows(g):
  """The exact [2] window gradients under SCHEDULE: the first window starts an episode of drawn length T' and
  weights its steps E[T]/T'; the second holds steps 2–3 (T' = 4), step 2 and a new episode's step 0 (T' = 3), or a
  new episode's steps 0–1 (T' = 2), each weighted by E[T] over its own episode's length."""
  values, probs = SCHEDULE.pmf()
  p = dict(zip(values.tolist(), probs.tolist()))
  mean, inv = SCHEDULE.mean, sum(q / t for t, q in p.items())
  first = mean * inv * (g[0] + g[1]) / 2
  second = (p[4] * mean / 4 * (g[2] + g[3]) / 2 + p[3] * (mean / 3 * g[2] + mean * inv * g[0]) / 2
            + p[2] * mean * inv * (g[0] + g[1]) / 2)
  return jnp.stack([first, second])


def exact_one(cell, theta, y):
  est, _, option = cell
  g = per_step(theta, y)
  target = table.ESTIMATORS[est].target
  if target == "episode":
    return jax.tree_util.tree_map(lambda s: jnp.mean(s, 0)[None], g)
  if option == "horizons":
    return jax.tree_util.tree_map(lambda s: horizon_windows(s)[:windows(cell)], g)
  return jax.tree_util.tree_map(lambda s: s.reshape((T // K, K) + s.shape[1:]).mean(1)[:windows(cell)], g)


def exact(cell):
  """The target [windows, ...] of this cell's estimates."""
  theta = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), THETA) \
      if cell[2] == "bfloat16" else THETA
  if cell[2] == "multi_task":
    out = jax.tree_util.tree_map(lambda a, b: (a + 3 * b) / 4, *[exact_one(cell, theta, y) for y in TARGETS])
  else:
    out = exact_one(cell, theta, TARGETS[0])
  if cell[2] == "mask":
    out = jax.tree_util.tree_map(lambda e, m: e * m, out, MASK)
  return out


def assert_unbiased(samples, target, low_precision, what):
  for s, e in zip(jax.tree_util.tree_leaves(samples), jax.tree_util.tree_leaves(target)):
    s, e = np.asarray(s, np.float64), np.asarray(e, np.float64)
    assert s.shape[1:] == e.shape, (what, s.shape, e.shape)
    mean, se = s.mean(0), s.std(0, ddof=1) / np.sqrt(len(s))
    allowance = (2.0 ** -8 if low_precision else 1e-5) * (np.abs(e) + np.abs(mean)) + 1e-6
    excess = np.abs(mean - e) - Z * se - allowance
    assert np.all(excess <= 0), f"{what}: |mean − exact| {np.abs(mean - e)} vs {Z:.2f} SE {Z * se}"


def test_every_registered_estimator_is_in_the_table():
  assert set(ue.registered()) == set(table.ESTIMATORS)
  assert all(ue.registered()[alias] is ue.registered()[name] for alias, name in table.ALIASES.items())


def test_the_docs_page_is_the_tables_rendering():
  root = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, str(root / "docs" / "composition_matrix.py")], capture_output=True,
                       text=True, check=True).stdout
  assert (root / "docs" / "composition.md").read_text() == out, "re-run python docs/composition_matrix.py"


@pytest.mark.parametrize("cell", [c for c in CELLS if table.cell_status(*c)[0] == "refused"], ids=table.cell_id)
def test_refused(cell):
  """Refused when built; int_es only learns that θ is not int8 when it first sees θ."""
  _, refusal = table.cell_status(*cell)
  with pytest.raises((ValueError, TypeError)) as caught:
    est, theta = build(cell)
    if cell[0] in table.REFUSED_AT_FIRST_CALL:
      est.init(jax.random.PRNGKey(0), theta)
  message = str(caught.value).lower()
  assert all(word.lower() in message for word in refusal.names), (refusal.names, str(caught.value))


@pytest.mark.parametrize("cell", [c for c in CELLS if table.cell_status(*c)[0] != "refused"], ids=table.cell_id)
def test_unbiased(cell):
  est, theta = build(cell)
  grads, clipped = run(est, theta, windows(cell))
  assert not np.any(np.asarray(clipped))
  finite = all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree_util.tree_leaves(grads))
  assert finite
  if table.cell_status(*cell)[0] == "biased":   # biased by design: it runs and is finite, nothing more is claimed
    return
  assert all(g.dtype == x.dtype for g, x in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(theta)))
  assert_unbiased(grads, exact(cell), cell[2] == "bfloat16", table.cell_id(cell))
