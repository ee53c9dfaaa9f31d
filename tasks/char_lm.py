"""A small float character language model: embedding, minGRU layers with a ReLU MLP, and a linear head.

Per token, with x the embedding of the token read and h_l the state of layer l:

    z = σ(x W_z + b_z),  h̃ = x W_h + b_h,  h_l ← h_l + z ⊙ (h̃ − h_l)      (minGRU; Feng et al. 2024)
    x ← x + h_l,         x ← x + relu(x W_1) W_2,                         (residual state and MLP)
    logits = x W_out.

The same layout in int8 is unrolled_es_tasks.int_lm's integer model, so the two have the same parameter count. Matrices go
through `unrolled_es.linear`, so factored ES noise (ue.low_rank(r, factored=True)) applies without forming a
per-particle matrix; the embedding is a one-hot row times the table for the same reason.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unrolled_es.layers.plain import linear


def init_params(seed: int, vocab: int, hidden: int, layers: int, mlp_ratio: int = 2):
  """Float32 parameters, N(0, 1/fan_in) matrices and zero biases (the gate's bias at 0: z = ½ to start)."""
  rng = np.random.default_rng(seed)
  normal = lambda m, n: jnp.asarray(rng.standard_normal((m, n)) / np.sqrt(m), jnp.float32)
  cells = [{"wz": normal(hidden, hidden), "bz": jnp.zeros(hidden), "wh": normal(hidden, hidden),
            "bh": jnp.zeros(hidden), "w1": normal(hidden, mlp_ratio * hidden),
            "w2": normal(mlp_ratio * hidden, hidden)} for _ in range(layers)]
  return {"embed": jnp.asarray(rng.standard_normal((vocab, hidden)), jnp.float32), "layers": cells,
          "head": normal(hidden, vocab)}


def initial_state(params):
  """Zero states [layers, hidden]."""
  hidden = params["head"].shape[0] if not hasattr(params["head"], "w") else params["head"].w.shape[0]
  return jnp.zeros((len(params["layers"]), hidden), jnp.float32)


def step(params, state, token):
  """(logits [V], new states) after reading `token` (int32 scalar)."""
  vocab = jax.tree_util.tree_leaves(params["embed"])[0].shape[0]
  x = linear(jax.nn.one_hot(token, vocab, dtype=jnp.float32), params["embed"])
  new = []
  for cell, h in zip(params["layers"], state):
    z = jax.nn.sigmoid(linear(x, cell["wz"]) + cell["bz"])
    h = h + z * (linear(x, cell["wh"]) + cell["bh"] - h)
    x = x + h
    x = x + linear(jax.nn.relu(linear(x, cell["w1"])), cell["w2"])
    new.append(h)
  return linear(x, params["head"]), jnp.stack(new)


def sequence_logits(params, tokens, state=None):
  """Logits [T, V] after each of `tokens` [T], from `state` (zeros by default)."""
  state = initial_state(params) if state is None else state

  def body(s, token):
    logits, s = step(params, s, token)
    return s, logits
  return jax.lax.scan(body, state, tokens)[1]


def bits_per_char(params, segments):
  """Mean −log₂ p(next) over segments [B, T + 1] (each read from a zero state)."""
  logits = jax.vmap(lambda s: sequence_logits(params, s[:-1]))(segments)
  logp = jax.nn.log_softmax(logits)
  picked = jnp.take_along_axis(logp, segments[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
  return -jnp.mean(picked) / jnp.log(2.0)


def pretrain(params, corpus: np.ndarray, *, steps: int, batch: int = 32, length: int = 64, lr: float = 3e-3,
             seed: int = 0):
  """Backprop (BPTT through `length` characters, Adam with cosine decay) on random segments of `corpus`.
  Returns (params, losses in bits per character per step)."""
  opt = optax.adam(optax.cosine_decay_schedule(lr, steps))
  data = jnp.asarray(corpus)

  @jax.jit
  def update(p, opt_state, key):
    starts = jax.random.randint(key, (batch,), 0, len(corpus) - length - 1)
    segments = jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (length + 1,)))(starts).astype(jnp.int32)
    loss, grads = jax.value_and_grad(bits_per_char)(p, segments)
    updates, opt_state = opt.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  opt_state, losses = opt.init(params), []
  for i in range(steps):
    params, opt_state, loss = update(params, opt_state, jax.random.PRNGKey(seed * 100003 + i))
    losses.append(loss)
  return params, np.asarray(jax.device_get(losses))


def save_params(path: str, params, **metadata):
  """Writes params as a flat .npz ("embed", "head", "layers/<i>/<name>") plus scalar metadata."""
  flat = {"embed": params["embed"], "head": params["head"]}
  for i, cell in enumerate(params["layers"]):
    flat.update({f"layers/{i}/{k}": v for k, v in cell.items()})
  np.savez(path, **{k: np.asarray(v, np.float32) for k, v in flat.items()},
           **{f"meta/{k}": np.asarray(v) for k, v in metadata.items()})


def load_params(path: str):
  """(params, metadata) from a file written by `save_params`."""
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  layers = sorted({int(k.split("/")[1]) for k in arrays if k.startswith("layers/")})
  cells = [{k.split("/")[2]: jnp.asarray(v) for k, v in arrays.items() if k.startswith(f"layers/{i}/")}
           for i in layers]
  params = {"embed": jnp.asarray(arrays["embed"]), "layers": cells, "head": jnp.asarray(arrays["head"])}
  return params, {k[5:]: v.item() for k, v in arrays.items() if k.startswith("meta/")}
