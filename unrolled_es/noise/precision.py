"""Low-precision θ: perturbations formed in float32 and rounded stochastically, so that σε is not rounded away.

A bfloat16 number near 0.7 is a multiple of 2⁻⁸ ≈ 0.0039. Formed in bfloat16, θ + σε with σ = 1e-3 rounds back to
θ for most draws, and the estimate loses most of its signal (or all of it at σ = 1e-4), silently. Here every
perturbed parameter is formed in float32 and rounded to θ's dtype stochastically (Forsythe 1959; Gupta et al.,
"Deep learning with limited numerical precision", ICML 2015): up with probability equal to the remainder's
fraction of the spacing, so that E[round(x)] = x exactly. The member then runs θ + σε + r with E[r | ε] = 0:

  * the estimate stays exactly unbiased wherever the loss is linear in the low-precision leaves, and in general
    estimates the gradient of E_r[L(θ + σε + r)], which differs from the float32 smoothing by the curvature times
    the rounding variance (at most spacing²/4 per coordinate);
  * the rounding adds variance: about (spacing/σ)²/6 per coordinate relative to the noise's own, which
    `check_resolution` reports when σ is below the spacing.

The rounding bits come from the particle's draw key (folded with a constant), so the same key gives the same
result. Noise is drawn, summed (PES's ξ) and combined into the gradient in float32; the gradient is cast to θ's
dtypes at the end.
"""
import warnings

import jax
import jax.numpy as jnp

from unrolled_es.core import prng

NARROW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def is_narrow(x) -> bool:
  """Whether x's dtype is a float narrower than float32 (its perturbations need stochastic rounding)."""
  return jnp.dtype(jnp.result_type(x)) in NARROW


def stochastic_round(x, dtype, bits):
  """x (float32) rounded to `dtype` up or down, choosing the far neighbour with probability |x − near|/spacing,
  from uint32 `bits` of x's shape: unbiased, E[result] = x."""
  near = x.astype(dtype)
  near32 = near.astype(jnp.float32)
  toward = jnp.where(near32 > x, -jnp.inf, jnp.inf).astype(dtype)
  far = jnp.nextafter(near, toward)
  gap = jnp.abs(far.astype(jnp.float32) - near32)
  p = jnp.where(gap > 0, jnp.abs(x - near32) / jnp.where(gap > 0, gap, 1.0), 0.0)
  u = (bits >> 8).astype(jnp.float32) * jnp.float32(2.0 ** -24)
  return jnp.where(u < p, far, near)


def add_scaled(x, e, scale, bits=None):
  """x + scale·e formed in float32 (or wider), returned in x's dtype: stochastically rounded when x is narrow and
  `bits` are given, else rounded to nearest."""
  dtype = jnp.result_type(x)
  work = jnp.promote_types(dtype, jnp.float32)
  y = x.astype(work) + jnp.asarray(scale, work) * e.astype(work)
  if bits is None or not is_narrow(x):
    return y.astype(dtype)
  return stochastic_round(y, dtype, bits)


def rounding_bits(key, leaves):
  """uint32 bits for every narrow leaf (None for the others), from one Threefry stream cut into blocks."""
  if key is None:
    return [None] * len(leaves)
  sizes = [int(jnp.size(x)) if is_narrow(x) else 0 for x in leaves]
  if not any(sizes):
    return [None] * len(leaves)
  flat, out, start = prng.random_bits(key, sum(sizes)), [], 0
  for x, size in zip(leaves, sizes):
    out.append(flat[start:start + size].reshape(jnp.shape(x)) if size else None)
    start += size
  return out


def check_resolution(theta, sigma: float, mask=None):
  """Warns, once per trace, when σ is below the spacing of a narrow leaf's dtype near 1: its perturbations are then
  kept only by stochastic rounding, at the cost of extra variance (see the module docstring)."""
  masks = jax.tree_util.tree_leaves(mask) if mask is not None else None
  for i, (path, x) in enumerate(jax.tree_util.tree_leaves_with_path(theta)):
    if not is_narrow(x) or (masks is not None and not masks[i].any()):
      continue
    spacing = float(jnp.finfo(jnp.result_type(x)).eps)
    if sigma < spacing:
      warnings.warn(
          f"sigma={sigma:g} is below the spacing of {jnp.dtype(jnp.result_type(x)).name} numbers near 1 "
          f"({spacing:g}) at theta leaf {jax.tree_util.keystr(path) or '<root>'}: θ ± σε is formed in float32 and "
          f"rounded stochastically (unbiased), which adds variance of about (spacing·|θ|/σ)²/6 per coordinate; use "
          f"a float32 theta or sigma >= {spacing:g} to avoid it", stacklevel=4)
      return
