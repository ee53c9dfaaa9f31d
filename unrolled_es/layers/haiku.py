"""Factored perturbations for haiku models: hk.Linear (and every module built on it, such as hk.nets.MLP and
hk.LSTM) applies W + σ·eps as xW + σ·(x eps), without forming a matrix per particle: eps = abᵀ/√r under
`low_rank(r, factored=True)`, or a dense draw under `gaussian(factored=True)`.

    model = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([64, 10])(x)))
    apply = unrolled_es.haiku_apply(model.apply)
    def step(theta, state, key):           # theta: haiku params; under factored noise its
      logits = apply(theta, state.x)       # Linear weights arrive as PerturbedMatrix leaves
      ...

Under vmap over particles, xW is one GEMM shared by all particles and the low-rank correction two skinny
batched ones (EGGROLL, Sarkar et al. 2025). The interception uses `hk.intercept_methods`, whose stack is global
(thread-local), so it is entered around the apply call itself: models need no change when they are built,
and the Python bookkeeping runs once per trace, costing nothing inside jit.
"""
import functools

import jax.numpy as jnp

from unrolled_es.noise.base import PerturbedMatrix


def split_factors(params):
  """(params with every PerturbedMatrix replaced by its W, {module name: PerturbedMatrix})."""
  plain, factors = {}, {}
  for module, leaves in params.items():
    plain[module] = {}
    for name, value in leaves.items():
      if isinstance(value, PerturbedMatrix):
        if name != "w":
          raise ValueError(f"haiku_apply: factored perturbation at {module}/{name}; only hk.Linear weights "
                           f"('.../w') can be applied in factors")
        factors[module] = value
        value = value.w
      plain[module][name] = value
  return plain, factors


def haiku_apply(apply_fn):
  """Wraps a haiku `apply(params, *args, **kw)` so that params may hold `PerturbedMatrix` Linear weights.

  The model runs on the plain W's, and each hk.Linear whose weight is a PerturbedMatrix gets
  scale·(x eps) added to its output (x its input; adding after the bias is exact since the
  correction is linear in x). Plain params pass through unchanged, so one step function serves every noise.

  A PerturbedMatrix that no hk.Linear consumed (e.g. a convolution or a hand-written hk.get_parameter
  weight) raises ValueError at trace time rather than being silently dropped or densely formed; perturb
  such models with unfactored noise (`factored=False`), or call `unrolled_es.materialize` on params first.
  """
  import haiku as hk   # here, so that `import unrolled_es` does not pay for haiku's import
  if not callable(apply_fn):
    raise ValueError(f"apply_fn must be a haiku apply function (e.g. hk.transform(f).apply); got {apply_fn!r}")

  @functools.wraps(apply_fn)
  def apply(params, *args, **kwargs):
    plain, factors = split_factors(params)
    if not factors:
      return apply_fn(params, *args, **kwargs)
    used = set()

    def interceptor(next_f, f_args, f_kwargs, context):
      out = next_f(*f_args, **f_kwargs)
      name = context.module.module_name
      if context.method_name != "__call__" or not isinstance(context.module, hk.Linear) or name not in factors:
        return out
      used.add(name)
      pm, x = factors[name], jnp.asarray(f_args[0] if f_args else f_kwargs["inputs"])
      # Added in float32 and rounded once, so that a low-precision output does not round σ·(x eps) away.
      correction = pm.correction(x, f_kwargs.get("precision"))
      return (out.astype(correction.dtype) + correction).astype(out.dtype)

    with hk.intercept_methods(interceptor):
      result = apply_fn(plain, *args, **kwargs)
    unused = sorted(set(factors) - used)
    if unused:
      raise ValueError(f"haiku_apply: factored perturbations of {', '.join(m + '/w' for m in unused)} were not "
                       f"consumed by an hk.Linear; use noise with factored=False or unrolled_es.materialize")
    return result

  return apply
