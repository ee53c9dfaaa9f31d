"""Fitness transforms of the loss differences and gradient clipping: off by default, exact on a fixed batch, and
reported in info."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import rankdata

import unrolled_es as ue
from systems import THETA, linear_system

DIFFS = jnp.array([[0.3, 0.1], [-2.0, -1.0], [0.05, 0.0], [4.0, 2.0], [np.nan, 1.0]])
VALID = jnp.array([True, True, True, True, False])
KEY = jax.random.PRNGKey(0)


def test_every_es_estimator_uses_the_raw_differences_by_default():
  library = {n: c for n, c in ue.registered().items() if c.__module__.startswith("unrolled_es.")}
  assert {"es_single", "pes", "full_es", "truncated_es"} <= set(library)
  for name, ctor in library.items():   # other tests register their own estimators in this process
    params = inspect.signature(ctor).parameters
    if "sigma" in params:
      assert "fitness" in params and params["fitness"].default is None, name
  system = linear_system(7)
  kw = dict(num_particles=8, sigma=0.1, truncation_length=3)
  outs = [jax.jit(e.estimate)(KEY, THETA, e.init(KEY, THETA))[0] for e in
          (ue.es_single(system, **kw), ue.es_single(system, fitness=None, **kw),
           ue.es_single(system, fitness=ue.fitness.centered_ranks(), **kw))]
  for a, b in zip(jax.tree_util.tree_leaves(outs[0]), jax.tree_util.tree_leaves(outs[1])):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(outs[0]["w"], outs[2]["w"])


def test_clipping_limits_each_window_mean_and_counts_the_clipped():
  diffs = jnp.where(VALID[:, None], DIFFS, 0.0)
  out, info = ue.fitness.clipped(1.0).transform(diffs, VALID)
  means = np.asarray(diffs).mean(1)
  expected = np.asarray(diffs) * np.where(np.abs(means) > 1, 1 / np.abs(means), 1.0)[:, None]
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  assert int(info["num_clipped"]) == 2
  same, info = ue.fitness.clipped(100.0).transform(diffs, VALID)
  np.testing.assert_array_equal(same, diffs)
  assert int(info["num_clipped"]) == 0


def test_centered_ranks_and_z_scores_match_a_direct_computation():
  diffs = jnp.where(VALID[:, None], DIFFS, 0.0)
  means = np.asarray(diffs)[:4].mean(1)
  ranks, _ = ue.fitness.centered_ranks().transform(diffs, VALID)
  expected = (rankdata(means) - 1) / 3 - 0.5
  np.testing.assert_allclose(np.asarray(ranks)[:4], np.repeat(expected[:, None], 2, 1), rtol=1e-6)
  assert np.all(np.asarray(ranks)[4] == 0)
  z, _ = ue.fitness.z_scores().transform(diffs, VALID)
  np.testing.assert_allclose(np.asarray(z)[:4, 0], (means - means.mean()) / means.std(), rtol=1e-5)
  assert np.all(np.asarray(z)[4] == 0)


def test_clip_gradient_limits_the_norm_keeps_the_direction_and_reports():
  system = linear_system(7)
  raw = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3)
  clipped = ue.clip_gradient(raw, max_norm=0.1)
  state = raw.init(KEY, THETA)
  g, _, _ = raw.estimate(KEY, THETA, state)
  c, _, info = jax.jit(clipped.estimate)(KEY, THETA, state)
  norm = float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree_util.tree_leaves(g))))
  assert norm > 0.1 and bool(info["grad_clipped"]) and np.isclose(float(info["grad_norm_raw"]), norm, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(c), jax.tree_util.tree_leaves(g)):
    np.testing.assert_allclose(a, np.asarray(b) * 0.1 / norm, rtol=1e-5)
  _, _, info = ue.clip_gradient(raw, max_norm=1e6).estimate(KEY, THETA, state)
  assert not bool(info["grad_clipped"])


@pytest.mark.parametrize("call,match", [
    (lambda: ue.fitness.clipped(0.0), "limit must be a finite number > 0"),
    (lambda: ue.clip_gradient(ue.es_single(linear_system(6), num_particles=2, sigma=0.1, truncation_length=3),
                              max_norm=-1), "max_norm must be a finite number > 0"),
    (lambda: ue.es_single(linear_system(6), num_particles=2, sigma=0.1, truncation_length=3, fitness="ranks"),
     "fitness must be None"),
])
def test_bad_fitness_and_clipping_arguments_are_refused(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ---------------------------------------------------------------- ARS's top-b directions and reward-std step

def _ars_reference(losses, valid, top):
  """ARS (Mania et al. 2018, Algorithm 2) in numpy: rewards r± = −window means; keep the `top` valid directions by
  max(r⁺, r⁻); each kept difference scaled by n_valid/(b·σ_R), σ_R the std of the 2b kept rewards."""
  r = -np.asarray(losses, np.float64).mean(axis=2)
  idx = np.flatnonzero(np.asarray(valid))
  kept = idx[np.argsort(-r[idx].max(axis=1), kind="stable")[:top]]
  sigma_r = r[kept].std()
  out = np.zeros(np.shape(losses)[::2])
  diffs = 0.5 * (np.asarray(losses)[:, 0] - np.asarray(losses)[:, 1])
  out[kept] = diffs[kept] * len(idx) / (len(kept) * sigma_r)
  return out, kept


def _losses():
  rng = np.random.default_rng(3)
  losses = rng.normal(size=(7, 2, 3)) * np.array([1.0, 5.0, 0.2, 3.0, 1.0, 2.0, 0.5])[:, None, None]
  valid = np.array([True, True, True, False, True, True, True])
  diffs = np.where(valid[:, None], 0.5 * (losses[:, 0] - losses[:, 1]), 0.0)
  return jnp.asarray(losses, jnp.float32), jnp.asarray(valid), jnp.asarray(diffs, jnp.float32)


@pytest.mark.parametrize("top", [1, 3, 6])
def test_ars_keeps_the_top_directions_and_divides_by_their_reward_std(top):
  losses, valid, diffs = _losses()
  out, info = jax.jit(ue.fitness.ars(top).transform)(diffs, valid, losses)
  expected, kept = _ars_reference(losses, valid, top)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
  assert int(info["num_kept"]) == len(kept) == min(top, 6)
  # top_directions alone: the same selection, no division by σ_R
  only_top, _ = ue.fitness.top_directions(top).transform(diffs, valid, losses)
  sigma_r = (-np.asarray(losses, np.float64).mean(2))[kept].std()
  np.testing.assert_allclose(only_top, expected * sigma_r, rtol=1e-5, atol=1e-7)


def test_reward_std_divides_by_the_std_of_every_valid_members_window_mean():
  losses, valid, diffs = _losses()
  out, _ = ue.fitness.reward_std().transform(diffs, valid, losses)
  means = np.asarray(losses, np.float64).mean(2)[np.asarray(valid)]
  np.testing.assert_allclose(out, np.asarray(diffs) / means.std(), rtol=1e-5)
  assert ue.fitness.chain(ue.fitness.clipped(10.0), ue.fitness.reward_std()).needs_losses


def test_ars_transforms_need_the_members_losses():
  losses, valid, diffs = _losses()
  with pytest.raises(ValueError, match="members' own losses"):
    ue.fitness.ars(2).transform(diffs, valid)
  with pytest.raises(ValueError, match="top must be"):
    ue.fitness.top_directions(0)


def test_an_estimator_hands_the_members_losses_to_ars_transforms():
  """Through es_single: keeping all N directions is the raw estimate; keeping 2 keeps 2 and changes it."""
  system = linear_system(7)
  kw = dict(num_particles=8, sigma=0.1, truncation_length=3)
  run = lambda e: jax.jit(e.estimate)(KEY, THETA, e.init(KEY, THETA))
  raw, _, _ = run(ue.es_single(system, **kw))
  every, _, _ = run(ue.es_single(system, fitness=ue.fitness.top_directions(8), **kw))
  two, _, info = run(ue.es_single(system, fitness=ue.fitness.top_directions(2), **kw))
  np.testing.assert_allclose(every["w"], raw["w"], rtol=1e-6)
  assert int(info["num_kept"]) == 2 and not np.allclose(two["w"], raw["w"])
