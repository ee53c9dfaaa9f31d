"""`--shaping` and a task's published fitness and stagger (ARS's top-b directions on Hopper): what the command line
builds, and what it refuses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from unrolled_es import cli
from unrolled_es.cli import assemble
from unrolled_es.cli.parser import make_parser
from unrolled_es.core.system import UnrolledSystem, evaluate
from unrolled_es_tasks.base import Task

SETTINGS = {"sigma": 0.1, "num_particles": 4, "truncation_length": 4, "outer_lr": 0.05, "optimizer": "adam",
            "steps": 2}


def _task(**published):
  def step(theta, s, key):
    s = 0.5 * s + theta
    return s, jnp.sum((s - 1.0) ** 2)
  system = UnrolledSystem(lambda key, theta: jnp.zeros(2), step, 8)
  return Task("toy", system, jnp.zeros(2), lambda theta, key: {"meta_loss": evaluate(system, theta, key)},
              dict(SETTINGS, **published))


@pytest.fixture
def published(monkeypatch):
  """The toy task, publishing whatever settings the test puts in the returned dict."""
  extra = {}
  monkeypatch.setattr(assemble, "task_names", lambda: ("toy",))
  monkeypatch.setattr(assemble, "build_task", lambda name, **kw: _task(**extra))
  return extra


def _configure(*argv):
  args = make_parser().parse_args(["train", "--task", "toy", "--no-progress", *argv])
  return assemble.configure(args, None)


def _kept(estimator):
  """How many particles the estimate's fitness kept (its info's num_kept), at θ = 0."""
  theta = jnp.zeros(2)
  state = estimator.init(jax.random.PRNGKey(0), theta)
  return int(estimator.estimate(jax.random.PRNGKey(1), theta, state)[2]["num_kept"])


def test_a_tasks_published_shaping_and_stagger_are_the_defaults(published):
  published.update(shaping="top_directions:2", stagger=False)
  cfg, _, estimator, _ = _configure("--estimator", "es_single")
  assert cfg["shaping"] == "top_directions:2" and cfg["stagger"] is False
  assert _kept(estimator) == 2


def test_the_command_line_overrides_the_tasks_shaping(published):
  published.update(shaping="top_directions:2")
  cfg, _, estimator, _ = _configure("--estimator", "es_single", "--shaping", "ars:1")
  assert cfg["shaping"] == "ars:1" and _kept(estimator) == 1


def test_an_estimator_without_loss_differences_ignores_the_tasks_shaping(published):
  published.update(shaping="top_directions:2", stagger=False)
  cfg, *_ = _configure("--estimator", "truncated_bptt")
  assert cfg.get("shaping") is None


@pytest.mark.parametrize("value, words", [("top_directions", "top_directions:B"), ("ranks", "centered_ranks"),
                                          ("ars:0", "top"), ("ars:x", "positive integer"),
                                          ("z_scores:3", "z_scores")])
def test_a_bad_shaping_is_one_line_naming_the_allowed_forms(published, capsys, value, words):
  code = cli.main(["train", "--task", "toy", "--estimator", "es_single", "--shaping", value, "--no-progress"])
  err = capsys.readouterr().err
  assert code == 2 and "--shaping" in err and words in err and "Traceback" not in err, err


@pytest.mark.parametrize("spec, expected", [("centered_ranks", ue.fitness.centered_ranks()),
                                            ("reward_std", ue.fitness.reward_std()),
                                            ("top_directions:3", ue.fitness.top_directions(3)),
                                            ("ars", ue.fitness.ars()), ("ars:2", ue.fitness.ars(2))])
def test_named_gives_the_transform_the_name_says(spec, expected):
  got = ue.fitness.named(spec)
  assert got.name == expected.name and got.needs_losses == expected.needs_losses
  diffs = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3)), jnp.float32)
  losses = jnp.asarray(np.random.default_rng(1).standard_normal((6, 2, 3)), jnp.float32)
  valid = jnp.ones(6, bool)
  np.testing.assert_array_equal(got.transform(diffs, valid, losses)[0], expected.transform(diffs, valid, losses)[0])
