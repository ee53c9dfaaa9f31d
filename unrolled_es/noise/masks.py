"""Masks: coordinates of θ that ES never perturbs and that get exactly zero gradient.

A mask is a θ-shaped pytree of booleans (bool arrays; numbers are refused, so that a float mask of weights or an
integer index array is not mistaken for one): True where θ is trained. `masked(noise, mask)` is the
noise restricted to those coordinates: a leaf that is entirely masked costs no draw at all, and a partly masked
leaf gets its draw multiplied by the mask. The estimate's coordinates outside the mask are then exactly zero, so
an optax update (without weight decay) leaves them where they are. Uses: sparse ES and lottery tickets (Lange &
Sprekeler 2023), and statistics kept in θ but updated outside the estimate (observation normalisation, ARS).

A partly masked matrix under low-rank noise is drawn as the dense masked product a bᵀ/√r ⊙ mask: a mask is not
low rank, so neither is the draw it leaves.
"""
import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es.noise.base import LowRank, Noise, Use

_OFF, _ON, _PARTIAL = "off", "on", "partial"


def check_mask(mask):
  """None, or a pytree of concrete boolean arrays; returned as numpy booleans."""
  if mask is None:
    return None
  leaves, treedef = jax.tree_util.tree_flatten(mask)
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(mask):
    where = jax.tree_util.keystr(path) or "<root>"
    if isinstance(leaf, jax.core.Tracer):
      raise ValueError(f"mask leaf {where} must be a concrete array (built outside jit), not a traced value")
    a = np.asarray(leaf)
    if a.dtype != bool:
      raise ValueError(f"mask leaf {where} must hold booleans (True where θ is trained); got dtype {a.dtype}")
    out.append(a.astype(bool))
  if not out:
    raise ValueError("mask must be None or a θ-shaped pytree of booleans; got a pytree with no leaves")
  return jax.tree_util.tree_unflatten(treedef, out)


def check_mask_matches(mask, theta):
  """The mask must have θ's structure and every leaf θ's shape."""
  if jax.tree_util.tree_structure(mask) != jax.tree_util.tree_structure(theta):
    raise ValueError(f"mask must have theta's pytree structure; got {jax.tree_util.tree_structure(mask)} for "
                     f"theta {jax.tree_util.tree_structure(theta)}")
  for path, m, x in zip(*zip(*jax.tree_util.tree_leaves_with_path(mask)), jax.tree_util.tree_leaves(theta)):
    if m.shape != jnp.shape(x):
      raise ValueError(f"mask leaf {jax.tree_util.keystr(path)} has shape {m.shape}; theta's has {jnp.shape(x)}")


def apply_mask(tree, mask):
  """`tree` with every coordinate outside the mask set to zero (mask None: unchanged)."""
  if mask is None:
    return tree
  return jax.tree_util.tree_map(lambda x, m: jnp.where(m, x, jnp.zeros((), x.dtype)), tree, mask)


def masked(noise: Noise, mask) -> Noise:
  """`noise` restricted to the coordinates where `mask` is True (see the module docstring)."""
  noise.check(Use("mask=", masked=True))
  if not noise.leafwise:
    return _masked_whole(noise, mask)
  leaves, treedef = jax.tree_util.tree_flatten(mask)
  kinds = [_OFF if not m.any() else _ON if m.all() else _PARTIAL for m in leaves]
  live = [i for i, kind in enumerate(kinds) if kind != _OFF]
  pick = lambda xs: [xs[i] for i in live]
  eps_leaves = lambda eps: treedef.flatten_up_to(eps)

  def spread(values, fill):
    out, it = [], iter(values)
    for i, kind in enumerate(kinds):
      out.append(fill(i) if kind == _OFF else next(it))
    return jax.tree_util.tree_unflatten(treedef, out)

  # A partly masked leaf under dense noise draws only its live coordinates (a static gather): a 90%-sparse mask
  # costs a tenth of the draws. Under low-rank noise the factors cover the whole matrix, so it is masked densely.
  compacted = {i: np.flatnonzero(leaves[i]) for i in live if kinds[i] == _PARTIAL and not noise.compact}

  def sample(key, theta):
    xs = jax.tree_util.tree_leaves(theta)
    templates = [jnp.zeros((compacted[i].size,), jnp.float32) if i in compacted else xs[i] for i in live]
    drawn = noise.sample(key, templates)
    drawn = [_scatter(e, compacted[i], leaves[i].shape) if i in compacted else
             jnp.where(leaves[i], _dense(noise, e), 0.0) if kinds[i] == _PARTIAL else e
             for i, e in zip(live, drawn)]
    return spread(drawn, lambda i: jnp.zeros((0,), jnp.float32))

  def perturb(theta, eps, scale, key=None):
    xs = jax.tree_util.tree_leaves(theta)
    moved = noise.perturb(pick(xs), pick(eps_leaves(eps)), scale, key)
    return spread(moved, lambda i: xs[i])

  def combine(coeffs, batch):
    sums = noise.combine(coeffs, pick(eps_leaves(batch)))
    return spread(sums, lambda i: jnp.zeros(leaves[i].shape, jnp.float32))

  def dense(eps):
    return spread(noise.dense(pick(eps_leaves(eps))), lambda i: jnp.zeros(leaves[i].shape, jnp.float32))

  return noise._replace(sample=sample, perturb=perturb, combine=combine, dense=dense, unit=None,
                        name=f"{noise.name} under a mask", compact=noise.compact and _PARTIAL not in kinds)


def _masked_whole(noise: Noise, mask) -> Noise:
  """For noise that needs all of θ at once (per-coordinate scales): every leaf is drawn, then masked."""
  def sample(key, theta):
    return apply_mask(jax.tree_util.tree_map(lambda e: e, noise.sample(key, theta)), mask)

  def combine(coeffs, batch):
    return apply_mask(noise.combine(coeffs, batch), mask)

  return noise._replace(sample=sample, combine=combine, compact=False, unit=None, name=f"{noise.name} under a mask")


def _scatter(values, flat_index, shape):
  return jnp.zeros(int(np.prod(shape)), values.dtype).at[flat_index].set(values).reshape(shape)


def _dense(noise, e):
  return e.dense() if isinstance(e, LowRank) else e
