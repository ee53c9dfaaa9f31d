"""Factored perturbations for flax NNX models: nnx.Linear (and so nnx.LSTMCell, nnx.GRUCell, nnx.OptimizedLSTMCell's
parts and every model built from Linear) and nnx.LinearGeneral (the projections of nnx.MultiHeadAttention) apply
W + σ·eps as xW + σ·(x eps), without forming a matrix per particle: eps = abᵀ/√r under `low_rank(r,
factored=True)`, or a dense draw under `gaussian(factored=True)`.

    graphdef, theta = nnx.split(model)                       # theta: the model's state, the model unchanged
    def step(theta, state, key):
      m = unrolled_es.nnx_model(graphdef, theta)             # instead of nnx.merge(graphdef, theta)
      y = m(state.x)
      ...

A tree transformation: the model is merged with the plain W's, and every Linear/LinearGeneral whose kernel arrived
as a `PerturbedMatrix` gets a `dot_general` that adds the correction to the layer's own contraction. Both layers
contract the input with the kernel's leading axes and keep its last axis (the output features), so with eps = abᵀ/√r
over the kernel's matricisation (unrolled_es/noise/base.py) the correction is the same contraction with a, then ·bᵀ:
two skinny products per particle under vmap (EGGROLL, Sarkar et al. 2025). Any other `PerturbedMatrix` (nnx.Embed,
nnx.Conv, a two-dimensional bias) is formed densely as W + σ·eps, exactly as unfactored noise would.
"""
import jax
import jax.numpy as jnp

from unrolled_es.noise.base import PerturbedMatrix


def _nnx():
  try:
    from flax import nnx   # here, so that `import unrolled_es` does not need flax
  except ImportError:
    raise ImportError("unrolled_es.nnx_model needs flax: pip install 'unrolled_es[flax]'") from None
  return nnx


def factored_dot_general(base, pm: PerturbedMatrix):
  """`base` (a lax.dot_general-like function) plus σ·(the same contraction with eps), kept in factors."""
  def dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    out = base(lhs, rhs, dimension_numbers, precision=precision, **kwargs)
    work = jnp.promote_types(jnp.result_type(lhs), jnp.float32)
    contracted = jax.lax.dot_general(lhs.astype(work), pm.a.astype(work), dimension_numbers, precision=precision)
    scale = pm.scale.astype(work)
    if pm.b is None:
      delta = scale * contracted
    else:
      rank = pm.a.shape[-1]
      delta = scale / jnp.sqrt(jnp.asarray(rank, work)) * jnp.matmul(contracted, pm.b.T.astype(work))
    # added in float32 and rounded once, so that a low-precision output does not round σ·(x eps) away
    return (out.astype(work) + delta).astype(out.dtype)
  return dot_general


def _names(path):
  """A state path's string keys: the module path and the variable's name (without the Variable's own key)."""
  return tuple(k.key for k in path if hasattr(k, "key") and isinstance(k.key, (str, int)))


def _split(state):
  """(state with every PerturbedMatrix replaced by its W, {names: PerturbedMatrix})."""
  is_pm = lambda x: isinstance(x, PerturbedMatrix)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(state, is_leaf=is_pm)
  factors = {_names(path): leaf for path, leaf in leaves if is_pm(leaf)}
  plain = [leaf.w if is_pm(leaf) else leaf for _, leaf in leaves]
  return jax.tree_util.tree_unflatten(treedef, plain), factors


def _factored_layer(module, nnx):
  return isinstance(module, (nnx.Linear, nnx.LinearGeneral)) and getattr(module, "dot_general_cls", None) is None


def nnx_model(graphdef, state):
  """`nnx.merge(graphdef, state)` with its `PerturbedMatrix` leaves made usable: kernels of nnx.Linear and
  nnx.LinearGeneral are applied in factors (see the module docstring), any other is formed densely. Plain states
  pass through unchanged, so one step function serves every noise."""
  nnx = _nnx()
  plain, factors = _split(state)
  model = nnx.merge(graphdef, plain)
  if not factors:
    return model
  used = set()
  for path, module in nnx.iter_graph(model):
    key = tuple(path) + ("kernel",)
    if key in factors and _factored_layer(module, nnx):
      module.dot_general = factored_dot_general(module.dot_general or jax.lax.dot_general, factors[key])
      used.add(key)
  for names in set(factors) - used:   # formed densely, in place in this merged copy
    owner = model
    for name in names[:-1]:
      owner = owner[name] if isinstance(name, int) else getattr(owner, name)
    getattr(owner, names[-1]).value = factors[names].dense()
  return model
