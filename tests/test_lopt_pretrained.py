"""The pretrained learned optimizer and the rules that let it run on any parameter tree.

μP kinds of leaves, integer / size-1 / bfloat16 leaves, runs longer than num_steps, the length-free time
features, the package data's checksum, and short runs of every kind of held-out model without NaN.
"""
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unrolled_es_tasks import learned_optimizer as lo
from unrolled_es_tasks import lopt_family, lopt_leaves, lopt_network, lopt_pretrained
from unrolled_es_tasks.lopt_network import LoptSpec

KEY = jax.random.PRNGKey(0)
ANY = LoptSpec(time_features="any")
THETA0 = lopt_network.init_theta(ANY)


def _grads(params, seed=1):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, jnp.shape(x)) for k, x in zip(keys, leaves)])


# ---------------------------------------------------------------- μP kinds

def test_default_kinds_and_fan_ins():
  params = {"embed": jnp.zeros((50, 8)), "dense": {"w": jnp.zeros((16, 4)), "b": jnp.zeros(4)},
            "layers": jnp.zeros((12, 64, 64)), "conv1d": jnp.zeros((5, 3, 8)), "kernel": jnp.zeros((3, 3, 2, 4)),
            "one": jnp.zeros((1, 1)), "scalar": jnp.float32(2.0), "count": jnp.int32(3)}
  kinds = dict(zip(["conv1d", "count", "dense/b", "dense/w", "embed", "kernel", "layers", "one", "scalar"],
                   lopt_leaves.leaf_kinds(params)))
  assert kinds == {"embed": "embedding", "dense/w": "matrix", "dense/b": "vector", "layers": "stacked",
                   "conv1d": "conv", "kernel": "conv", "one": "vector", "scalar": "vector", "count": "vector"}
  fan = lambda name, shape: lopt_leaves.fan_in(shape, kinds[name])
  assert fan("layers", (12, 64, 64)) == 64 and fan("kernel", (3, 3, 2, 4)) == 18 and fan("conv1d", (5, 3, 8)) == 15
  assert fan("dense/w", (16, 4)) == 16 and fan("embed", (50, 8)) == 1


def test_annotations_override_the_rule_and_bad_kinds_are_named():
  params = {"table": jnp.zeros((100, 8)), "w": jnp.zeros((3, 16, 16))}
  assert lopt_leaves.leaf_kinds(params, {"table": "embedding", "w": None}) == ["embedding", "stacked"]
  assert lopt_leaves.leaf_kinds(params, lambda path, x: "conv" if path == "w" else None) == ["matrix", "conv"]
  with pytest.raises(ValueError, match="kinds.*'table'.*allowed kinds"):
    lopt_leaves.leaf_kinds(params, {"table": "lookup", "w": None})
  with pytest.raises(ValueError, match="kinds must be"):
    lopt_leaves.leaf_kinds(params, {"table": "matrix"})


@pytest.mark.parametrize("name,shape,factor", [("embed", (500, 64), 1.0), ("w", (128, 64), 0.25),
                                               ("layers", (12, 128, 128), 0.25), ("conv", (3, 3, 4, 8), 32 / 36),
                                               ("b", (64,), 1.0)])
def test_untrained_step_is_adam_times_the_kind_factor(name, shape, factor):
  params = {name: jax.random.normal(KEY, shape)}
  grads = _grads(params)
  ours, adam = lo.as_optax(THETA0, 100, ANY), optax.adam(ANY.lr)
  u1 = jax.jit(ours.update)(grads, ours.init(params), params)[0][name]
  u2 = adam.update(grads, adam.init(params), params)[0][name]
  np.testing.assert_allclose(u1, factor * u2, rtol=0.03, atol=1e-4 * ANY.lr)


# ---------------------------------------------------------------- odd leaves

def test_integer_leaves_pass_through_and_bfloat16_is_updated_in_float32():
  params = {"count": jnp.arange(4, dtype=jnp.int32), "w": jax.random.normal(KEY, (8, 4)).astype(jnp.bfloat16)}
  grads = {"count": np.zeros(4, jax.dtypes.float0), "w": _grads(params)["w"].astype(jnp.bfloat16)}
  opt = lo.as_optax(THETA0, 10, ANY)
  updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
  assert updates["count"].dtype == jnp.int32 and not np.any(np.asarray(updates["count"]))
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["count"], params["count"])
  assert updates["w"].dtype == jnp.bfloat16 and state.second["w"].dtype == jnp.float32
  f32 = {"w": params["w"].astype(jnp.float32)}
  want = opt.update({"w": grads["w"].astype(jnp.float32)}, opt.init(f32), f32)[0]["w"]
  np.testing.assert_allclose(np.asarray(updates["w"], np.float32), want, rtol=1e-2, atol=1e-5)


def test_a_size_one_leaf_is_not_reduced_to_its_sign():
  """Its gradient feature is measured against its own recent gradients: a gradient 100x smaller than the
  ones before it gives a feature far below 1 (per-tensor normalisation alone would give exactly ±1)."""
  ms = jnp.zeros(lopt_network.NUM_ELEMENT_FEATURES)
  for t, g in enumerate([1.0, 1.0, 1.0, 1.0, 0.01]):
    element = jnp.full((1, lopt_network.NUM_ELEMENT_FEATURES), g)
    normed, ms = lopt_network._normalise(element, ms, jnp.float32(t))
  assert 0 < float(normed[0, 0]) < 0.05
  first, _ = lopt_network._normalise(jnp.full((1, 3), -0.2), jnp.zeros(3), jnp.float32(0))
  np.testing.assert_allclose(first, -1.0, rtol=1e-5)   # on its first step it has only itself to compare with


# ---------------------------------------------------------------- feature invariants

def _active_theta(spec=ANY, seed=3):
  """θ with its output layer at haiku's full scale, so the MLP's step multiplier and direction correction are
  far from their θ0 values and every feature reaches the update."""
  theta = lopt_network.init_theta(spec, seed)
  last = lopt_network._output_layer(spec)
  return {**theta, last: {**theta[last], "w": theta[last]["w"] * 1e3}}


def _run_updates(theta, params, grad_seq, num_steps=None):
  state = lopt_network.init_state(params)
  updates = []
  for grads in grad_seq:
    u, state = lopt_network.update(ANY, theta, state, params, grads, num_steps)
    params = jax.tree_util.tree_map(jnp.add, params, u)
    updates.append(u)
  return updates


def _grad_seq(params, steps=4):
  return [_grads(params, seed) for seed in range(1, steps + 1)]


def test_features_are_unit_scale_per_column_on_the_first_step():
  """Columns seven decades apart all come out at RMS 1; an all-zero column (a weight that never gets a
  gradient) stays 0 instead of being blown up by the normalisation."""
  n = lopt_network.NUM_ELEMENT_FEATURES
  element = jax.random.normal(KEY, (50, n)) * jnp.logspace(-4, 3, n)
  normed, _ = lopt_network._normalise(element, jnp.zeros(n), jnp.float32(0))
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(jnp.square(normed), axis=0)), 1.0, rtol=1e-3)
  zeros, _ = lopt_network._normalise(element.at[:, 0].set(0.0), jnp.zeros(n), jnp.float32(0))
  assert not np.any(np.asarray(zeros[:, 0]))


@pytest.mark.parametrize("scale", [1e-5, 1e3])
def test_updates_do_not_depend_on_the_loss_scale(scale):
  """Every element feature is normalised by its own running RMS, and the nominal term is Adam's: multiplying
  the loss (every gradient) by a constant leaves each update unchanged, whatever θ is."""
  theta = _active_theta()
  params = {"w": jax.random.normal(KEY, (12, 6)), "b": jnp.zeros(6), "one": jnp.ones((1,))}
  seq = _grad_seq(params)
  scaled = [jax.tree_util.tree_map(lambda g: g * scale, grads) for grads in seq]
  for a, b in zip(_run_updates(theta, params, seq, 100), _run_updates(theta, params, scaled, 100)):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_allclose(x, y, rtol=2e-3, atol=1e-7)
  plain = _run_updates(lopt_network.init_theta(ANY), params, seq, 100)[-1]["w"]
  assert not np.allclose(plain, _run_updates(theta, params, seq, 100)[-1]["w"], rtol=0.05)  # θ matters here


def test_updates_are_equivariant_to_permuting_a_tensors_elements():
  """The optimizer is applied per element with tensor-wide statistics: permuting a tensor's elements (with
  their gradients) permutes its updates and changes no other tensor's."""
  theta = _active_theta()
  params = {"w": jax.random.normal(KEY, (8, 5)), "v": jax.random.normal(jax.random.PRNGKey(9), (7,))}
  seq = _grad_seq(params)
  perm = np.random.default_rng(0).permutation(40)
  shuffle = lambda tree: {**tree, "w": jnp.reshape(jnp.reshape(tree["w"], (-1,))[perm], (8, 5))}
  for a, b in zip(_run_updates(theta, params, seq, 100),
                  _run_updates(theta, shuffle(params), [shuffle(g) for g in seq], 100)):
    np.testing.assert_allclose(shuffle(a)["w"], b["w"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(a["v"], b["v"], rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- time features and run length

def test_any_time_features_work_without_a_length_and_flag_it():
  for t in (0, 7, 500, 50_000):
    unknown = np.asarray(lopt_network.time_features(ANY, t, None))
    known = np.asarray(lopt_network.time_features(ANY, t, 1000))
    n = len(lopt_network.STEP_SCALES)
    np.testing.assert_array_equal(unknown[:n], known[:n])           # the step features need no length
    assert unknown[n] == 0 and known[n] == 1 and not np.any(unknown[n + 1:])
    assert np.all((known >= 0) & (known <= 1))
  steps = [np.asarray(lopt_network.time_features(ANY, t, None))[:n] for t in (1, 10, 100, 1000, 10_000)]
  assert all(np.all(b >= a) and np.any(b > a + 1e-3) for a, b in zip(steps, steps[1:]))  # progress shows at any age
  np.testing.assert_array_equal(lopt_network.time_features(ANY, 5, 0), lopt_network.time_features(ANY, 5, None))


@pytest.mark.parametrize("num_steps", [10, None])
def test_no_silent_freeze_past_num_steps(num_steps):
  """Beyond num_steps the nominal step stays at its floor lr·FINAL_FRACTION (unknown length: lr), never 0."""
  params = {"w": jax.random.normal(KEY, (6, 4))}
  opt = lo.as_optax(THETA0, num_steps, ANY)
  step = jax.jit(opt.update)
  state = opt.init(params)
  sizes = []
  for t in range(30):
    u, state = step({"w": jnp.ones((6, 4))}, state, params)
    sizes.append(float(jnp.mean(jnp.abs(u["w"]))))
  scale = ANY.lr * lopt_leaves.width_factor((6, 4), "matrix", 1.0)
  floor = scale * (lopt_network.FINAL_FRACTION if num_steps else 1.0)
  np.testing.assert_allclose(sizes[15:], floor, rtol=0.05)
  if num_steps:
    assert sizes[0] > 10 * sizes[-1]


def test_cli_run_loaded_past_its_horizon_keeps_training(tmp_path):
  from unrolled_es.cli import main as cli_main
  out = str(tmp_path / "run")
  args = ["train", "--task", "learned_optimizer", "--estimator", "es_single", "--particles", "2", "--steps", "1",
          "--truncation", "2", "--task-arg", "horizon=4", "--task-arg", "hidden=8", "--task-arg", "lopt_hidden=4",
          "--no-stagger", "--out", out, "--no-progress", "--no-report"]
  assert cli_main(args) == 0
  opt = lo.load(out)                       # num_steps = the run's horizon, 4
  params = {"w": jnp.linspace(-1, 1, 6).reshape(3, 2)}
  state = opt.init(params)
  for _ in range(8):
    u, state = jax.jit(opt.update)({"w": jnp.ones((3, 2))}, state, params)
  assert float(jnp.min(jnp.abs(u["w"]))) > 0


# ---------------------------------------------------------------- the shipped optimizer

def test_pretrained_checksum_guards_the_package_data(tmp_path):
  theta, spec, meta = lopt_pretrained.load()
  assert spec.time_features == "any" and meta["command"].startswith("python -m benchmarks.lopt_pretrain") and meta["outer_step"] >= 0
  assert jax.tree_util.tree_structure(theta) == jax.tree_util.tree_structure(lopt_network.init_theta(spec))
  for name in ("lopt_pretrained.json", "lopt_pretrained.npz"):
    shutil.copy(os.path.join(lopt_pretrained.DATA_DIR, name), tmp_path / name)
  with open(tmp_path / "lopt_pretrained.npz", "r+b") as f:
    f.seek(200)
    f.write(b"\1\2\3\4")
  with pytest.raises(ValueError, match="SHA-256"):
    lopt_pretrained.load(str(tmp_path))
  with pytest.raises(ValueError, match="num_steps"):
    lo.pretrained(num_steps=0)


KINDS = {p.kind for p in lopt_family.HELD_OUT}
ONE_PER_MODEL = {p.model: p for p in lopt_family.HELD_OUT}


@pytest.mark.parametrize("problem", sorted(ONE_PER_MODEL.values(), key=lambda p: p.name), ids=lambda p: p.model)
def test_pretrained_trains_every_kind_of_suite_model_without_nan(problem):
  steps = 60
  runs = jax.jit(lambda k: lopt_family.run(problem, lo.pretrained(num_steps=None), k, steps))(KEY)
  train = np.asarray(runs["train"])
  assert np.all(np.isfinite(train)) and np.isfinite(float(runs["test_loss"]))
  assert train[-10:].mean() < train[:10].mean()


def test_suite_covers_the_promised_kinds():
  assert len(lopt_family.HELD_OUT) >= 10 and KINDS == set(lopt_family.KINDS)
  assert any(p.data == "breast_cancer" for p in lopt_family.HELD_OUT)
  assert not {(p.model, p.data, p.sizes) for p in lopt_family.HELD_OUT} & \
      {(p.model, p.data, p.sizes) for p in lopt_family.FAMILY}
