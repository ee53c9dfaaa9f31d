"""Integer low-rank ES and integer layers: exact int32 arithmetic, whole-step saturating updates, a calibrated vote
that points downhill, and the int_lm task through the command line with resume."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unrolled_es as ue
from unrolled_es_tasks import int_lm
from unrolled_es import cli
from unrolled_es.layers import integer as il
from unrolled_es.noise import integer as inz
from unrolled_es.core.system import UnrolledSystem



def int8(rng, *shape):
  return jnp.asarray(rng.integers(-127, 128, shape), jnp.int8)


def dense_reference(x, w, a, b, sign, shift):
  """x W + ⌊x (sign·a bᵀ) / 2^shift⌋ in int64 with the perturbation formed densely."""
  x, w, a, b = (np.asarray(v, np.int64) for v in (x, w, a, b))
  return x @ w + np.floor_divide(x @ (sign * a @ b.T), 2 ** shift)


@pytest.mark.parametrize("sign", [1, -1])
def test_perturbed_matmul_equals_the_dense_int32_reference(sign):
  rng = np.random.default_rng(0)
  x, w, a, b = int8(rng, 5, 48), int8(rng, 48, 24), int8(rng, 48, 2), int8(rng, 24, 2)
  p = il.IntPerturbedMatrix(w, (a * sign).astype(jnp.int8), b, jnp.int32(8))
  ref = dense_reference(x, w, a, b, sign, 8)
  np.testing.assert_array_equal(il.accumulate(x, p), ref)
  expected = np.clip(np.floor_divide(ref, 2 ** il.fan_in_shift(48)), -127, 127)
  np.testing.assert_array_equal(il.linear(x, p), expected)
  ids = jnp.array([0, 3, 3, 47])
  rows = np.asarray(w, np.int64)[ids] + np.floor_divide(sign * np.asarray(a, np.int64)[ids] @ np.asarray(b).T, 256)
  np.testing.assert_array_equal(il.embed(p, ids), np.clip(rows, -127, 127))


def test_int32_accumulation_is_exact_at_the_fan_in_bound():
  m = il.MAX_FAN_IN_TIMES_RANK   # rank 1: the largest matmul that check_fan_in allows, with extreme values
  x, w = jnp.full((2, m), 127, jnp.int8), jnp.full((m, 3), 127, jnp.int8)
  a, b = jnp.full((m, 1), 127, jnp.int8), jnp.full((3, 1), 127, jnp.int8)
  p = il.IntPerturbedMatrix(w, a, b, jnp.int32(8))
  np.testing.assert_array_equal(il.accumulate(x, p), dense_reference(x, w, a, b, 1, 8))
  with pytest.raises(ValueError, match="fan-in × rank must be at most 1024"):
    il.check_fan_in("w", m, 2)


def _member(theta, key, sign):
  return inz.perturb(theta, inz.sample(key, theta, 1), sign, 8)


def test_integer_forward_is_bit_exact_with_and_without_jit():
  theta = int_lm.init_int_params(0, 63, 16, 2)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 63, 6), jnp.int32)
  for params in (theta, _member(theta, jax.random.PRNGKey(3), -1)):
    compiled = jax.jit(int_lm.int_sequence_logits)(params, tokens)
    with jax.disable_jit():
      eager = int_lm.int_sequence_logits(params, tokens)
    assert compiled.dtype == eager.dtype == jnp.int8
    np.testing.assert_array_equal(compiled, eager)
  assert not np.array_equal(jax.jit(int_lm.int_sequence_logits)(theta, tokens), compiled)  # the member differs


def test_integer_log_softmax_is_within_a_sixteenth_of_a_bit():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(np.clip(np.round(rng.standard_normal((500, 63)) * 30), -127, 127), jnp.int8)
  target = jnp.asarray(rng.integers(0, 63, 500))
  integer = -il.log2_softmax_target(logits, target).astype(jnp.float32) / il.ONE
  assert integer.dtype == jnp.float32 and il.log2_softmax_target(logits, target).dtype == jnp.int32
  np.testing.assert_allclose(integer, il.exact_bits(logits, target), atol=1 / 16)


def test_moves_saturate_where_int8_addition_would_wrap():
  theta = {"w": jnp.array([[127, -127], [126, 0]], jnp.int8), "v": jnp.array([127, -127], jnp.int8)}
  step = {"w": jnp.array([[1, -1], [1, 1]], jnp.int8), "v": jnp.array([1, -1], jnp.int8)}
  moved = inz.apply_moves(theta, step)
  np.testing.assert_array_equal(moved["w"], [[127, -127], [127, 1]])
  np.testing.assert_array_equal(moved["v"], [127, -127])
  assert int((theta["v"] + step["v"])[0]) == -128    # what plain int8 arithmetic would have done
  opt = ue.saturating_steps(100)
  updates, _ = opt.update(jax.tree_util.tree_map(jnp.negative, step), opt.init(theta), theta)
  applied = optax.apply_updates(theta, updates)
  assert all(x.dtype == jnp.int8 for x in jax.tree_util.tree_leaves(applied))
  np.testing.assert_array_equal(applied["w"], [[127, -127], [127, 100]])
  with pytest.raises(ValueError, match="step_size must be a whole number >= 1"):
    ue.saturating_steps(0.5)


def test_update_moves_each_weight_by_at_most_one_step_and_stays_in_range():
  task = int_lm.int_lm(horizon=4, hidden=8, eval_segments=2)
  theta = jax.tree_util.tree_map(lambda x: x, task.theta0)
  theta["head"] = jnp.full_like(theta["head"], 127).at[0].set(-127)   # every head weight at the edge
  es = ue.int_es(task.system, num_particles=8)
  step = jax.jit(es.step)
  state = es.init(jax.random.PRNGKey(0), theta)
  moved_edges = 0
  for i in range(3):
    new, state, info = step(jax.random.PRNGKey(i), theta, state)
    for old, x in zip(jax.tree_util.tree_leaves(theta), jax.tree_util.tree_leaves(new)):
      assert x.dtype == jnp.int8
      assert np.all(np.abs(np.asarray(x, np.int32) - np.asarray(old, np.int32)) <= 1)
      assert np.all(np.abs(np.asarray(x, np.int32)) <= 127)
    moved_edges += int(np.sum(np.asarray(new["head"]) != np.asarray(theta["head"])))
    theta = new
  assert moved_edges > 0 and int(state.step) == 3 and float(info["alpha"]) < 1


def test_under_the_null_a_fraction_alpha_of_weights_moves():
  theta = {"w": jnp.zeros((64, 64), jnp.int8), "v": jnp.zeros((4096,), jnp.int8)}

  @jax.jit
  def moved_fractions(seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), 129)
    eps = jax.vmap(lambda k: inz.sample(k, theta, 1))(keys[:128])
    fitness = jax.random.choice(keys[128], jnp.array([-1, 0, 1]), (128,)).astype(jnp.int32)  # independent of ε
    return {k: jnp.mean(m != 0) for k, m in inz.moves(theta, eps, fitness, jnp.float32(0.1), 1).items()}
  runs = [moved_fractions(seed) for seed in range(8)]
  for k in theta:
    f = [float(r[k]) for r in runs]
    se = np.std(f, ddof=1) / np.sqrt(len(f))
    assert abs(np.mean(f) - 0.1) < 4 * se + 1e-3, (k, f)


def _linear_loss_system():
  """loss = −⟨x W, c⟩ / 2¹⁰ on a fixed x: linear in W's perturbation, so ∂L/∂W = −x cᵀ/2¹⁰ is known."""
  rng = np.random.default_rng(3)
  x, c = int8(rng, 1, 32), jnp.asarray(rng.standard_normal((1, 16)), jnp.float32)

  def step(theta, state, key):
    out = il.accumulate(x, theta["w"]).astype(jnp.float32)
    return state, -jnp.sum(out * c) / 1024.0
  return UnrolledSystem(lambda key, theta: jnp.zeros(()), step, 1), np.asarray(x, np.float32).T @ np.asarray(c)


def test_the_vote_points_downhill():
  system, minus_gradient = _linear_loss_system()
  theta = {"w": jnp.zeros((32, 16), jnp.int8)}
  es = ue.make("int_es", system, num_particles=1024, alpha_start=0.2, alpha_end=0.2)   # the estimator form
  direction, _, _ = jax.jit(es.estimate)(jax.random.PRNGKey(0), theta, es.init(jax.random.PRNGKey(0), theta))
  moved = np.asarray(direction["w"]) != 0
  agree = -np.sign(np.asarray(direction["w"])) == np.sign(minus_gradient)
  steep = np.abs(minus_gradient) > np.quantile(np.abs(minus_gradient), 0.75)
  # Chance agreement is ½; weights with a steep slope must move the right way almost always.
  assert moved.mean() > 0.2 and agree[moved].mean() > 0.8 and agree[moved & steep].mean() > 0.95


def test_bad_settings_are_rejected_with_the_allowed_values():
  system, _ = _linear_loss_system()
  with pytest.raises(ValueError, match="fitness must be one of sign, difference"):
    ue.int_es(system, num_particles=4, fitness="ranks")
  with pytest.raises(ValueError, match="alpha_end <= alpha_start <= 1"):
    ue.int_es(system, num_particles=4, alpha_start=0.1, alpha_end=0.5)
  es = ue.int_es(system, num_particles=4)
  with pytest.raises(ValueError, match=r"theta leaf \['w'\] must be an int8"):
    es.init(jax.random.PRNGKey(0), {"w": jnp.zeros((32, 16))})


def test_the_command_line_trains_int_lm_and_resumes_exactly(tmp_path, capsys):
  args = ["train", "--task", "int_lm", "--estimator", "int_es", "--particles", "4", "--task-arg", "hidden=8",
          "--task-arg", "horizon=4", "--task-arg", "eval_segments=2", "--no-progress", "--no-report"]
  resumed, straight = str(tmp_path / "resumed"), str(tmp_path / "straight")
  assert cli.main(args + ["--steps", "2", "--out", resumed]) == 0
  assert cli.main(args + ["--steps", "3", "--out", resumed, "--resume"]) == 0
  assert cli.main(args + ["--steps", "3", "--out", straight]) == 0
  from unrolled_es.training import checkpoint as ckpt
  last = lambda run: dict(np.load(ckpt.list_checkpoints(os.path.join(run, "checkpoints"))[-1][1]))
  a, b = last(resumed), last(straight)
  assert sorted(a) == sorted(b)
  for k in a:
    if k != "header":
      np.testing.assert_array_equal(a[k], b[k])
  assert "final meta_loss" in capsys.readouterr().out


def test_the_estimator_form_with_saturating_steps_lands_exactly_on_the_step():
  """as_estimator(int_es)'s direction θ − θ', applied by saturating_steps(1), is θ' bit for bit, also at ±127."""
  task = int_lm.int_lm(horizon=4, hidden=8, eval_segments=2)
  theta = dict(task.theta0, head=jnp.full_like(task.theta0["head"], 127).at[0].set(-127))
  method, estimator = ue.int_es(task.system, num_particles=8), ue.make("int_es", task.system, num_particles=8)
  key, state = jax.random.PRNGKey(3), method.init(jax.random.PRNGKey(0), theta)
  stepped, _, _ = jax.jit(method.step)(key, theta, state)
  direction, _, _ = jax.jit(estimator.estimate)(key, theta, estimator.init(jax.random.PRNGKey(0), theta))
  opt = ue.saturating_steps(1)
  applied = optax.apply_updates(theta, opt.update(direction, opt.init(theta), theta)[0])
  assert any(np.any(np.asarray(d) != 0) for d in jax.tree_util.tree_leaves(direction))
  for a, b in zip(jax.tree_util.tree_leaves(applied), jax.tree_util.tree_leaves(stepped)):
    assert a.dtype == jnp.int8
    np.testing.assert_array_equal(a, b)
