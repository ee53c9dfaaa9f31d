"""Standard normal draws from a key, for noise that is regenerated rather than stored.

Threefry-2x32 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011) is the
counter-based hash behind `jax.random`. This module computes exactly jax's hash (`jax.extend.random.threefry_2x32`,
bit for bit) but cheaper on CPU, where drawing full-rank noise is most of the cost of a Gaussian ES estimate:
both 32-bit words of every hash are used (jax's default partitionable mode keeps one), and the 20 rounds are
written out so XLA fuses them into one loop with the normal transform.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


@jax.jit
def threefry2x32(key, x0, x1):
  """Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
  bit for bit the hash of `jax.random`, written out unrolled so XLA fuses all 20 rounds into the consumer's
  loop. (jax lowers it on CPU as a 5-trip loop that writes both words to memory every 4 rounds.)

  Jitted, so that it is one call to trace however deeply it is vmapped (an estimate nests vmaps over particles
  and members inside scans and conds, and every primitive of the 20 rounds used to be traced through each level):
  that halved an estimate's trace time. XLA inlines the call, so the compiled program is unchanged."""
  k0, k1 = key[0], key[1]
  ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))) ^ x0
    x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x0, x1


def as_key(key):
  """A key as given, or for a Python or NumPy integer seed, jax.random.PRNGKey(seed); anything else that is not
  an array is refused with a TypeError naming `key`."""
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.PRNGKey(int(key))
  if not hasattr(key, "dtype"):
    raise TypeError(f"key must be jax.random.key(seed), jax.random.PRNGKey(seed) or an integer seed; got "
                    f"{type(key).__name__}")
  return key


def raw_key(key):
  """The uint32[2] data of a Threefry key, typed (jax.random.key), raw (jax.random.PRNGKey) or an integer seed."""
  key = as_key(key)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  if key.shape != (2,) or key.dtype != jnp.uint32:
    raise ValueError(f"key must be one Threefry key, jax.random.key(seed) or jax.random.PRNGKey(seed) (uint32[2] "
                     f"data); got data of shape {key.shape} and dtype {key.dtype}")
  return key


def random_bits(key, size: int, offset: int = 0):
  """uint32[size] = jax.extend.random.threefry_2x32(key, offset + arange(size)): counters are hashed in pairs
  (i, i + ⌈size/2⌉), so every hash yields two output words."""
  if offset + size > 2 ** 32:
    raise ValueError(f"a draw covers at most 2**32 numbers per particle (32-bit counters); got {offset + size}")
  key = raw_key(key)
  half = (size + 1) // 2
  first = jax.lax.iota(jnp.uint32, half) + jnp.uint32(offset)
  second = first + jnp.uint32(half)
  if size % 2:   # an odd count is padded with a zero counter, as jax does
    second = jnp.where(jax.lax.iota(jnp.uint32, half) == half - 1, jnp.uint32(0), second)
  a, b = threefry2x32(key, first, second)
  return jnp.concatenate([a, b])[:size]


def standard_normal(key, size: int):
  """`size` float32 standard normals from one key: Threefry-2x32 over the counters 0 … size−1,
  both output words of every hash used, then the inverse-CDF transform √2·erf⁻¹(u).

  jax.random.normal (partitionable Threefry, jax's default) hashes one counter pair per output word and keeps
  32 of its 64 bits; hashing the counters pairwise keeps both, so a draw costs half the hashes, which dominate
  ES's noise cost on CPU. Same generator, same key discipline.
  """
  bits = random_bits(key, size)
  # The top 23 bits as the mantissa of a float in [1, 2), mapped onto (−1, 1): erf⁻¹ stays finite.
  unit = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0
  u = jnp.maximum(jnp.nextafter(jnp.float32(-1.0), jnp.float32(0.0)), 2.0 * unit - 1.0)
  return jnp.float32(math.sqrt(2.0)) * jax.lax.erf_inv(u)


def draw_blocks(key, shapes):
  """float32 standard normals for several tensors from one key: one Threefry stream, cut into disjoint blocks.

  Threefry is counter-based, so blocks at different counters are independent: no two tensors share noise
  (the mistake of reusing one seed per tensor). One draw per particle rather than one per tensor keeps the
  compiled program small: the hash is emitted once, not once per leaf.
  """
  return cut(standard_normal(key, sum(math.prod(shape) for shape in shapes)), shapes)


def cut(flat, shapes):
  """Consecutive blocks of the vector `flat`, reshaped to `shapes` in order."""
  out, start = [], 0
  for shape in shapes:
    size = math.prod(shape)
    out.append(flat[start:start + size].reshape(shape))
    start += size
  return out


def split(key, num: int):
  """`num` child keys [num, 2] of a raw uint32 key: jax's original (non-partitionable) Threefry split, bit for bit,
  at the cost of one fused hash instead of jax's looped one."""
  return random_bits(key, 2 * num).reshape(num, 2)


def fold_in(key, data):
  """jax.random.fold_in(key, data), bit for bit, for a raw uint32 key (typed keys go to jax itself): the hash of
  the counter pair (0, data). Step keys are folded in at every inner step, so the fused hash matters there."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.fold_in(key, data)
  a, b = threefry2x32(key, jnp.uint32(0), jnp.asarray(data).astype(jnp.uint32))
  return jnp.stack([a, b])
