"""Integer layers: int8 weights and activations, int32 accumulation, saturation instead of overflow.

The integer models of EGGROLL (Sarkar et al., "Evolution Strategies at the Hyperscale", 2025) run without any
floating-point arithmetic. Every value is a fixed-point int8 with FIXED_POINT = 4 fractional bits (a real value v
is stored as round(16·v)) and saturates at ±MAX = ±127: a result that would leave the range is clipped to it
rather than wrapping around, so saturation is the nonlinearity (a hard tanh).

  linear(x, W)     y = sat(⌊(x W) / 2^k⌋) for x int8 [..., m], W int8 [m, n]: int32 accumulation, the shift
                   by k = 4 + ⌊⌊log₂ m⌋/2⌋ undoing one fixed-point factor and most of the fan-in's growth
                   (√m for weights of size ~16).
                   With W an `IntPerturbedMatrix` (W, a, b, s): x W + ⌊((x a) bᵀ) / 2^s⌋, the low-rank
                   perturbation applied inside the int32 accumulator without forming W + a bᵀ/2^s.
  embed(E, ids)    the rows E[ids], perturbed likewise by ⌊a[ids] bᵀ / 2^s⌋.
  min_gru(c, x, h) a minGRU cell (Feng et al., "Were RNNs All We Needed?", 2024): gate z = σ(W_z x + b_z),
                   candidate h̃ = W_h x + b_h, h' = h + z·(h̃ − h); in integers σ is the hard sigmoid
                   clip(½ + u/4, 0, 1) (σ's slope at 0), i.e. g/256 with g = clip(128 + 4·u₁₆, 0, 256) for u₁₆
                   the fixed-point pre-activation, and the mix is one int32 product and a shift by 8.
  log2_softmax_target(logits, t)   log₂ p(t) of p ∝ 2^(logits/16), in 1/16 bits, from a 255-entry table of
                   2^(k/16) and a 256-entry table of log₂ mantissas (the leading-zero count gives the exponent).

Overflow: |x a| ≤ m·127² and |(x a) bᵀ| ≤ m·r·127³, so int32 accumulation is exact while m·r ≤ 1024
(`check_fan_in`); the unperturbed x W needs only m·127² < 2³¹.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FIXED_POINT = 4
ONE = 1 << FIXED_POINT          # the fixed-point representation of 1.0
MAX = 127                       # activations and weights live in [−MAX, MAX]
MAX_FAN_IN_TIMES_RANK = 1024    # m·r·127³ < 2³¹: a perturbed matmul cannot overflow int32


class IntPerturbedMatrix(NamedTuple):
  """An int8 matrix W [m, n] with a rank-r perturbation ⌊a bᵀ / 2^shift⌋, kept in factors.

  a int8 [m, r] (the member's sign already applied), b int8 [n, r], shift int32 (FIXED_POINT + σ's shift). The
  shift applies to the accumulated x a bᵀ, not to a bᵀ entry by entry, so small perturbations are not rounded away."""
  w: jax.Array
  a: jax.Array
  b: jax.Array
  shift: jax.Array

  def correction(self, xa):
    """⌊(xa) bᵀ / 2^shift⌋ in int32, for xa = x a (int32 [..., r]); r broadcast products, no r-long matmul."""
    b = self.b.astype(jnp.int32)
    product = sum(xa[..., k:k + 1] * b[:, k] for k in range(self.a.shape[-1]))
    return jnp.right_shift(product, self.shift)


def saturate(x):
  """int8 of x clipped to [−MAX, MAX] (never wrapping)."""
  return jnp.clip(x, -MAX, MAX).astype(jnp.int8)


def add(*xs):
  """Saturating sum of int8 arrays (accumulated in int32)."""
  return saturate(sum(x.astype(jnp.int32) for x in xs))


def relu(x):
  return jnp.maximum(x, jnp.zeros((), x.dtype))


def accumulate(x, w):
  """x W in int32 (int8 operands, exact), plus the perturbation when W is an IntPerturbedMatrix."""
  if isinstance(w, IntPerturbedMatrix):
    out = jnp.matmul(x, w.w, preferred_element_type=jnp.int32)
    return out + w.correction(jnp.matmul(x, w.a, preferred_element_type=jnp.int32))
  return jnp.matmul(x, w, preferred_element_type=jnp.int32)


def fan_in_shift(fan_in: int) -> int:
  """log₂ of the divisor 16·2^⌊⌊log₂ m⌋/2⌋: one fixed-point factor times a power of two in (√m/2, √m] (a sum of m
  unit-scale products grows as √m). A power of two, so the division is an arithmetic shift (exactly ⌊x / 2^k⌋;
  integer division has no vector instruction on CPUs)."""
  return FIXED_POINT + (max(1, fan_in).bit_length() - 1) // 2


def linear(x, w):
  """sat(⌊x W / 2^k⌋), k = fan_in_shift(m): int8 [..., m] by int8 [m, n] (or an IntPerturbedMatrix) to int8
  [..., n]."""
  weights = w.w if isinstance(w, IntPerturbedMatrix) else w
  return saturate(jnp.right_shift(accumulate(x, w), fan_in_shift(weights.shape[0])))


def embed(table, ids):
  """Rows of an int8 table [V, H] (or an IntPerturbedMatrix over it) for integer ids."""
  if not isinstance(table, IntPerturbedMatrix):
    return table[ids]
  rows = table.w[ids].astype(jnp.int32)
  return saturate(rows + table.correction(table.a[ids].astype(jnp.int32)))


def min_gru(cell, x, h):
  """One step of the integer minGRU: cell = {"wz", "bz", "wh", "bh"}; x int8 [..., m], h int8 [..., H]."""
  u = add(linear(x, cell["wz"]), cell["bz"]).astype(jnp.int32)
  gate = jnp.clip(128 + 4 * u, 0, 256)                       # the hard sigmoid, ×256
  candidate = add(linear(x, cell["wh"]), cell["bh"]).astype(jnp.int32)
  state = h.astype(jnp.int32)
  return saturate(state + jnp.right_shift(gate * (candidate - state), 8))


def _tables():
  k = np.arange(2 * MAX + 1)
  exp2 = np.round(np.exp2(k / ONE) * ONE).astype(np.int32)                       # 2^(k/16), ×16
  log2_mantissa = np.round(np.log2(1 + np.arange(256) / 256) * ONE).astype(np.int32)  # log₂(1 + j/256), ×16
  return exp2, log2_mantissa


EXP2_TABLE, LOG2_MANTISSA_TABLE = _tables()


def log2_fixed(s):
  """16·log₂(s) for int32 s ≥ 1, rounded from its top 9 bits: exponent from the leading zeros, mantissa by table."""
  exponent = 31 - jax.lax.clz(s)
  mantissa = jnp.where(exponent >= 8, jnp.right_shift(s, jnp.maximum(exponent - 8, 0)),
                       jnp.left_shift(s, jnp.maximum(8 - exponent, 0)))     # in [256, 512)
  return ONE * exponent + jnp.asarray(LOG2_MANTISSA_TABLE)[mantissa - 256]


def log2_softmax_target(logits, target):
  """16·log₂ p(target) (int32, ≤ about 0) for p ∝ 2^(logits/16), logits int8 [..., V] (V ≤ 2048 keeps the sum
  of at most V·2^19.9 in int32)."""
  k = logits.astype(jnp.int32) + MAX                                   # in [0, 254]
  total = jnp.sum(jnp.asarray(EXP2_TABLE)[k], axis=-1)
  picked = jnp.take_along_axis(k, target[..., None], axis=-1)[..., 0]
  return picked + FIXED_POINT * ONE - log2_fixed(total)                # log₂(16·2^(k/16)) = k/16 + 4


def exact_bits(logits, target):
  """−log₂ p(target) in float32 for p ∝ 2^(logits/16): the integer model's exact loss, for evaluation."""
  z = logits.astype(jnp.float32) * jnp.float32(math.log(2.0) / ONE)
  picked = jnp.take_along_axis(jax.nn.log_softmax(z), target[..., None], axis=-1)[..., 0]
  return -picked / jnp.float32(math.log(2.0))


def check_fan_in(name: str, fan_in: int, rank: int):
  if fan_in * rank > MAX_FAN_IN_TIMES_RANK:
    raise ValueError(f"{name}: fan-in × rank must be at most {MAX_FAN_IN_TIMES_RANK} so that an int32 perturbed "
                     f"matmul cannot overflow; got {fan_in} × {rank}")
