"""Small plain-JAX models for the learned optimizer's inner problems: MLP, CNN, GRU/LSTM, attention, and a deep
MLP whose layers are one stacked kernel scanned over.

Every model is a pair init(key, scale) -> params and apply(params, x) -> outputs. Weights are LeCun-normal
(N(0, 1/fan_in)) times the episode's initialisation scale, embeddings N(0, 1) times it, biases 0. Leaf names
follow `unrolled_es_tasks.lopt_leaves`' default rule, so each gets its μP kind without annotation: "embed…"
tables, "conv…" kernels (kh, kw, c_in, c_out), a stacked (L, m, m) kernel, and (m, n) matrices.
"""
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from unrolled_es_tasks.models import check_activation


class Model(NamedTuple):
  init: Callable    # (key, scale) -> params
  apply: Callable   # (params, inputs) -> outputs


def _dense(key, m, n, scale):
  return {"w": scale * jax.random.normal(key, (m, n)) / math.sqrt(m), "b": jnp.zeros((n,))}


def mlp(d_in, widths, d_out, activation="gelu") -> Model:
  """x (B, d_in) -> (B, d_out); hidden widths `widths`."""
  act, sizes = check_activation(activation), (d_in,) + tuple(widths) + (d_out,)

  def init(key, scale):
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"dense_{i}": _dense(k, m, n, scale) for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}

  def apply(params, x):
    for i in range(len(sizes) - 1):
      x = x @ params[f"dense_{i}"]["w"] + params[f"dense_{i}"]["b"]
      x = act(x) if i < len(sizes) - 2 else x
    return x

  return Model(init, apply)


def cnn(side, channels, d_out, activation="relu") -> Model:
  """x (B, side·side) grey images -> (B, d_out): 3×3 convolutions (the second and later with stride 2), a
  global mean pool and a linear head."""
  act, chans = check_activation(activation), (1,) + tuple(channels)

  def init(key, scale):
    keys = jax.random.split(key, len(chans))
    params = {f"conv_{i}": {"w": scale * jax.random.normal(k, (3, 3, a, b)) / math.sqrt(9 * a), "b": jnp.zeros((b,))}
              for i, (k, a, b) in enumerate(zip(keys[:-1], chans[:-1], chans[1:]))}
    return {**params, "head": _dense(keys[-1], chans[-1], d_out, scale)}

  def apply(params, x):
    h = x.reshape(x.shape[0], side, side, 1)
    for i in range(len(chans) - 1):
      stride = 1 if i == 0 else 2
      h = jax.lax.conv_general_dilated(h, params[f"conv_{i}"]["w"], (stride, stride), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      h = act(h + params[f"conv_{i}"]["b"])
    return h.mean((1, 2)) @ params["head"]["w"] + params["head"]["b"]

  return Model(init, apply)


def recurrent(vocab, embed_dim, hidden, cell="gru") -> Model:
  """tokens (B, L) int -> next-token logits (B, L, vocab), a GRU (Cho et al. 2014) or an LSTM (Hochreiter &
  Schmidhuber 1997) scanned over time."""
  if cell not in ("gru", "lstm"):
    raise ValueError(f"cell must be 'gru' or 'lstm'; got {cell!r}")
  gates = 3 if cell == "gru" else 4

  def init(key, scale):
    k = jax.random.split(key, 4)
    return {"embed": scale * jax.random.normal(k[0], (vocab, embed_dim)),
            "cell": {"wx": _dense(k[1], embed_dim, gates * hidden, scale)["w"],
                     "wh": _dense(k[2], hidden, gates * hidden, scale)["w"], "b": jnp.zeros((gates * hidden,))},
            "head": _dense(k[3], hidden, vocab, scale)}

  def step(c, carry, x):
    h, mem = carry
    z = x @ c["wx"] + h @ c["wh"] + c["b"]
    if cell == "gru":
      r, u = jax.nn.sigmoid(z[:, :hidden]), jax.nn.sigmoid(z[:, hidden:2 * hidden])
      n = jnp.tanh(x @ c["wx"][:, 2 * hidden:] + r * (h @ c["wh"][:, 2 * hidden:]) + c["b"][2 * hidden:])
      h = (1 - u) * n + u * h
      return (h, mem), h
    i, f, g, o = jnp.split(z, 4, axis=-1)
    mem = jax.nn.sigmoid(f + 1.0) * mem + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(mem)
    return (h, mem), h

  def apply(params, tokens):
    x = params["embed"][tokens].swapaxes(0, 1)                       # (L, B, E)
    zero = jnp.zeros((tokens.shape[0], hidden))
    _, hs = jax.lax.scan(lambda carry, xt: step(params["cell"], carry, xt), (zero, zero), x)
    return hs.swapaxes(0, 1) @ params["head"]["w"] + params["head"]["b"]

  return Model(init, apply)


def _rms_norm(x):
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + 1e-6)


def attention(vocab, length, dim, heads=2) -> Model:
  """tokens (B, L) -> next-token logits (B, L, vocab): one pre-norm causal self-attention block (Vaswani et
  al. 2017) with a 4×-wide MLP, learned position embeddings and a linear head."""
  def init(key, scale):
    k = jax.random.split(key, 8)
    return {"embed": scale * jax.random.normal(k[0], (vocab, dim)),
            "pos_embed": scale * jax.random.normal(k[1], (length, dim)),
            "attn": {n: _dense(kk, dim, dim, scale)["w"] for n, kk in zip(("wq", "wk", "wv", "wo"), k[2:6])},
            "mlp": {"w1": _dense(k[6], dim, 4 * dim, scale), "w2": _dense(k[7], 4 * dim, dim, scale)},
            "head": _dense(jax.random.fold_in(key, 9), dim, vocab, scale)}

  def apply(params, tokens):
    b, n = tokens.shape
    x = params["embed"][tokens] + params["pos_embed"][:n]
    a = params["attn"]
    h = _rms_norm(x)
    split = lambda y: y.reshape(b, n, heads, dim // heads).transpose(0, 2, 1, 3)
    q, k, v = split(h @ a["wq"]), split(h @ a["wk"]), split(h @ a["wv"])
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dim // heads)
    logits = jnp.where(jnp.tril(jnp.ones((n, n), bool)), logits, -1e9)
    y = (jax.nn.softmax(logits, -1) @ v).transpose(0, 2, 1, 3).reshape(b, n, dim)
    x = x + y @ a["wo"]
    m = params["mlp"]
    x = x + jax.nn.gelu(_rms_norm(x) @ m["w1"]["w"] + m["w1"]["b"]) @ m["w2"]["w"] + m["w2"]["b"]
    return _rms_norm(x) @ params["head"]["w"] + params["head"]["b"]

  return Model(init, apply)


def stacked_mlp(d_in, width, depth, d_out, activation="gelu") -> Model:
  """x (B, d_in) -> (B, d_out): a residual MLP whose `depth` hidden layers are one (depth, width, width) kernel
  scanned over (the layout of scan-over-layers transformers), between an input and an output matrix."""
  act = check_activation(activation)

  def init(key, scale):
    k = jax.random.split(key, 3)
    layers = scale * jax.random.normal(k[1], (depth, width, width)) / math.sqrt(width)
    return {"input": _dense(k[0], d_in, width, scale), "layers": {"w": layers, "b": jnp.zeros((depth, width))},
            "head": _dense(k[2], width, d_out, scale)}

  def apply(params, x):
    h = act(x @ params["input"]["w"] + params["input"]["b"])
    h, _ = jax.lax.scan(lambda h, wb: (h + act(h @ wb[0] + wb[1]) / math.sqrt(depth), None), h,
                        (params["layers"]["w"], params["layers"]["b"]))
    return h @ params["head"]["w"] + params["head"]["b"]

  return Model(init, apply)
