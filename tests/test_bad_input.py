"""Mistakes a new user makes get one line that names the argument (or simply work): a Python float in θ, an int
as the key, a vector loss, a zero horizon, an unknown --task-arg, a --resume that differs in several options, and
--estimator left out."""
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from unrolled_es import cli
from unrolled_es.cli import task_registry
from unrolled_es_tasks.base import Task

KEY = jax.random.PRNGKey(0)


def decay_system(horizon=6):
  return ue.UnrolledSystem(lambda key, theta: jnp.ones(3),
                           lambda theta, s, key: (s * (1 - theta["a"]), jnp.sum(s ** 2)), horizon)


def test_a_python_float_theta_leaf_is_a_type_error_naming_the_leaf():
  est = ue.es_single(decay_system(), num_particles=2, sigma=0.1, truncation_length=2)
  with pytest.raises(TypeError, match=r"theta leaf \['a'\] is a Python float; .*jnp.asarray\(0.5"):
    est.init(KEY, {"a": 0.5})
  assert float(ue.evaluate(decay_system(), {"a": 0.5}, KEY)) == pytest.approx(
      float(ue.evaluate(decay_system(), {"a": jnp.float32(0.5)}, KEY)))   # evaluate takes it as an array


def test_an_int_key_is_the_seed_of_jax_random_PRNGKey():
  est = ue.es_single(decay_system(), num_particles=2, sigma=0.1, truncation_length=2)
  theta = {"a": jnp.float32(0.3)}
  by_int = est.estimate(7, theta, est.init(3, theta))[0]
  by_key = est.estimate(jax.random.PRNGKey(7), theta, est.init(jax.random.PRNGKey(3), theta))[0]
  np.testing.assert_array_equal(by_int["a"], by_key["a"])
  assert float(ue.evaluate(decay_system(), theta, 5)) == float(ue.evaluate(decay_system(), theta,
                                                                            jax.random.PRNGKey(5)))
  with pytest.raises(TypeError, match="key must be jax.random.key"):
    est.init("0", theta)


def test_evaluate_refuses_a_vector_loss_naming_its_shape():
  system = ue.UnrolledSystem(lambda key, theta: jnp.ones(3), lambda theta, s, key: (s, s ** 2), 4)
  with pytest.raises(ValueError, match=r"system.step must return a float scalar loss; got shape \(3,\)"):
    ue.evaluate(system, {"a": jnp.float32(0.5)}, KEY)


@pytest.mark.parametrize("horizon", [0, -3, 2.5, None])
def test_a_system_without_a_positive_integer_horizon_is_refused_when_built(horizon):
  with pytest.raises(ValueError, match=f"horizon must be an integer >= 1; got {horizon!r}"):
    ue.UnrolledSystem(decay_system().init, decay_system().step, horizon)
  with pytest.raises(TypeError, match="UnrolledSystem takes callables"):
    ue.UnrolledSystem(None, decay_system().step, 5)


def decay(horizon: int = 6, rate: float = 0.3, settings=None):
  """A task function whose signature is its options."""
  system = decay_system(horizon)
  evaluate = lambda theta, key: {"meta_loss": ue.evaluate(system, theta, key)}
  defaults = {"num_particles": 2, "sigma": 0.1, "truncation_length": 2, "outer_lr": 0.01, "optimizer": "sgd",
              "steps": 1}
  return Task("decay", system, {"a": jnp.float32(rate)}, evaluate, dict(defaults, **(settings or {})))


@pytest.fixture
def provider(monkeypatch):
  """A task provider, as a package declares under the `unrolled_es.tasks` entry points."""
  builders = {"decay": decay, "decay_es": lambda **kw: decay(settings={"estimator": "es_single"}, **kw)}
  fake = types.SimpleNamespace(NAMES=tuple(builders), get=lambda name, **kw: builders[name](**kw),
                               function=lambda name: decay)
  monkeypatch.setattr(task_registry, "providers", lambda: (fake,))


def error_line(capsys):
  lines = capsys.readouterr().err.strip().splitlines()
  assert lines and lines[-1].startswith("unrolled-es: error: "), lines
  return lines[-1]


def train(tmp_path, *extra):
  return cli.main(["train", "--out", str(tmp_path), "--no-progress", "--no-report", *extra])


def test_an_unknown_task_arg_lists_the_task_options(provider, tmp_path, capsys):
  assert train(tmp_path, "--task", "decay", "--estimator", "pes", "--task-arg", "colour=1") == 2
  assert error_line(capsys).endswith("task 'decay' takes no option colour; it takes: horizon, rate, settings")


def test_resume_names_every_difference(provider, tmp_path, capsys):
  assert train(tmp_path, "--task", "decay", "--estimator", "pes") == 0
  assert train(tmp_path, "--resume", "--estimator", "es_single", "--sigma", "0.2", "--seed", "1") == 2
  line = error_line(capsys)
  for difference in ("--estimator 'pes', not 'es_single'", "--sigma 0.1, not 0.2", "--seed 0, not 1"):
    assert difference in line
  assert "drop these options to resume that run, or pass --overwrite" in line


def test_estimator_left_out_takes_the_tasks_published_one(provider, tmp_path, capsys):
  assert train(tmp_path / "published", "--task", "decay_es") == 0
  with open(tmp_path / "published" / "config.json") as f:
    assert json.load(f)["estimator"] == "es_single"
  assert train(tmp_path / "none", "--task", "decay") == 2
  line = error_line(capsys)
  assert "--estimator is required: task 'decay' publishes none; choose one of: full_es" in line
  assert not os.path.exists(tmp_path / "none" / "config.json")
