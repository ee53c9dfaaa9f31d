"""Factored perturbations for flax linen models: nn.Dense (and so nn.LSTMCell, nn.GRUCell, nn.RNN and every module
built from Dense), nn.DenseGeneral (the query/key/value/out projections of nn.MultiHeadDotProductAttention), nn.Conv
and nn.Embed apply W + σ·eps as the layer's output on W plus σ·(the layer applied to eps), without forming a matrix
per particle: eps = abᵀ/√r under `low_rank(r, factored=True)`, or a dense draw under `gaussian(factored=True)`.

    model = MyFlaxModel()                                  # unchanged
    apply = unrolled_es.flax_apply(model.apply)
    def step(theta, state, key):                           # theta: the model's "params" collection; under
      y = apply({"params": theta}, state.x)                # factored noise its kernels arrive as PerturbedMatrix
      ...

Every one of these layers is linear in its kernel, so the layer applied to W + σ·eps is out(W) + σ·out(eps) with
the bias counted once. For low-rank eps = abᵀ/√r over the kernel's matricisation (all axes but the last as rows;
unrolled_es/noise/base.py), out(abᵀ) = out(a)·bᵀ because the kernel's last axis is the output features: the layer is run
once on the shared W and once with r output features on a, which under vmap over particles are two skinny batched
products (EGGROLL, Sarkar et al. 2025). Embeddings gather rows of a (or of eps) instead of rows of W + σ·eps.

The interception uses `flax.linen.intercept_methods`, entered around the apply call itself, so models need no change
and the bookkeeping runs once per trace, costing nothing inside jit.
"""
import functools
import threading

import jax
import jax.numpy as jnp

from unrolled_es.noise.base import PerturbedMatrix

_KERNEL = ("params", "kernel")       # the collection and name of a Dense/DenseGeneral/Conv kernel
_EMBEDDING = ("params", "embedding")
_inside = threading.local()          # set while a correction runs its own flax module (not to be intercepted)


def _key_name(k):
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def split_factors(variables):
  """(variables with every PerturbedMatrix replaced by its W, {(collection, *module path, name): PerturbedMatrix}).

  A bias of rank 2 (DenseGeneral's (heads, head_dim) biases in attention) is formed as b + σ·eps: it is added, not
  multiplied, and costs no more per particle than a vector."""
  is_pm = lambda x: isinstance(x, PerturbedMatrix)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(variables, is_leaf=is_pm)
  factors, plain = {}, []
  for path, leaf in leaves:
    if is_pm(leaf):
      names = tuple(_key_name(k) for k in path)
      if names[-1] == "bias":
        leaf = leaf.dense()
      else:
        factors[names] = leaf
        leaf = leaf.w
    plain.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, plain), factors


def _work_dtype(x):
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _times_b(xa, pm, work):
  """scale/√r · (xa) bᵀ, xa = (the layer applied to a) with r trailing features."""
  rank = pm.a.shape[-1]
  return pm.scale.astype(work) / jnp.sqrt(jnp.asarray(rank, work)) * jnp.matmul(xa, pm.b.T.astype(work))


def _linear_correction(module, pm, x):
  """σ·(the layer applied to eps) for a Dense, DenseGeneral or Conv module, in float32 (or x's dtype if wider)."""
  work = _work_dtype(x)
  x = jnp.asarray(x).astype(work)
  if pm.w.ndim == 2 and isinstance(module, _flax().Dense):
    return pm.correction(x, module.precision)
  features = pm.a.shape[-1] if pm.b is not None else module.features
  if pm.b is not None and isinstance(module.features, tuple):
    features = tuple(module.features[:-1]) + (features,)
  kernel = pm.a.astype(work)
  probe = module.clone(parent=None, name=None, features=features, use_bias=False, dtype=work, param_dtype=work)
  _inside.active = True
  try:
    out = probe.apply({"params": {"kernel": kernel}}, x)
  finally:
    _inside.active = False
  return pm.scale.astype(work) * out if pm.b is None else _times_b(out, pm, work)


def _embed_correction(module, pm, x, method):
  """σ·eps gathered at the ids (`__call__`), or σ·query·epsᵀ (`attend`), without forming W + σ·eps."""
  if method == "__call__":
    ids = jnp.zeros_like(x) if module.num_embeddings == 1 else x
    work = jnp.float32
    rows = jnp.take(pm.a, ids, axis=0).astype(work)
    return pm.scale * rows if pm.b is None else _times_b(rows, pm, work)
  work = _work_dtype(x)
  q = jnp.asarray(x).astype(work)
  if pm.b is None:
    return pm.scale.astype(work) * jnp.matmul(q, pm.a.T.astype(work))
  return _times_b(jnp.matmul(q, pm.b.astype(work)), pm._replace(b=pm.a), work)


def _factored_call(module, method):
  """(which variable, correction(module, pm, x)) for a module method that can apply a PerturbedMatrix, else None."""
  nn = _flax()
  if isinstance(module, nn.Embed) and method in ("__call__", "attend"):
    return _EMBEDDING, functools.partial(_embed_correction, method=method)
  if method != "__call__":
    return None
  if isinstance(module, (nn.Dense, nn.DenseGeneral)):
    return _KERNEL, _linear_correction
  if isinstance(module, nn.Conv) and module.feature_group_count == 1 and module.mask is None:
    # a grouped or masked kernel is not linear in the matricisation's columns alone; such a kernel stays unconsumed
    return _KERNEL, _linear_correction
  return None


def _flax():
  try:
    import flax.linen as nn   # here, so that `import unrolled_es` does not need flax
  except ImportError:
    raise ImportError("unrolled_es.flax_apply needs flax: pip install 'unrolled_es[flax]'") from None
  return nn


def _interceptor(factors, used):
  def intercept(next_fun, args, kwargs, context):
    found = None if getattr(_inside, "active", False) else _factored_call(context.module, context.method_name)
    if found is None:
      return next_fun(*args, **kwargs)
    (collection, name), correction = found
    key = (collection,) + tuple(context.module.scope.path) + (name,)
    if key not in factors:
      return next_fun(*args, **kwargs)
    out = next_fun(*args, **kwargs)
    used.add(key)
    x = args[0] if args else next(iter(kwargs.values()))
    # Added in float32 and rounded once, so that a low-precision output does not round σ·(x eps) away.
    delta = correction(context.module, factors[key], x)
    return (out.astype(delta.dtype) + delta).astype(out.dtype)
  return intercept


def flax_apply(apply_fn):
  """Wraps a flax linen `apply(variables, *args, **kw)` (e.g. `model.apply`) so that variables may hold
  `PerturbedMatrix` kernels and embeddings (from `low_rank(r, factored=True)` or `gaussian(factored=True)`).

  The model runs on the plain W's; each nn.Dense, nn.DenseGeneral, nn.Conv (ungrouped, unmasked) or nn.Embed whose
  variable is a PerturbedMatrix gets σ·(the layer applied to eps) added to its output. Plain variables pass through
  unchanged, so one step function serves every noise.

  A PerturbedMatrix that no such layer consumed (a hand-written `self.param` used in a matmul, nn.Einsum, a grouped
  convolution) raises ValueError at trace time rather than being silently dropped or densely formed; perturb such
  models with unfactored noise (`factored=False`), or call `unrolled_es.materialize` on the variables first.
  """
  if not callable(apply_fn):
    raise ValueError(f"apply_fn must be a flax apply function (e.g. model.apply); got {apply_fn!r}")
  nn = _flax()

  @functools.wraps(apply_fn)
  def apply(variables, *args, **kwargs):
    plain, factors = split_factors(variables)
    if not factors:
      return apply_fn(variables, *args, **kwargs)
    used = set()
    with nn.intercept_methods(_interceptor(factors, used)):
      result = apply_fn(plain, *args, **kwargs)
    unused = sorted("/".join(map(str, k)) for k in set(factors) - used)
    if unused:
      raise ValueError(f"flax_apply: factored perturbations of {', '.join(unused)} were not consumed by an "
                       f"nn.Dense, nn.DenseGeneral, nn.Conv or nn.Embed; use noise with factored=False or "
                       f"unrolled_es.materialize")
    return result

  return apply
