"""The outer loop and checkpoints: exact resume, corruption fallback, skipped non-finite updates."""
import json
import os
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unrolled_es.training import checkpoint as ckpt
from unrolled_es.core.system import UnrolledSystem
from unrolled_es.training.loop import load_metrics, train

N, K, STEPS = 4, 3, 10


class Estimator(NamedTuple):  # the GradientEstimator interface, without depending on its module
  init: callable
  estimate: callable


def _system():
  def init(key, theta):
    return {"s": 0.1 * jax.random.normal(key, (3,))}

  def step(theta, state, key):
    s = 0.9 * state["s"] + theta["w"] + 0.01 * jax.random.normal(key, (3,))
    return {"s": s}, jnp.sum((s - 1.0) ** 2) + theta["b"] ** 2

  return UnrolledSystem(init, step, 50)


def noisy_tbptt(system, num_particles=N, truncation_length=K, nan_windows=()):
  """A truncated-BPTT stand-in whose gradient depends on the key and on every kind of state leaf
  (typed key, bfloat16, weakly typed scalar), so that any inexact restore changes the result."""

  def init(key, theta):
    states = jax.vmap(system.init, (0, None))(jax.random.split(key, num_particles), theta)
    return {"states": states, "window": jnp.array(0, jnp.int32), "key": jax.random.key(7),
            "acc": jnp.zeros(2, jnp.bfloat16), "weak": jnp.asarray(0.5)}

  def window(theta, state, keys):
    state, losses = jax.lax.scan(lambda s, k: system.step(theta, s, k), state, keys)
    return jnp.mean(losses), state

  def estimate(key, theta, st):
    keys = jax.random.split(key, num_particles * truncation_length).reshape(num_particles, truncation_length)
    value_and_grad = jax.vmap(jax.value_and_grad(window, has_aux=True), (None, 0, 0))
    (losses, states), grads = value_and_grad(theta, st["states"], keys)
    state_key, noise_key = jax.random.split(st["key"])
    jitter = 1e-3 * jax.random.normal(noise_key, ()) + 1e-3 * st["acc"][0] * st["weak"]
    grad = jax.tree_util.tree_map(lambda g: g.mean(0) + jitter, grads)
    bad = jnp.isin(st["window"], jnp.array(nan_windows or (-1,)))
    grad = jax.tree_util.tree_map(lambda g: jnp.where(bad, jnp.nan, g), grad)
    acc = st["acc"] + st["weak"] * jnp.mean(losses).astype(jnp.bfloat16)
    new = {"states": states, "window": st["window"] + 1, "key": state_key, "acc": acc, "weak": st["weak"] * 0.9}
    info = {"loss": jnp.mean(losses), "num_nonfinite": bad.astype(jnp.int32),
            "inner_steps": jnp.int32(num_particles * truncation_length)}
    return grad, new, info

  return Estimator(init, estimate)


THETA0 = {"w": jnp.zeros(3), "b": jnp.ones(())}
SYSTEM = _system()
ESTIMATOR, OPTIMIZER = noisy_tbptt(SYSTEM), optax.adam(0.05)  # shared, so the jitted step is compiled once


def evaluate(theta, key):
  from unrolled_es.core.system import evaluate as ev
  return {"meta_loss": ev(SYSTEM, theta, key), "b": theta["b"]}


def run(tmp, steps=STEPS, **kw):
  kw.setdefault("checkpoint_every", 4)
  kw.setdefault("eval_every", 5)
  est = kw.pop("estimator", ESTIMATOR)
  return train(est, OPTIMIZER, THETA0, jax.random.key(0), steps=steps, evaluate=evaluate,
               checkpoint_dir=os.path.join(tmp, "ckpt"), metrics_path=os.path.join(tmp, "metrics.jsonl"),
               config={"lr": 0.05}, sequential_steps_per_update=K, progress=False, **kw)


def bits(tree):
  def one(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return (str(x.dtype), x.shape, getattr(x, "weak_type", False), np.asarray(x).tobytes())
  return jax.tree_util.tree_map(one, tree)


def same_run(a, b):
  assert bits(a.theta) == bits(b.theta)
  assert bits(a.opt_state) == bits(b.opt_state)
  assert bits(a.est_state) == bits(b.est_state)
  strip = lambda ms: [{k: v for k, v in m.items() if k != "wall_time"} for m in ms]
  assert strip(a.metrics) == strip(b.metrics)


class Crash(Exception):
  pass


def crash_at(n, exc=Crash):
  def callback(step, theta, record):
    if step == n:
      raise exc()
  return callback


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("reference")
  start = time.perf_counter()
  result = run(str(tmp))
  return result, str(tmp), time.perf_counter() - start


# ---------------------------------------------------------------- checkpoint files

def test_checkpoint_roundtrip_is_exact_and_keeps_two(tmp_path):
  tree = {"f": jnp.arange(6.0).reshape(2, 3), "bf": jnp.array([1.5, -2.25], jnp.bfloat16),
          "i": jnp.array(7, jnp.int32), "b": jnp.array([True, False]), "key": jax.random.key(3),
          "raw": jax.random.PRNGKey(4), "weak": jnp.asarray(2.0), "adam": optax.adam(1e-3).init(jnp.ones(2))}
  d = str(tmp_path)
  for step in (1, 2, 3):
    ckpt.save(d, step, tree, config_fingerprint="abc", metadata={"step": step})
  assert [s for s, _ in ckpt.list_checkpoints(d)] == [2, 3]
  assert sorted(os.listdir(d)) == ["ckpt_000000002.npz", "ckpt_000000003.npz"]  # no temporary left
  loaded, step, meta = ckpt.load(ckpt.checkpoint_path(d, 3), jax.eval_shape(lambda: tree), config_fingerprint="abc")
  assert step == 3 and meta == {"step": 3}
  assert bits(loaded) == bits(tree)
  assert loaded["weak"].weak_type and not loaded["f"].weak_type
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(tree)


def test_one_part_of_a_checkpoint_restores_alone(tmp_path):
  theta = {"w": jnp.arange(3.0), "b": jnp.array(0.5, jnp.bfloat16)}
  bundle = {"theta": theta, "opt_state": optax.adam(1e-3).init(theta), "key": jax.random.key(1)}
  ckpt.save(str(tmp_path), 1, bundle)
  got, step, _ = ckpt.restore_latest(str(tmp_path), jax.eval_shape(lambda: theta), part="theta")
  assert step == 1 and bits(got) == bits(theta)
  with pytest.raises(ckpt.CheckpointError, match="different pytree structure"):
    ckpt.restore_latest(str(tmp_path), {"w": jnp.zeros(3)}, part="theta")


def test_load_rejects_mismatches(tmp_path):
  d = str(tmp_path)
  tree = {"w": jnp.zeros(3), "n": jnp.zeros((), jnp.int32)}
  path = ckpt.save(d, 1, tree, config_fingerprint="abc")
  bad_templates = [({"w": jnp.zeros(4), "n": jnp.zeros((), jnp.int32)}, r"\['w'\].*shape \[3\]"),
                   ({"w": jnp.zeros(3), "n": jnp.zeros(())}, "dtype int32"),
                   ({"w": jnp.zeros(3)}, "structure")]
  for template, match in bad_templates:
    with pytest.raises(ckpt.CheckpointError, match=match) as e:
      ckpt.load(path, template)
    assert not isinstance(e.value, ckpt.CorruptCheckpointError)
  with pytest.raises(ckpt.CheckpointError, match="different configuration"):
    ckpt.load(path, tree, config_fingerprint="xyz")


def _corrupt(path, how):
  data = bytearray(open(path, "rb").read())
  if how == "flip":
    data[len(data) // 3] ^= 0xFF
  else:
    data = data[: len(data) // 2]
  open(path, "wb").write(bytes(data))


def test_checksum_catches_a_rewritten_leaf(tmp_path):
  path = ckpt.save(str(tmp_path), 1, {"w": jnp.arange(4.0)})
  with np.load(path) as f:
    arrays = dict(f)
  arrays["leaf_0"] = np.asarray(jnp.arange(4.0) + 1).view(np.uint8)  # a well-formed zip with other bytes
  np.savez(path, **arrays)
  with pytest.raises(ckpt.CorruptCheckpointError, match="SHA-256"):
    ckpt.load(path, {"w": jnp.arange(4.0)})


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_corrupt_file_detected_and_skipped(tmp_path, how):
  d = str(tmp_path)
  tree = {"w": jnp.arange(1000.0)}
  ckpt.save(d, 1, tree)
  ckpt.save(d, 2, jax.tree_util.tree_map(lambda x: x + 1, tree))
  _corrupt(ckpt.checkpoint_path(d, 2), how)
  with pytest.raises(ckpt.CorruptCheckpointError):
    ckpt.load(ckpt.checkpoint_path(d, 2), tree)
  with pytest.warns(RuntimeWarning, match="falling back"):
    loaded, step, _ = ckpt.restore_latest(d, tree)
  assert step == 1 and bits(loaded) == bits(tree)
  _corrupt(ckpt.checkpoint_path(d, 1), how)
  with warnings.catch_warnings(), pytest.raises(ckpt.CorruptCheckpointError, match="no usable checkpoint"):
    warnings.simplefilter("ignore")
    ckpt.restore_latest(d, tree)


# ---------------------------------------------------------------- training loop

def test_train_logs_counts_and_evaluations(reference):
  result, tmp, elapsed = reference
  ms = result.metrics
  assert result.step == STEPS and result.num_skipped == 0
  assert [m["step"] for m in ms] == list(range(STEPS + 1))  # step 0 is the initial evaluation
  assert [m["step"] for m in ms if "eval_meta_loss" in m] == [0, 5, 10]
  for m in ms[1:]:
    assert m["total_inner_steps"] == m["step"] * N * K and m["sequential_inner_steps"] == m["step"] * K
    assert m["num_nonfinite"] == 0 and m["skipped"] is False and np.isfinite(m["loss"])
  assert ms[-1]["eval_b"] < ms[0]["eval_b"] - 0.3  # the b² term of the loss is being optimised
  assert ms[-1]["eval_b"] == pytest.approx(float(result.theta["b"]))
  assert all(a["wall_time"] <= b["wall_time"] for a, b in zip(ms, ms[1:])) and ms[-1]["wall_time"] <= elapsed
  assert load_metrics(os.path.join(tmp, "metrics.jsonl")) == json.loads(json.dumps(ms))
  assert [s for s, _ in ckpt.list_checkpoints(os.path.join(tmp, "ckpt"))] == [8, 10]


def test_crash_then_resume_is_bit_identical(reference, tmp_path):
  ref = reference[0]
  with pytest.raises(Crash):
    run(str(tmp_path), callback=crash_at(7))  # last checkpoint at step 4; steps 5-7 are lost
  assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "ckpt"))] == [4]
  resumed = run(str(tmp_path), resume=True)
  same_run(resumed, ref)
  assert load_metrics(str(tmp_path / "metrics.jsonl")) == json.loads(json.dumps(resumed.metrics))


def test_keyboard_interrupt_checkpoints_the_last_step(reference, tmp_path):
  ref = reference[0]
  with pytest.raises(KeyboardInterrupt):
    run(str(tmp_path), callback=crash_at(6, KeyboardInterrupt))
  assert ckpt.list_checkpoints(str(tmp_path / "ckpt"))[-1][0] == 6
  same_run(run(str(tmp_path), resume=True), ref)


def test_resume_falls_back_from_a_corrupt_latest_checkpoint(reference, tmp_path):
  ref = reference[0]
  run(str(tmp_path), steps=STEPS)  # checkpoints 8 and 10
  _corrupt(ckpt.checkpoint_path(str(tmp_path / "ckpt"), 10), "flip")
  with pytest.warns(RuntimeWarning, match="falling back"):
    resumed = run(str(tmp_path), resume=True)
  same_run(resumed, ref)


def test_resume_refuses_a_different_run(reference, tmp_path):
  tmp = reference[1]
  with pytest.raises(ValueError, match="already holds checkpoints"):
    run(tmp)
  est = noisy_tbptt(SYSTEM)
  with pytest.raises(ckpt.CheckpointError, match="different configuration"):
    train(est, optax.adam(0.05), THETA0, jax.random.key(0), steps=12, checkpoint_dir=os.path.join(tmp, "ckpt"),
          config={"lr": 0.1}, resume=True, progress=False)
  with pytest.raises(ckpt.CheckpointError, match="different configuration"):
    train(est, optax.adam(0.05), THETA0, jax.random.key(1), steps=12, checkpoint_dir=os.path.join(tmp, "ckpt"),
          config={"lr": 0.05}, resume=True, progress=False)
  with pytest.raises(ckpt.CheckpointError, match="leaf"):
    train(est, optax.adam(0.05), {"w": jnp.zeros(4), "b": jnp.ones(())}, jax.random.key(0), steps=12,
          checkpoint_dir=os.path.join(tmp, "ckpt"), config={"lr": 0.05}, resume=True, progress=False)


def test_nonfinite_gradient_is_skipped_and_counted(tmp_path):
  seen = {}
  result = run(str(tmp_path), steps=6, log_every=100, eval_every=0,
               estimator=noisy_tbptt(SYSTEM, nan_windows=(2, 4)),
               callback=lambda n, theta, rec: seen.__setitem__(n, bits(theta)))
  assert result.num_skipped == 2
  assert seen[3] == seen[2] and seen[5] == seen[4] and seen[2] != seen[1] and seen[4] != seen[3]
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(result.theta))
  logged = {m["step"]: m for m in result.metrics}
  assert sorted(logged) == [0, 3, 5, 6]  # initial eval, the two non-finite events, the last step
  assert logged[3]["skipped"] and logged[3]["num_nonfinite"] == 1 and logged[5]["num_skipped"] == 2
  assert not logged[6]["skipped"] and logged[6]["num_skipped"] == 2


def test_train_validates_arguments(tmp_path):
  est = noisy_tbptt(SYSTEM)
  for kw, name in [({"steps": -1}, "steps"), ({"steps": 2, "log_every": 0}, "log_every"),
                   ({"steps": 2, "resume": True}, "checkpoint_dir")]:
    with pytest.raises(ValueError, match=name):
      train(est, optax.sgd(0.1), THETA0, jax.random.key(0), progress=False, **kw)


def test_load_theta_reads_the_saved_theta_back(reference, tmp_path):
  import unrolled_es as ue
  result, tmp, _ = reference
  run_dir = os.path.join(tmp, "ckpt")   # a folder of checkpoints is read as it is; a run folder's checkpoints/ too
  assert bits(ue.load_theta(run_dir, like=THETA0)) == bits(result.theta)
  eight = run(str(tmp_path), steps=8)   # the run is deterministic: 8 steps again is its step-8 θ
  assert bits(ue.load_theta(run_dir, step=8, like=THETA0)) == bits(eight.theta)
  with pytest.raises(ValueError, match="step 4 has no checkpoint in .*; the saved steps are: 8, 10"):
    ue.load_theta(run_dir, step=4, like=THETA0)
  with pytest.raises(ValueError, match="holds no config.json to rebuild its task from: pass like="):
    ue.load_theta(run_dir)
  with pytest.raises(ckpt.CheckpointError, match="shape"):
    ue.load_theta(run_dir, like={"w": jnp.zeros(4), "b": jnp.zeros(())})
