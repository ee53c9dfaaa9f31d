"""ES fine-tuning of the pretrained character model: no derivative anywhere in the ES loop, an unbiased REINFORCE
baseline, a KL to the pretrained model that is zero there, and a reward that ES raises."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unrolled_es as ue
from unrolled_es_tasks import char_lm, finetune, int_lm, text
from unrolled_es_tasks.finetune_reinforce import reinforce
from unrolled_es.training.loop import make_outer_step

KEY = jax.random.PRNGKey(0)


@jax.custom_jvp
def _no_derivatives(params):
  return params


@_no_derivatives.defjvp
def _refuse(primals, tangents):
  raise AssertionError("the model was differentiated")


@pytest.fixture
def guarded_model(monkeypatch):
  """char_lm.step with its parameters behind a guard that raises if anything takes a derivative through it."""
  step = char_lm.step
  monkeypatch.setattr(char_lm, "step", lambda params, state, token: step(_no_derivatives(params), state, token))


def test_es_fine_tuning_never_differentiates_the_model(guarded_model):
  task = finetune.finetune(horizon=3, prompt=2, eval_prompts=2)
  for est in (ue.full_es(task.system, num_particles=2, sigma=0.01, noise=ue.low_rank(1, factored=True),
                         fitness=ue.fitness.z_scores()),
              ue.es_single(task.system, num_particles=2, sigma=0.01, truncation_length=3, fitness=ue.fitness.z_scores())):
    jaxpr = jax.make_jaxpr(est.estimate)(KEY, task.theta0, est.init(KEY, task.theta0))
    assert "custom_jvp_call" in str(jaxpr)   # the guard is on the traced path
  jax.make_jaxpr(task.evaluate)(task.theta0, KEY)
  baseline = reinforce(4, horizon=3, prompt=2)   # the policy gradient differentiates log p_θ: the guard fires
  with pytest.raises(AssertionError, match="the model was differentiated"):
    jax.make_jaxpr(baseline.estimate)(KEY, task.theta0, ())


def _exact_gradient(theta, avoided):
  """∇_θ E[L] for horizon 1 and prompt 1: the prompt is one corpus token c with frequency q(c) (the episode's
  start is uniform), the sample v ~ p_θ(·|c), the loss avoided[v]."""
  corpus = finetune.held_out(1, 1)[0]
  q = jnp.asarray(np.bincount(corpus[:-1], minlength=text.VOCAB_SIZE) / (len(corpus) - 1), jnp.float32)

  def expected_loss(th):
    logits = jax.vmap(lambda c: char_lm.step(th, char_lm.initial_state(th), c)[0])(jnp.arange(text.VOCAB_SIZE))
    return jnp.sum(q * (jax.nn.softmax(logits) @ avoided))
  return jax.grad(expected_loss)(theta)


def test_reinforce_is_unbiased():
  theta, _ = finetune.pretrained()
  exact = jax.flatten_util.ravel_pytree(_exact_gradient(theta, finetune._avoid_mask("e")))[0]
  est = reinforce(32, horizon=1, prompt=1)
  flat = lambda k: jax.flatten_util.ravel_pytree(est.estimate(k, theta, ())[0])[0]
  directions = jnp.stack([exact / jnp.linalg.norm(exact), jax.random.normal(KEY, exact.shape) / exact.size ** 0.5])
  samples = jax.jit(jax.vmap(lambda k: directions @ flat(k)))(jax.random.split(jax.random.PRNGKey(1), 256))
  mean, se = np.mean(samples, 0), np.std(samples, 0, ddof=1) / np.sqrt(samples.shape[0])
  np.testing.assert_array_less(np.abs(mean - np.asarray(directions @ exact)), 4 * se)
  assert mean[0] > 4 * se[0]   # and the exact gradient is far from zero at this sample size


def test_kl_and_drift_are_zero_at_the_pretrained_model_and_grow_away_from_it():
  task = finetune.finetune(eval_prompts=8)
  evaluate = jax.jit(task.evaluate)
  at_start = evaluate(task.theta0, KEY)
  assert float(at_start["kl_to_pretrained"]) == 0.0 and float(at_start["drift"]) == 0.0
  assert float(at_start["held_out_bits"]) < int_lm.splits(64, 64)[2] - 1.5   # the shipped model beats unigram
  moved = dict(task.theta0, head=task.theta0["head"] + 0.3 * jax.random.normal(KEY, task.theta0["head"].shape))
  away = evaluate(moved, KEY)
  assert float(away["kl_to_pretrained"]) > 0.01 and float(away["drift"]) > 0.01


def test_es_raises_the_reward_of_the_pretrained_model():
  task = finetune.finetune(horizon=16, eval_prompts=32)
  est = ue.full_es(task.system, num_particles=16, sigma=0.01, noise=ue.low_rank(1, factored=True),
                   fitness=ue.fitness.z_scores())
  opt = optax.adam(3e-3)
  outer = make_outer_step(est, opt)
  theta, opt_state, state = task.theta0, opt.init(task.theta0), est.init(KEY, task.theta0)
  for i in range(25):
    theta, opt_state, state, _ = outer(theta, opt_state, state, KEY, jnp.int32(i))
  before, after = (float(task.evaluate(t, KEY)["meta_loss"]) for t in (task.theta0, theta))
  assert after < 0.7 * before, (before, after)
