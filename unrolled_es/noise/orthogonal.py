"""Orthogonal directions within a population (Choromanski et al., "Structured evolution with compact architectures
for scalable policy optimization", ICML 2018).

N independent Gaussian directions in d dimensions are nearly orthogonal only when N ≪ d. Drawing them exactly
orthogonal, in blocks of at most d, and giving each the length of an independent Gaussian vector (a χ_d radius),
keeps every direction marginally N(0, I) — so each particle's term, and the estimate, stays unbiased — while the
particles stop duplicating each other's information: the estimate's variance can only fall (and falls most when
N is comparable to d). For low-rank noise the factors are orthogonalised instead (the a's of a matrix across
particles, and the b's), which makes the particles' a bᵀ orthogonal in the Frobenius sense.

Orthogonality couples the particles' draws, so it applies where every particle draws at once: estimators that
redraw each window (PES, truncated ES) or run whole episodes (full ES); others (ES-Single, GPES-k with k > K) are
refused when built. Draws at a particle's own reset (the new episodes of a window with mid-window resets) stay
independent. A noise with per-coordinate scales s (draws s⊙ε) is orthogonalised in ε and scaled afterwards: rebuilding
the rows s⊙ε themselves would give them the radii of unit-variance vectors, which the estimate's division by s² does
not expect: a bias. Masks are refused: a masked draw's rows live in
fewer dimensions than the radii assume.
"""
import jax
import jax.numpy as jnp

from unrolled_es.noise.base import LowRank, Noise


def gram_schmidt(block):
  """Orthonormal rows spanning the rows of `block` [m, d], m ≤ d, in order: Gram–Schmidt with the projection done
  twice (accurate in float32). Of i.i.d. Gaussian rows this gives Haar-distributed orthonormal rows (what QR with
  R's diagonal made positive gives). Written in matmuls rather than jnp.linalg.qr: XLA's CPU runtime deadlocked
  on the LAPACK call batched inside the estimators' vmapped scans (PES, 16 particles, 4 repeats of a 1758-d θ)."""
  m = block.shape[0]

  def one(i, q):
    v = block[i]
    for _ in range(2):
      v = v - q.T @ (q @ v)   # rows ≥ i of q are still zero
    # A zero row, or one in the span of the earlier rows, gives a zero row rather than a direction of rounding noise.
    norm = jnp.linalg.norm(v)
    keep = norm > 1e-5 * jnp.linalg.norm(block[i])
    return q.at[i].set(jnp.where(keep, v / jnp.where(keep, norm, 1.0), 0.0))
  return jax.lax.fori_loop(0, m, one, jnp.zeros_like(block))


def orthogonal_rows(x, key):
  """Rows of x [N, d] replaced, in blocks of at most d, by orthonormal rows (Haar-distributed) scaled to the norms
  of independent Gaussian vectors."""
  n, d = x.shape
  size = min(n, d)
  count = -(-n // size)
  # All blocks at once (a Python loop would emit one Gram-Schmidt per block: N of them when d = 1). The last
  # block's padding rows are zero and come after its real rows, so they leave those unchanged.
  padded = jnp.concatenate([x, jnp.zeros((count * size - n, d), x.dtype)]).reshape(count, size, d)
  rows = jax.vmap(gram_schmidt)(padded).reshape(count * size, d)[:n]
  norms = jnp.linalg.norm(jax.random.normal(key, (n, d)), axis=1)
  return rows * norms[:, None]


def _orthogonalise(batch, key):
  """Every leaf's draws [N, ...] orthogonal across the particles (low-rank factors: each factor's columns)."""
  leaves, treedef = jax.tree_util.tree_flatten(batch, is_leaf=lambda e: isinstance(e, LowRank))
  keys = jax.random.split(key, 2 * len(leaves))
  out = []
  for i, e in enumerate(leaves):
    if isinstance(e, LowRank):
      out.append(LowRank(_orthogonal_factor(e.a, keys[2 * i]), _orthogonal_factor(e.b, keys[2 * i + 1])))
    else:
      out.append(orthogonal_rows(e.reshape(e.shape[0], -1), keys[2 * i]).reshape(e.shape))
  return jax.tree_util.tree_unflatten(treedef, out)


def _orthogonal_factor(f, key):
  """A factor [N, m, r]: each of its r columns orthogonalised across particles."""
  cols = [orthogonal_rows(f[:, :, j], jax.random.fold_in(key, j)) for j in range(f.shape[-1])]
  return jnp.stack(cols, -1)


def _check_wrapped(noise):
  if not isinstance(noise, Noise):
    raise ValueError(f"noise must be an unrolled_es noise (gaussian(...) or low_rank(...)); got {noise!r}")
  if noise.joint is not None:
    raise ValueError(f"orthogonal cannot wrap noise {noise.name}: its population's draws are already transformed "
                     f"jointly")
  if noise.unit is None:
    raise ValueError(f"orthogonal cannot wrap noise {noise.name}: it has no fixed coordinates in which its "
                     f"covariance is I (guided or masked noise) to orthogonalise in")


def orthogonal(noise: Noise) -> Noise:
  """`noise` whose draws for a population are orthogonal (see the module docstring).

  The directions are orthogonalised in the wrapped noise's unit coordinates (where its covariance is I: ε, not
  s⊙ε for per-coordinate scales) and mapped back, so every draw keeps the wrapped noise's distribution. The result
  needs every particle to draw at once and all of θ (a mask would leave masked coordinates in the directions)."""
  _check_wrapped(noise)

  def joint(batch, key):
    return noise.unit(_orthogonalise(noise.unit(batch), key), inverse=True)

  return noise._replace(joint=joint, name=f"orthogonal({noise.name})",
                        needs=noise.needs | {"draws_together", "unmasked"})
