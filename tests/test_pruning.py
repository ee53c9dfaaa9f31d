"""The lottery-ticket loop: survivors rewind exactly to the saved values, each round prunes the stated fraction of
what remains by its criterion, biases are never pruned; and SNES, whose per-coordinate σ the SNR rule reads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from unrolled_es.population import pruning

THETA0 = {"w1": jnp.arange(1.0, 13.0).reshape(3, 4) / 7, "b1": jnp.array([0.3, -0.2, 0.1, 0.5]),
          "w2": -jnp.arange(1.0, 9.0).reshape(4, 2) / 5}


def test_survivors_rewind_exactly_and_each_round_prunes_its_fraction():
  seen = []

  def train(start, mask):
    seen.append((start, mask))
    trained = jax.tree_util.tree_map(lambda x, m: jnp.where(m, x * 1.5 + 0.01, 0.0), start, mask)
    return trained, None, 0.0
  rounds = pruning.lottery(train, THETA0, criterion="magnitude", rounds=4, fraction=0.2)
  prunable = 12 + 8
  for r, (start, mask) in enumerate(seen):
    for x, m, x0 in zip(*map(jax.tree_util.tree_leaves, (start, mask, THETA0))):
      np.testing.assert_array_equal(np.asarray(x), np.where(m, np.asarray(x0), 0.0))   # bit for bit
    assert np.all(mask["b1"])
    remaining = prunable - sum(np.sum(~np.asarray(mask[k])) for k in ("w1", "w2"))
    assert remaining == round(prunable * 0.8 ** r) or abs(remaining - prunable * 0.8 ** r) < 1
    assert rounds[r].sparsity == pytest.approx(1 - remaining / prunable)
    if r:
      for before, after in zip(jax.tree_util.tree_leaves(seen[r - 1][1]), jax.tree_util.tree_leaves(mask)):
        assert np.all(np.asarray(before) | ~np.asarray(after))   # pruned weights stay pruned


@pytest.mark.parametrize("criterion", ["magnitude", "snr", "random"])
def test_each_criterion_prunes_the_lowest_scores(criterion):
  sigma = jax.tree_util.tree_map(lambda x: jnp.linspace(0.1, 2.0, x.size).reshape(x.shape), THETA0)
  mask = jax.tree_util.tree_map(lambda x: np.ones(x.shape, bool), THETA0)
  new = pruning.prune(criterion, mask, THETA0, 0.25, sigma=sigma, key=jax.random.PRNGKey(3))
  dropped = np.concatenate([~np.asarray(new[k]).ravel() for k in ("w1", "w2")])
  assert dropped.sum() == 5 and np.all(np.asarray(new["b1"]))
  if criterion == "random":
    other = pruning.prune(criterion, mask, THETA0, 0.25, sigma=sigma, key=jax.random.PRNGKey(4))
    assert any(not np.array_equal(new[k], other[k]) for k in ("w1", "w2"))
    return
  score = {k: np.abs(np.asarray(THETA0[k])) / (np.asarray(sigma[k]) if criterion == "snr" else 1.0)
           for k in ("w1", "w2")}
  flat = np.concatenate([score[k].ravel() for k in ("w1", "w2")])
  assert flat[dropped].max() <= flat[~dropped].min()


def test_snr_needs_sigma_and_bad_arguments_are_named():
  mask = jax.tree_util.tree_map(lambda x: np.ones(x.shape, bool), THETA0)
  with pytest.raises(ValueError, match="needs the trained per-coordinate σ"):
    pruning.prune("snr", mask, THETA0, 0.2)
  with pytest.raises(ValueError, match="criterion must be one of"):
    pruning.prune("gradient", mask, THETA0, 0.2)
  with pytest.raises(ValueError, match="fraction must be in"):
    pruning.prune("magnitude", mask, THETA0, 1.5)


def test_snes_finds_the_optimum_adapts_sigma_and_keeps_masked_coordinates():
  y = jnp.array([1.0, -2.0, 0.5, 3.0])
  curvature = jnp.array([10.0, 1.0, 1.0, 0.1])
  system = ue.UnrolledSystem(lambda key, th: jnp.zeros(()),
                             lambda th, s, key: (s, 0.5 * jnp.sum(curvature * (th["w"] - y) ** 2)), 1)
  mask = {"w": np.array([True, True, True, False])}
  es = ue.snes(system, population=32, sigma=0.5, mask=mask)
  theta = {"w": jnp.zeros(4)}
  state, step = es.init(jax.random.PRNGKey(0), theta), jax.jit(es.step)
  for g in range(50):   # converged by then; later generations only wander at float32's resolution of the loss
    theta, state, info = step(jax.random.PRNGKey(g), theta, state)
  w, sigma = np.asarray(theta["w"]), np.asarray(state.sigma["w"])
  np.testing.assert_allclose(w[:3], np.asarray(y)[:3], atol=0.05)
  assert w[3] == 0.0 and sigma[3] == pytest.approx(0.5)
  assert sigma[0] < sigma[1] and sigma[0] < 0.1   # the steep coordinate's σ shrinks most
