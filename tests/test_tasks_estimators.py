"""Every task runs one estimate of every estimator, and the gradient is finite with theta's structure."""
import jax
import numpy as np
import pytest

import unrolled_es_tasks as tasks
import unrolled_es as ue

SMALL = {
    "influence_balancing": dict(horizon=4),
    "toy_regression": dict(horizon=4),
    "lorenz": dict(horizon=4),
    "lr_schedule": dict(horizon=4, hidden=(8,)),
    "rnn_char": dict(horizon=4),
    "rnn_copy": dict(horizon=6, copy_length=1, hidden=4),
    "learned_optimizer": dict(horizon=4, hidden=(8,), lopt_hidden=(8,), datasets=("synthetic",), vary=False),
    "int_lm": dict(model="float", horizon=4, hidden=4, eval_segments=2),  # model="int8" is int_es's: test_integer
    "finetune": dict(horizon=3, prompt=2, eval_prompts=2),
    "control": dict(env="CartPole-v1", horizon=4),
}
ESTIMATORS = {
    "full_es": lambda s: ue.full_es(s, num_particles=2, sigma=0.01),
    "truncated_es": lambda s: ue.truncated_es(s, num_particles=2, sigma=0.01, truncation_length=2, stagger=False),
    "pes": lambda s: ue.pes(s, num_particles=2, sigma=0.01, truncation_length=2),
    "generalized_pes": lambda s: ue.generalized_pes(s, num_particles=2, sigma=0.01, truncation_length=2,
                                                    resample_every=2, stagger=False),
    "es_single": lambda s: ue.es_single(s, num_particles=2, sigma=0.01, truncation_length=2, stagger=False,
                                        noise=ue.low_rank(1, factored=True)),
    "truncated_bptt": lambda s: ue.truncated_bptt(s, num_particles=2, truncation_length=2, stagger=False),
    "full_bptt": lambda s: ue.full_bptt(s),
}


def test_every_task_is_listed():
  assert set(SMALL) == set(tasks.NAMES)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_one_estimate_of_every_estimator(name):
  task = tasks.get(name, **SMALL[name])
  key = jax.random.PRNGKey(0)
  for est_name, make in ESTIMATORS.items():
    est = make(task.system)
    grad, _, info = jax.jit(lambda k, th: est.estimate(k, th, est.init(k, th)))(key, task.theta0)
    assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(task.theta0), est_name
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grad)), est_name
    assert int(info["num_nonfinite"]) == 0 and np.isfinite(info["loss"]), est_name


POPULATION_METHODS = {
    "deep_ga": lambda task: ue.deep_ga(task.system, population=2, parents=1, sigma=0.01, elite_candidates=1,
                                       elite_episodes=1, max_generations=2, mask=task.mask),
    "snes": lambda task: ue.snes(task.system, population=2, sigma=0.01, mask=task.mask),
}


# Two tasks keep compile time small: a scalar θ, and a θ whose observation statistics a mask keeps out of the search
# (int_lm's int8 model has int_es: test_integer).
@pytest.mark.parametrize("name", ["influence_balancing", "control"])
def test_one_generation_of_every_population_method(name):
  task = tasks.get(name, **SMALL[name])
  key = jax.random.PRNGKey(0)
  for method_name, make in POPULATION_METHODS.items():
    method = make(task)
    theta, _, info = jax.jit(lambda k, th: method.step(k, th, method.init(k, th)))(key, task.theta0)
    assert jax.tree_util.tree_structure(theta) == jax.tree_util.tree_structure(task.theta0), method_name
    assert all(np.all(np.isfinite(t)) for t in jax.tree_util.tree_leaves(theta)), method_name
    assert int(info["inner_steps"]) > 0 and np.isfinite(info["loss"]), method_name
