"""REINFORCE with a leave-one-out baseline (Williams 1992; Kool, van Hoof & Welling 2019), the policy-gradient
baseline of the finetune task, as a GradientEstimator so that the same training loop runs it.

Each estimate samples n episodes (a prompt, then T characters from p_θ) and returns

    ĝ = 1/n Σ_i (L_i − b_i) ∇_θ log p_θ(x_i | prompt_i),   b_i = 1/(n − 1) Σ_{j≠i} L_j,

an unbiased estimate of ∇_θ E[L] (b_i does not depend on x_i). One forward pass gives the samples, their losses
and log-probabilities; one backward pass (a VJP with the advantages as cotangent) gives ĝ. It differentiates the
policy's log-likelihood, never the reward. At equal samples to ES with N antithetic pairs, n = 2N.
"""
import jax
import jax.numpy as jnp

from unrolled_es_tasks import finetune
from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.core.prng import raw_key
from unrolled_es.core.system import check_int, episode_keys, step_key


def _episode(theta, key, corpus, horizon: int, prompt: int, avoided):
  """(mean loss, Σ_t log p_θ(x_t)) of one sampled episode (the system's init and steps, with the log-probs)."""
  init_key, base = episode_keys(key)
  start = jax.random.randint(init_key, (), 0, corpus.shape[0] - prompt)
  state = finetune._prompted(theta, jax.lax.dynamic_slice(corpus, (start,), (prompt,)).astype(jnp.int32))

  def body(s, t):
    s, (loss, logp, _) = finetune.generation_step(theta, s, step_key(base, t), avoided)
    return s, (loss, logp)
  _, (losses, logps) = jax.lax.scan(body, state, jnp.arange(horizon))
  return jnp.mean(losses), jnp.sum(logps)


def leave_one_out_advantages(losses):
  """L_i − mean of the others (n ≥ 2)."""
  n = losses.shape[0]
  return losses - (jnp.sum(losses) - losses) / (n - 1)


def reinforce(num_samples: int, *, horizon: int = 32, prompt: int = 16, avoid: str = "e") -> GradientEstimator:
  """REINFORCE with a leave-one-out baseline on the finetune task built with the same horizon, prompt and avoid."""
  n = check_int("num_samples", num_samples, 2)
  horizon, prompt = check_int("horizon", horizon, 1), check_int("prompt", prompt, 1)
  avoided = finetune._avoid_mask(avoid)
  corpus = jnp.asarray(finetune.held_out(prompt, 1)[0])

  def init(key, theta):
    del key, theta
    return ()

  def estimate(key, theta, state):
    keys = jax.random.split(raw_key(key), n)
    run = lambda th: jax.vmap(lambda k: _episode(th, k, corpus, horizon, prompt, avoided))(keys)
    (losses, logps), pullback = jax.vjp(run, theta)
    advantages = leave_one_out_advantages(losses)
    (grad,) = pullback((jnp.zeros_like(losses), advantages / n))
    info = {"loss": jnp.mean(losses), "num_nonfinite": jnp.sum(~jnp.isfinite(losses)).astype(jnp.int32),
            "mean_log_prob": jnp.mean(logps), "inner_steps": jnp.int32(n * horizon),
            "sequential_inner_steps": jnp.int32(horizon)}
    return grad, state, info

  return GradientEstimator(init=init, estimate=estimate)
