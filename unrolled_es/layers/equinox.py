"""Factored perturbations for equinox models: eqx.nn.Linear (and so eqx.nn.MLP and the projections of
eqx.nn.MultiheadAttention), eqx.nn.GRUCell, eqx.nn.LSTMCell and eqx.nn.Embedding apply W + σ·eps as Wx + σ·(eps x),
without forming a matrix per particle: eps = abᵀ/√r under `low_rank(r, factored=True)`, or a dense draw under
`gaussian(factored=True)`.

    params, static = eqx.partition(model, eqx.is_inexact_array)     # theta = params, the model unchanged
    def step(theta, state, key):
      m = unrolled_es.equinox_model(theta, static)                   # instead of eqx.combine(theta, static)
      y = m(state.x)
      ...

A tree transformation: every weight that arrives as a `PerturbedMatrix` in one of those layers is replaced by a
`FactoredWeight`, which the layer's own code uses unchanged, since equinox layers apply weights as `weight @ x`
(and embeddings as `weight[i]`). For W (out × in) and eps = abᵀ/√r, (W + σ·eps) x = Wx + σ/√r·a(bᵀx): under vmap
over particles, Wx is one GEMM shared by every particle and the correction two skinny batched products (EGGROLL,
Sarkar et al. 2025). Any other `PerturbedMatrix` (a convolution's kernel, a weight of a hand-written module) is
formed densely as W + σ·eps, per particle, exactly as unfactored noise would.
"""
import jax
import jax.numpy as jnp

from unrolled_es.noise.base import PerturbedMatrix

_FACTORED_FIELDS = {"Linear": ("weight",), "GRUCell": ("weight_ih", "weight_hh"),
                    "LSTMCell": ("weight_ih", "weight_hh"), "Embedding": ("weight",)}


def _transposed(pm):
  """The PerturbedMatrix of (W + σ·eps)ᵀ: Wᵀ, and eps = abᵀ/√r becomes baᵀ/√r (a dense eps is transposed)."""
  if pm.b is None:
    return pm._replace(w=pm.w.T, a=pm.a.T)
  return pm._replace(w=pm.w.T, a=pm.b, b=pm.a)


def _eqx():
  try:
    import equinox as eqx   # here, so that `import unrolled_es` does not need equinox
  except ImportError:
    raise ImportError("unrolled_es.equinox_model needs equinox: pip install 'unrolled_es[equinox]'") from None
  return eqx


def _factored_weight_class():
  eqx = _eqx()

  class FactoredWeight(eqx.Module):
    """W + σ·eps held in parts; `weight @ x`, `x @ weight` and `weight[i]` apply it without forming it."""
    matrix: PerturbedMatrix

    @property
    def shape(self):
      return self.matrix.w.shape

    @property
    def dtype(self):
      return self.matrix.w.dtype

    def __matmul__(self, x):
      x = jnp.asarray(x)
      if x.ndim == 1:
        return _transposed(self.matrix).apply(x)
      return _transposed(self.matrix).apply(x.T).T

    def __rmatmul__(self, x):
      return self.matrix.apply(jnp.asarray(x))

    def __getitem__(self, index):
      pm = self.matrix
      rows = pm.a[index]
      if pm.b is None:
        delta = pm.scale * rows.astype(jnp.float32)
      else:
        delta = pm.scale / jnp.sqrt(jnp.float32(pm.a.shape[-1])) * jnp.matmul(rows.astype(jnp.float32), pm.b.T)
      return (pm.w[index].astype(jnp.float32) + delta).astype(pm.w.dtype)

  return FactoredWeight


_CLASS = []


def factored_weight(pm: PerturbedMatrix):
  """`pm` as a FactoredWeight (an equinox module), for layers that use their weight as `weight @ x`."""
  if not _CLASS:
    _CLASS.append(_factored_weight_class())
  return _CLASS[0](pm)


def _parent(root, path):
  node = root
  for k in path:
    if hasattr(k, "name"):
      node = getattr(node, k.name)
    elif hasattr(k, "idx"):
      node = node[k.idx]
    else:
      node = node[k.key]
  return node


def _replacement(root, path, pm):
  """A FactoredWeight where a known layer owns the weight, else the dense W + σ·eps."""
  eqx = _eqx()
  owner, field = _parent(root, path[:-1]), getattr(path[-1], "name", None)
  known = {getattr(eqx.nn, name): fields for name, fields in _FACTORED_FIELDS.items()}
  for layer, fields in known.items():
    if isinstance(owner, layer) and field in fields and pm.w.ndim == 2:
      return factored_weight(pm)
  return pm.dense()


def equinox_model(params, static=None):
  """The equinox model `eqx.combine(params, static)` with its `PerturbedMatrix` leaves made usable: weights of
  eqx.nn.Linear, GRUCell, LSTMCell and Embedding become `FactoredWeight`s (applied in factors), any other is formed
  densely. `params` may also be a whole model (static=None). Plain params pass through unchanged, so one step
  function serves every noise."""
  eqx = _eqx()
  is_pm = lambda x: isinstance(x, PerturbedMatrix)
  if static is None:
    model = params
  else:
    model = eqx.combine(params, static, is_leaf=lambda x: x is None or is_pm(x))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_pm)
  if not any(is_pm(leaf) for _, leaf in leaves):
    return model
  out = [_replacement(model, path, leaf) if is_pm(leaf) else leaf for path, leaf in leaves]
  return jax.tree_util.tree_unflatten(treedef, out)
