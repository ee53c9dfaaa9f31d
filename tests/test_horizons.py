"""Per-episode horizons: each particle draws its episode's length at its reset, inside the compiled scan, resets
exactly when that episode ends, and the estimate stays unbiased for the expected meta-loss E_T[L_T]."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import THETA, linear_system
from unrolled_es.core.system import episode_losses

SCHEDULE = ue.horizons.log_uniform(3, 9)   # lengths 3 … 8


def test_log_uniform_draws_follow_their_probabilities():
  values, probs = SCHEDULE.pmf()
  assert np.isclose(probs.sum(), 1.0) and list(values) == list(range(3, 9))
  n = 40_000
  drawn = np.asarray(jax.vmap(SCHEDULE.sample)(jax.random.split(jax.random.PRNGKey(0), n)))
  freq = np.array([(drawn == v).mean() for v in values])
  se = np.sqrt(probs * (1 - probs) / n)
  assert np.all(np.abs(freq - probs) < 4 * se), (freq, probs)
  assert abs(drawn.mean() - SCHEDULE.mean) < 4 * drawn.std() / np.sqrt(n)


def recording_system():
  """The linear system, whose state also remembers the length its init key stands for."""
  base = linear_system(8)
  init = lambda key, theta: (base.init(key, theta), SCHEDULE.sample(key))
  step = lambda theta, s, key: ((base.step(theta, s[0], key)[0], s[1]), base.step(theta, s[0], key)[1])
  return ue.UnrolledSystem(init, step, 8)


@pytest.mark.parametrize("name", ["es_single", "pes", "truncated_bptt"])
def test_particles_reset_exactly_when_their_drawn_episode_ends(name):
  k, n = 2, 16
  noise = {} if name == "truncated_bptt" else {"sigma": 0.1}
  est = ue.make(name, recording_system(), num_particles=n, truncation_length=k, horizons=SCHEDULE, stagger=False,
                **noise)
  state, estimate = est.init(jax.random.PRNGKey(0), THETA), jax.jit(est.estimate)
  for w in range(30):
    before = state
    _, state, info = estimate(jax.random.PRNGKey(w), THETA, state)
    reset_slot = np.asarray(before.horizon - before.t)
    resets = reset_slot < k
    assert int(info["resets"]) == resets.sum()
    np.testing.assert_array_equal(np.asarray(state.t), np.where(resets, k - reset_slot, np.asarray(before.t) + k))
    np.testing.assert_array_equal(np.asarray(state.horizon)[~resets], np.asarray(before.horizon)[~resets])
    # the new episode's length is the one its init key stands for, and lies in the schedule's range
    np.testing.assert_array_equal(np.asarray(state.inner[1][:, 0])[resets], np.asarray(state.horizon)[resets])
    assert np.all((np.asarray(state.horizon) >= 3) & (np.asarray(state.horizon) <= 8))


def growing_loss_system():
  """l_t = (t + 1)·½‖w − y‖²: quadratic in θ, and L_T grows with T, so weighting by episode matters."""
  y = jnp.array([1.0, -2.0, 0.5])
  init = lambda key, theta: jnp.zeros(())
  step = lambda theta, t, key: (t + 1.0, (t + 1.0) * 0.5 * jnp.sum((theta["w"] - y) ** 2))
  return ue.UnrolledSystem(init, step, 8)


def test_first_episode_sums_to_the_expected_meta_loss_gradient():
  """K = 1 and one particle: its window estimates over its first episode sum, in expectation, to
  Σ_t E[T]/T·∇l_t, whose mean over the drawn T is E[T]·∇E_T[L_T] (exact: a quadratic loss). Without the E[T]/T
  weights the sum would be E_T[T·∇L_T], which differs here by Cov(T, ∇L_T)."""
  system, seeds, windows = growing_loss_system(), 32768, 9
  THETA = {"w": jnp.array([0.2, -0.1, 0.4])}
  est = ue.es_single(system, num_particles=1, sigma=0.1, truncation_length=1, horizons=SCHEDULE, stagger=False)

  def run(key):
    def body(state, w):
      g, state, info = est.estimate(jax.random.fold_in(key, w), THETA, state)
      return state, (g, info["resets"])
    return jax.lax.scan(body, est.init(jax.random.fold_in(key, 99), THETA), jnp.arange(windows))[1]
  grads, resets = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(5), seeds))
  resets = np.asarray(resets)
  assert np.all(resets[:, 0] == 1)
  first_end = 1 + np.argmax(resets[:, 1:] == 1, axis=1)   # the window where the second episode starts
  in_first = np.arange(windows)[None, :] < first_end[:, None]
  sums = jax.tree_util.tree_map(lambda g: np.einsum("sw,sw...->s...", in_first, np.asarray(g, np.float64)), grads)
  values, probs = SCHEDULE.pmf()
  exact = jax.tree_util.tree_map(lambda *gs: SCHEDULE.mean * sum(p * g for p, g in zip(probs, gs)), *[
      jax.grad(lambda th, t=int(t): jnp.mean(episode_losses(system, th, jax.random.PRNGKey(0), t)))(THETA)
      for t in values])
  from systems import assert_unbiased
  assert_unbiased(sums, exact, what="first-episode sum")
  # the drawn first lengths follow the schedule
  freq = np.array([(first_end == v).mean() for v in values])
  assert np.all(np.abs(freq - probs) < 4 * np.sqrt(probs * (1 - probs) / seeds))


def test_a_window_longer_than_the_shortest_episode_is_refused():
  with pytest.raises(ValueError, match="truncation_length .4. must be at most the shortest horizon"):
    ue.es_single(linear_system(8), num_particles=2, sigma=0.1, truncation_length=4, horizons=SCHEDULE)
  with pytest.raises(ValueError, match="horizons must be None or a schedule"):
    ue.es_single(linear_system(8), num_particles=2, sigma=0.1, truncation_length=2, horizons=5)


def test_each_step_is_weighted_by_its_own_episodes_length():
  """Truncated BPTT on l_t = (t + 1)·½‖w − y‖² is deterministic, so every particle's window is checked exactly:
  a slot before the particle's reset is weighted E[T]/T of the old episode, a slot after it E[T]/T' of the new one
  (T' read from the state after the window). Windows of 2 over lengths 3 … 8 put resets mid-window, where weighting
  the new episode's steps by the old length (a mutation the unbiasedness tests above let through) fails this."""
  system, k, n = growing_loss_system(), 2, 8
  theta, y = {"w": jnp.array([0.2, -0.1, 0.4])}, np.array([1.0, -2.0, 0.5])
  est = ue.truncated_bptt(system, num_particles=n, truncation_length=k, horizons=SCHEDULE, stagger=False)
  state, estimate = est.init(jax.random.PRNGKey(0), theta), jax.jit(est.estimate)
  mid_window_resets = 0
  for w in range(12):
    before = state
    g, state, _ = estimate(jax.random.PRNGKey(w), theta, state)
    t0, old, new = (np.asarray(x, np.float64) for x in (before.t, before.horizon, state.horizon))
    reset_slot = old - t0
    slots = np.arange(k)[None, :]
    after = slots >= reset_slot[:, None]
    step = np.where(after, slots - reset_slot[:, None], t0[:, None] + slots)
    weight = SCHEDULE.mean / np.where(after, new[:, None], old[:, None])
    factor = np.mean(np.mean(weight * (step + 1), axis=1))
    np.testing.assert_allclose(np.asarray(g["w"]), factor * (np.asarray(theta["w"]) - y), rtol=2e-5)
    mid_window_resets += int(np.sum((reset_slot > 0) & (reset_slot < k)))
  assert mid_window_resets > 0
