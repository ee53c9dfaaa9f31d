"""The neural tasks: LSTM on characters, the copy problem, and the learned optimizer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es_tasks as tasks
from unrolled_es_tasks import rnn, text
from unrolled_es.core.system import check_step_contract, episode_losses

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def lopt_task():
  return tasks.get("learned_optimizer", horizon=50, hidden=(16,), datasets="digits", vary=False)


def _tokens(system, theta, key, n):
  """The tokens a char episode reads, by stepping the system directly."""
  init_key, base = jax.random.split(key)
  state, out = system.init(init_key, theta), []
  for t in range(n):
    out.append(int(state.token))
    state, _ = system.step(theta, state, jax.random.fold_in(base, t))
  return np.array(out)


@pytest.mark.parametrize("name,kw", [("rnn_char", {"data": "real"}), ("rnn_char", {"data": "random"}),
                                     ("rnn_char", {"data": "repeat"}), ("rnn_copy", {}),
                                     ("learned_optimizer", {"horizon": 20, "hidden": (16,)})])
def test_contract_and_settings(name, kw):
  task = tasks.get(name, **kw)
  check_step_contract(task.system, task.theta0, KEY)
  assert set(task.settings) == {"sigma", "num_particles", "truncation_length", "outer_lr", "optimizer", "steps"}
  assert task.settings["optimizer"] in ("sgd", "adam")


def test_lopt_size():
  """18 features -> 8 -> 2: 170 parameters; lopt_hidden=(32, 32) gives 1730, about NRES's 1762."""
  sizes = [sum(x.size for x in jax.tree_util.tree_leaves(tasks.get("learned_optimizer", horizon=5, **kw).theta0))
           for kw in ({}, {"lopt_hidden": (32, 32)})]
  assert sizes == [170, 1730]


@pytest.mark.parametrize("name,vocab", [("rnn_char", text.VOCAB_SIZE), ("rnn_copy", 10)])
def test_fresh_lstm_loss_is_log_vocab(name, vocab):
  task = tasks.get(name)
  first = episode_losses(task.system, task.theta0, KEY, num_steps=1)[0]
  assert abs(float(first) - np.log(vocab)) < 0.1


def test_char_data_scenarios():
  ids = text.corpus()
  assert text.decode(text.encode("Hi, there!\t\u00e9")) == "hi, there!~~"
  real, random_, repeat = (tasks.get("rnn_char", horizon=100, data=d) for d in ("real", "random", "repeat"))
  k1, k2 = jax.random.split(KEY)
  r1, r2 = _tokens(real.system, real.theta0, k1, 12), _tokens(real.system, real.theta0, k2, 12)
  start = int(real.system.init(jax.random.split(k1)[0], real.theta0).cursor)
  np.testing.assert_array_equal(r1, ids[start:start + 12])  # reads the corpus in order
  assert not np.array_equal(r1, r2)
  p1, p2 = _tokens(repeat.system, repeat.theta0, k1, 12), _tokens(repeat.system, repeat.theta0, k2, 12)
  np.testing.assert_array_equal(p1, p2)
  q1, q2 = _tokens(random_.system, random_.theta0, k1, 12), _tokens(random_.system, random_.theta0, k2, 12)
  assert not np.array_equal(q1, q2) and len(set(q1.tolist())) > 6


def test_copy_layout():
  symbols = jnp.array([3, 1, 8])
  token, target, recall = jax.vmap(lambda t: rnn.copy_tokens(symbols, t, 10, 8))(jnp.arange(10))
  np.testing.assert_array_equal(token, [3, 1, 8, 0, 0, 0, 9, 0, 0, 0])
  np.testing.assert_array_equal(target, [0, 0, 0, 0, 0, 0, 0, 3, 1, 8])
  np.testing.assert_array_equal(recall, [0] * 7 + [1] * 3)


@pytest.mark.parametrize("name,kw", [("rnn_char", {"horizon": 100}), ("rnn_copy", {})])
def test_rnn_evaluate_jits_and_matches_system(name, kw):
  task = tasks.get(name, **kw)
  out = jax.jit(task.evaluate)(task.theta0, KEY)
  np.testing.assert_allclose(out["meta_loss"], jnp.mean(episode_losses(task.system, task.theta0, KEY)),
                             rtol=1e-5)
  assert 0.0 <= float(out["accuracy"]) <= 1.0


def test_bad_arguments():
  with pytest.raises(ValueError, match="data"):
    tasks.get("rnn_char", data="shakespeare")
  with pytest.raises(ValueError, match="horizon"):
    tasks.get("rnn_copy", horizon=10, copy_length=5)
  with pytest.raises(ValueError, match="activation"):
    tasks.get("learned_optimizer", activation="swish")
  with pytest.raises(ValueError, match="hidden"):
    tasks.get("learned_optimizer", hidden=(32, 0))
  with pytest.raises(ValueError, match="meta_loss"):
    tasks.get("learned_optimizer", meta_loss="test")
  with pytest.raises(ValueError, match="datasets"):
    tasks.get("learned_optimizer", datasets=("digits", "mnist"))
  with pytest.raises(ValueError, match="time_features"):
    tasks.get("learned_optimizer", time_features="epochs")


def test_untrained_lopt_makes_progress(lopt_task):
  losses = np.asarray(episode_losses(lopt_task.system, lopt_task.theta0, KEY))
  assert np.all(np.isfinite(losses))
  assert losses[-10:].mean() < 0.8 * losses[0]
  out = jax.jit(lopt_task.evaluate)(lopt_task.theta0, KEY)  # same key schedule as the system
  np.testing.assert_allclose(out["meta_loss"], losses.mean(), rtol=1e-5)
  assert float(out["test_accuracy"]) > 0.3


def test_lopt_meta_gradient_is_finite(lopt_task):
  """Full BPTT through a short unroll (second order through the inner gradients) stays finite."""
  system = lopt_task.system._replace(horizon=3)
  grad = jax.grad(lambda th: jnp.mean(episode_losses(system, th, KEY)))(lopt_task.theta0)
  leaves = jax.tree_util.tree_leaves(grad)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)
