"""Fine-tuning a pretrained character model by ES against a reward that needs no labels (the workflow of Qiu et
al., "Evolution Strategies at Scale: LLM Fine-Tuning Beyond Reinforcement Learning", 2025, at CPU size).

The model (unrolled_es_tasks.char_lm: embedding, one minGRU layer with a ReLU MLP, 64 wide, 33k parameters) was pre-trained
by backprop on the first 90% of the corpus of unrolled_es_tasks.text and ships in tasks/data/finetune_char_lm.npz
(`python -m unrolled_es_tasks.finetune --pretrain` rewrites it). θ is all of its parameters.

An episode reads a `prompt`-character prompt drawn from the corpus, then samples `horizon` characters from
p_θ, one per inner step, from the step's key (so the two members of an antithetic pair sample with the same
Gumbel noise). The reward is a lipogram: each sampled character in `avoid` (default "e", about 10% of the
pretrained model's output) costs 1, so the inner loss is the fraction of avoided characters, and the meta-loss
their expected fraction under p_θ. Nothing checks text against a label; the property is checked on samples.

evaluate -> meta_loss (avoided fraction on fixed prompts and sampling keys), kl_to_pretrained (per character,
Σ_v p_θ(v)(log p_θ(v) − log p₀(v)) along θ's samples, in nats), held_out_bits (bits per character of real
held-out text: what the fine-tuning costs as a language model) and drift (‖θ − θ₀‖ / ‖θ₀‖).
`reinforce(task, num_samples)` is the policy-gradient baseline (REINFORCE with a leave-one-out baseline).
"""
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es_tasks import char_lm, text
from unrolled_es_tasks.base import Task
from unrolled_es.core.system import UnrolledSystem, check_int, episode_keys, step_key

PRETRAINED = os.path.join(os.path.dirname(__file__), "data", "finetune_char_lm.npz")
TRAIN_FRACTION = 0.9


class GenState(NamedTuple):
  hidden: jax.Array   # float32 [layers, H]
  token: jax.Array    # int32: the token the next step reads


def pretrained():
  """(params, metadata) of the shipped pretrained model."""
  if not os.path.exists(PRETRAINED):
    raise ValueError(f"the pretrained model {PRETRAINED} is missing; write it with `python -m unrolled_es_tasks.finetune "
                     f"--pretrain`")
  return char_lm.load_params(PRETRAINED)


def _avoid_mask(avoid: str):
  if not (isinstance(avoid, str) and avoid and all(c in text.VOCAB for c in avoid)):
    raise ValueError(f"avoid must be a non-empty string of characters from unrolled_es_tasks.text.VOCAB; got {avoid!r}")
  mask = np.zeros(text.VOCAB_SIZE, np.float32)
  mask[text.encode(avoid)] = 1.0
  return jnp.asarray(mask)


def _prompted(theta, prompt):
  """(states after reading prompt[:-1], prompt[-1] as the next token to read)."""
  def body(h, token):
    return char_lm.step(theta, h, token)[1], None
  h, _ = jax.lax.scan(body, char_lm.initial_state(theta), prompt[:-1])
  return GenState(h, prompt[-1])


def generation_step(theta, state, key, avoided):
  """Samples the next character; returns (state, (loss, log p_θ(sample), logits))."""
  logits, h = char_lm.step(theta, state.hidden, state.token)
  sample = jax.random.categorical(key, logits).astype(jnp.int32)
  logp = jax.nn.log_softmax(logits)[sample]
  return GenState(h, sample), (avoided[sample], logp, logits)


def _system(corpus, horizon: int, prompt: int, avoided) -> UnrolledSystem:
  data = jnp.asarray(corpus)

  def init(key, theta):
    start = jax.random.randint(key, (), 0, len(corpus) - prompt)
    return _prompted(theta, jax.lax.dynamic_slice(data, (start,), (prompt,)).astype(jnp.int32))

  def step(theta, state, key):
    state, (loss, _, _) = generation_step(theta, state, key, avoided)
    return state, loss
  return UnrolledSystem(init, step, horizon)


def _kl_episode(theta, theta0, prompt, key, horizon: int, avoided):
  """(avoided fraction, mean per-character KL(p_θ ‖ p₀)) of θ's samples after `prompt`; p₀ reads the same tokens."""
  start, start0 = _prompted(theta, prompt), _prompted(theta0, prompt)

  def body(carry, t):
    state, h0 = carry
    new, (loss, _, logits) = generation_step(theta, state, step_key(key, t), avoided)
    logits0, h0 = char_lm.step(theta0, h0, state.token)
    logp, logp0 = jax.nn.log_softmax(logits), jax.nn.log_softmax(logits0)
    return (new, h0), (loss, jnp.sum(jnp.exp(logp) * (logp - logp0)))
  _, (losses, kls) = jax.lax.scan(body, (start, start0.hidden), jnp.arange(horizon))
  return jnp.mean(losses), jnp.mean(kls)


def _norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def _evaluator(theta0, prompts, segments, horizon: int, avoided, seed: int):
  prompts, segments = jnp.asarray(prompts, jnp.int32), jnp.asarray(segments, jnp.int32)
  keys = jax.random.split(jax.random.PRNGKey(seed), prompts.shape[0])

  def evaluate(theta, key):
    del key   # fixed prompts and sampling keys: the curve shows θ's progress, not sampling noise
    losses, kls = jax.vmap(lambda p, k: _kl_episode(theta, theta0, p, k, horizon, avoided))(prompts, keys)
    drift = _norm(jax.tree_util.tree_map(jnp.subtract, theta, theta0)) / _norm(theta0)
    return {"meta_loss": jnp.mean(losses), "kl_to_pretrained": jnp.mean(kls),
            "held_out_bits": char_lm.bits_per_char(theta, segments), "drift": drift}
  return evaluate


def held_out(prompt: int, eval_prompts: int, length: int = 64):
  """(training corpus, fixed prompts [S, prompt], held-out text segments [S, length + 1]) from the last 10%."""
  ids = text.corpus()
  cut = int(TRAIN_FRACTION * len(ids))
  rest = ids[cut:]
  starts = np.linspace(0, len(rest) - max(prompt, length + 1) - 1, eval_prompts).astype(np.int64)
  return (ids[:cut], np.stack([rest[s:s + prompt] for s in starts]),
          np.stack([rest[s:s + length + 1] for s in starts]))


def finetune(horizon: int = 32, prompt: int = 16, avoid: str = "e", eval_prompts: int = 64, seed: int = 0) -> Task:
  """ES fine-tuning of the shipped pretrained character model to avoid the characters in `avoid` (see the module
  docstring). Settings (ours): full episodes per estimate (K = T), 32 pairs, σ = 0.01, Adam 3e-3, 300 steps;
  pass --shaping z_scores for population-normalised rewards."""
  horizon, prompt = check_int("horizon", horizon, 1, 4096), check_int("prompt", prompt, 1, 4096)
  eval_prompts, seed = check_int("eval_prompts", eval_prompts, 1, 4096), check_int("seed", seed, 0)
  avoided = _avoid_mask(avoid)
  theta0, _ = pretrained()
  corpus, prompts, segments = held_out(prompt, eval_prompts)
  settings = {"sigma": 0.01, "num_particles": 32, "truncation_length": horizon, "outer_lr": 3e-3,
              "optimizer": "adam", "steps": 300}
  return Task("finetune", _system(corpus, horizon, prompt, avoided), theta0,
              _evaluator(theta0, prompts, segments, horizon, avoided, seed + 1), settings)


def write_pretrained(steps: int = 2000, hidden: int = 64, layers: int = 1, seed: int = 0, path: str = PRETRAINED):
  """Pre-trains unrolled_es_tasks.char_lm by backprop on the training split and writes it to `path`. Returns its held-out
  bits per character."""
  corpus, _, segments = held_out(16, 64)
  params, losses = char_lm.pretrain(char_lm.init_params(seed, text.VOCAB_SIZE, hidden, layers), corpus,
                                    steps=steps, seed=seed)
  bits = float(char_lm.bits_per_char(params, jnp.asarray(segments, jnp.int32)))
  char_lm.save_params(path, params, steps=steps, seed=seed, held_out_bits=bits, final_train_bits=float(losses[-1]))
  return bits


if __name__ == "__main__":
  import argparse
  parser = argparse.ArgumentParser(description="Write the pretrained model that the finetune task starts from.")
  parser.add_argument("--pretrain", action="store_true", help=f"pre-train by backprop and write {PRETRAINED}")
  parser.add_argument("--steps", type=int, default=2000)
  args = parser.parse_args()
  if args.pretrain:
    print(f"held-out bits per character: {write_pretrained(args.steps):.3f}")
