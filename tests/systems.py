"""Small deterministic test systems with exact answers, and statistical assertions."""
import jax
import jax.numpy as jnp
import numpy as np

import unrolled_es as ue
from unrolled_es.core.system import episode_losses

A = jnp.array([[0.8, 0.3, 0.0], [0.0, 0.7, 0.2], [0.1, 0.0, 0.6]])
U = jnp.array([1.0, -0.5, 0.3])
Y = jnp.array([1.0, 2.0, -1.0])


def linear_system(horizon):
  """s_{t+1} = A s_t + w + b·u, l_t = ½‖s_{t+1} − y‖²; s_0 = ½w. Loss quadratic in θ = {w, b}, with memory."""
  def init(key, theta):
    return 0.5 * theta["w"]

  def step(theta, s, key):
    s = A @ s + theta["w"] + theta["b"] * U
    return s, 0.5 * jnp.sum((s - Y) ** 2)
  return ue.UnrolledSystem(init, step, horizon)


THETA = {"w": jnp.array([0.2, -0.1, 0.4]), "b": jnp.array(0.3)}


def per_step_gradients(system, theta):
  """[T] pytree of ∂l_t/∂θ through the whole history of the episode (the exact answer per step)."""
  return jax.jacrev(lambda th: episode_losses(system, th, jax.random.PRNGKey(0)))(theta)


def exact_window_gradients(system, theta, k, num_windows):
  """Exact gradient of each window's mean loss when every particle starts at step 0 (no stagger)."""
  per_step = per_step_gradients(system, theta)
  t = (jnp.arange(num_windows * k) % system.horizon).reshape(num_windows, k)
  return jax.tree_util.tree_map(lambda g: jnp.mean(g[t], axis=1), per_step)


def run_windows(est, theta, num_windows, seeds):
  """Window-by-window estimates for `seeds` independent runs: pytree with leading [seeds, windows]."""
  def one(key):
    state = est.init(jax.random.fold_in(key, 10**6), theta)

    def body(state, w):
      g, state, info = est.estimate(jax.random.fold_in(key, w), theta, state)
      return state, (g, info)
    return jax.lax.scan(body, state, jnp.arange(num_windows))[1]
  return jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(1234), seeds))


def assert_unbiased(samples, exact, n_se=4.0, what=""):
  """Mean over the leading axis within n_se standard errors of exact, coordinate by coordinate."""
  for s, e in zip(jax.tree_util.tree_leaves(samples), jax.tree_util.tree_leaves(exact)):
    s, e = np.asarray(s, np.float64), np.asarray(e, np.float64)
    mean, se = s.mean(0), s.std(0, ddof=1) / np.sqrt(len(s))
    err = np.abs(mean - e)
    bound = n_se * se + 1e-5 * (1 + np.abs(e))
    assert np.all(err <= bound), f"{what}: |mean - exact| = {err} > {n_se} SE = {bound}; exact {e}"


def distance_in_se(samples, target):
  """max over coordinates of |mean − target| / SE."""
  out = 0.0
  for s, e in zip(jax.tree_util.tree_leaves(samples), jax.tree_util.tree_leaves(target)):
    s, e = np.asarray(s, np.float64), np.asarray(e, np.float64)
    out = max(out, float(np.max(np.abs(s.mean(0) - e) / (s.std(0, ddof=1) / np.sqrt(len(s)) + 1e-12))))
  return out


def matrix_system(horizon):
  """s_{t+1} = A s_t + W x_t + b, l_t = ½‖s_{t+1} − y‖²: a matrix leaf for low-rank noise, still quadratic in θ.

  W is applied with `unrolled_es.linear`, so the system also accepts factored low-rank perturbations.
  """
  def init(key, theta):
    return jnp.zeros(3)

  def step(theta, s, key):
    x = jnp.cos(jnp.arange(4.0) + 1.0)  # fixed input
    s = A @ s + ue.linear(x, theta["W"]) + theta["b"]
    return s, 0.5 * jnp.sum((s - Y) ** 2)
  return ue.UnrolledSystem(init, step, horizon)


MATRIX_THETA = {"W": 0.1 * jnp.arange(12.0).reshape(4, 3) / 12, "b": jnp.array([0.1, 0.0, -0.1])}


def regression_loss_after_es(model_loss, theta, steps=40):
  """(start, end) loss of a one-step system whose loss is `model_loss(theta)`, after `steps` outer steps of rank-1
  factored ES-Single (32 particles, σ 0.05) with Adam 0.03: training a model the library did not write."""
  import optax
  system = ue.UnrolledSystem(lambda key, th: jnp.zeros(()), lambda th, s, key: (s, model_loss(th)), horizon=1)
  est = ue.es_single(system, num_particles=32, sigma=0.05, truncation_length=1, noise=ue.low_rank(1, factored=True))
  opt = optax.adam(0.03)

  @jax.jit
  def outer(theta, opt_state, est_state, key):
    g, est_state, _ = est.estimate(key, theta, est_state)
    updates, opt_state = opt.update(g, opt_state)
    return optax.apply_updates(theta, updates), opt_state, est_state

  loss = lambda th: float(ue.evaluate(system, th, jax.random.PRNGKey(0)))
  start, opt_state, est_state = loss(theta), opt.init(theta), est.init(jax.random.PRNGKey(1), theta)
  for i in range(steps):
    theta, opt_state, est_state = outer(theta, opt_state, est_state, jax.random.PRNGKey(i + 2))
  return start, loss(theta)
