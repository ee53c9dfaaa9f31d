"""Hand-written utilities against the library function that does the same, for the choices in docs/dependencies.md.

    python docs/measure_utilities.py

  * noise draws: unrolled_es.core.prng.standard_normal against jax.random.normal (2¹² and 2¹⁶ numbers per particle,
    64 particles, vmapped and jitted and summed, as an ES estimate draws and consumes them): median of 15 calls;
  * gradient clipping: unrolled_es.clip_gradient's scaling against optax.clip_by_global_norm on the same
    pytree: the largest difference (they compute the same ĝ·min(1, c/‖ĝ‖)).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unrolled_es.core import prng
from unrolled_es.options.clipping import global_norm


def median_time(fn, *args, repeats=15):
  jax.block_until_ready(fn(*args))   # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def draws(size=1 << 16, particles=64):
  keys = jax.random.split(jax.random.PRNGKey(0), particles)
  ours = jax.jit(jax.vmap(lambda k: prng.standard_normal(prng.raw_key(k), size)))
  theirs = jax.jit(jax.vmap(lambda k: jax.random.normal(k, (size,))))
  # a reduction consumes the draw, as the gradient's weighted sum does, so neither is timed writing to memory only
  t_ours = median_time(jax.jit(lambda k: jnp.sum(ours(k) ** 2)), keys)
  t_theirs = median_time(jax.jit(lambda k: jnp.sum(theirs(k) ** 2)), keys)
  return t_ours, t_theirs


def clipping(max_norm=1.0):
  tree = {"w": jax.random.normal(jax.random.PRNGKey(1), (256, 256)), "b": jnp.arange(256.0)}
  norm = global_norm(tree)
  ours = jax.tree_util.tree_map(lambda g: g * jnp.minimum(1.0, max_norm / norm), tree)
  theirs, _ = optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
  return max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(ours),
                                                              jax.tree_util.tree_leaves(theirs)))


def main():
  for size in (1 << 12, 1 << 16):
    t_ours, t_theirs = draws(size)
    print(f"normal draws, 64 x {size}: unrolled_es.core.prng {t_ours * 1e3:.2f} ms, jax.random.normal "
          f"{t_theirs * 1e3:.2f} ms ({t_theirs / t_ours:.2f}x)")
  print(f"clipping: largest |ours - optax.clip_by_global_norm| = {clipping():.3g}")


if __name__ == "__main__":
  main()
