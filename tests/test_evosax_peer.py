"""The evosax peer: its PES and NRES gradients are unbiased for the exact gradient on a linear-quadratic system."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("evosax")

from benchmarks.evosax_peer import evosax_estimator  # noqa: E402
from unrolled_es.core.system import UnrolledSystem, episode_losses  # noqa: E402

T, K, A = 20, 5, 0.9
THETA = jnp.array([0.3, -0.2, 0.1])


def _x(t):
  t = jnp.asarray(t, jnp.float32)
  return jnp.stack([jnp.sin(t), jnp.cos(0.7 * t), jnp.ones_like(t)])


def _system():
  """s_{t+1} = a s_t + θ·x_t, loss (s_{t+1} - 1)²; s_0 = 1 + θ_0 depends on θ, so resets matter too."""

  def init(key, theta):
    return (1.0 + theta[0], jnp.zeros((), jnp.int32))

  def step(theta, state, key):
    s, t = state
    s = A * s + jnp.dot(theta, _x(t))
    return (s, t + 1), (s - 1.0) ** 2

  return UnrolledSystem(init, step, T)


def _window_means(losses):
  return jnp.mean(losses.reshape(T // K, K), axis=1)


def _exact(system, theta):
  """Row w: ∇θ of window w's mean loss through the whole episode (what PES and NRES are unbiased for)."""
  return jax.jacrev(lambda th: _window_means(episode_losses(system, th, jax.random.PRNGKey(0))))(theta)


def _truncated(system, theta):
  """Row w: ∇θ of window w's mean loss with its starting state held fixed (a truncated estimate's target)."""

  def window_loss(th, w):
    def body(state, t):
      state = jax.lax.cond(t == w * K, lambda s: jax.tree_util.tree_map(jax.lax.stop_gradient, s),
                           lambda s: s, state)
      return system.step(th, state, None)
    _, losses = jax.lax.scan(body, system.init(None, th), jnp.arange(T))
    return _window_means(losses)[w]

  return jax.vmap(jax.grad(window_loss), in_axes=(None, 0))(theta, jnp.arange(T // K))


@pytest.mark.parametrize("kind", ["persistent_es", "noise_reuse_es"])
def test_unbiased_for_exact_window_gradient(kind):
  system, pairs, repeats, windows = _system(), 32, 400, 8   # 8 windows = 2 episodes: covers the reset
  est = evosax_estimator(kind, system, num_particles=pairs, sigma=0.05, truncation_length=K)
  keys = jax.random.split(jax.random.PRNGKey(42), repeats)
  init = jax.jit(jax.vmap(est.init, in_axes=(0, None)))
  estimate = jax.jit(jax.vmap(est.estimate, in_axes=(0, None, 0)))
  state = init(keys, THETA)
  exact, truncated = np.asarray(_exact(system, THETA)), np.asarray(_truncated(system, THETA))
  for w in range(windows):
    grads, state, info = estimate(jax.vmap(lambda k: jax.random.fold_in(k, w))(keys), THETA, state)
    assert np.all(np.asarray(info["num_nonfinite"]) == 0)
    assert np.all(np.asarray(state.es.inner_step_counter) == ((w + 1) * K) % T)
    grads = np.asarray(grads)
    mean, se = grads.mean(0), grads.std(0, ddof=1) / np.sqrt(repeats)
    target = exact[w % (T // K)]
    np.testing.assert_array_less(np.abs(mean - target), 4 * se, err_msg=f"{kind} window {w}")
    # The test has the power to tell the right target from the truncated one.
    assert np.max(np.abs(target - truncated[w % (T // K)]) / se) > 15


def test_noise_reuse_keeps_noise_for_an_episode_and_pytree_theta():
  system = _system()
  theta = {"w": THETA[:2], "b": THETA[2:]}
  sys_tree = UnrolledSystem(lambda k, th: system.init(k, jnp.concatenate([th["w"], th["b"]])),
                            lambda th, s, k: system.step(jnp.concatenate([th["w"], th["b"]]), s, k), T)
  est = evosax_estimator("noise_reuse_es", sys_tree, num_particles=4, sigma=0.1, truncation_length=K)
  estimate = jax.jit(est.estimate)
  state = est.init(jax.random.PRNGKey(0), theta)
  perts = []
  for w in range(T // K + 1):
    grad, state, info = estimate(jax.random.PRNGKey(w + 1), theta, state)
    perts.append(np.asarray(state.es.pert))
    assert int(info["resets"]) == (4 if w == T // K else 0) and int(info["inner_steps"]) == 8 * K
    assert int(info["num_valid"]) == 4 and int(info["num_nonfinite"]) == 0
  assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(theta)
  assert grad["w"].shape == (2,) and grad["b"].shape == (1,)
  p = perts[0]
  np.testing.assert_allclose(p[:4], -p[4:])                # antithetic layout: [+ε; -ε]
  for q in perts[1:T // K]:
    np.testing.assert_array_equal(q, p)                    # reused within the episode
  assert not np.allclose(perts[T // K], p)                 # resampled after the reset


def test_bad_arguments():
  system = _system()
  with pytest.raises(ValueError, match="kind"):
    evosax_estimator("pes", system, 4, 0.1, K)
  with pytest.raises(ValueError, match="truncation_length"):
    evosax_estimator("persistent_es", system, 4, 0.1, 3)
  with pytest.raises(ValueError, match="num_particles"):
    evosax_estimator("persistent_es", system, 0, 0.1, K)
  with pytest.raises(ValueError, match="sigma"):
    evosax_estimator("noise_reuse_es", system, 4, 0.0, K)


@pytest.mark.parametrize("kind", ["persistent_es", "noise_reuse_es"])
def test_captured_gradient_is_what_evosax_descends_along(kind):
  """The peer's g is exactly what evosax feeds its optimizer: optax.sgd(1) moves evosax's mean by -g."""
  import optax
  from evosax.algorithms import NoiseReuseES, PersistentES
  from benchmarks.evosax_peer import _strategy
  from evosax.algorithms.distribution_based.persistent_es import Params

  params, key = Params(T=T, K=K), jax.random.PRNGKey(3)
  ours = _strategy(kind, 8, THETA, 0.05)
  sgd = {"persistent_es": PersistentES, "noise_reuse_es": NoiseReuseES}[kind](
      8, THETA, optimizer=optax.sgd(1.0), std_schedule=optax.constant_schedule(0.05))
  fitness = jax.random.normal(key, (8,))
  moved = []
  for strategy in (ours, sgd):
    state = strategy.init(key, THETA, params)
    population, state = strategy.ask(key, state, params)
    state, _ = strategy.tell(key, population, fitness, state, params)
    moved.append(state)
  g = moved[0].opt_state
  np.testing.assert_allclose(moved[1].mean - THETA, -g, rtol=1e-6, atol=1e-6)
  noise = moved[0].pert_accum if kind == "persistent_es" else moved[0].pert
  np.testing.assert_allclose(g, fitness @ noise / (0.05 ** 2 * 8), rtol=1e-5)
