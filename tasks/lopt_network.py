"""The learned optimizer itself: a per-parameter MLP over normalised features, with bounded outputs around Adam.

θ is the haiku params of a small MLP applied to every element of every parameter tensor (Andrychowicz et al.
2016; Metz et al., "Understanding and correcting pathologies in the training of learned optimizers", ICML 2019).
For a parameter p with gradient g at step t (0-based) of an inner run of `num_steps` steps,

    m_β ← β m_β + (1 − β) g   (β ∈ BETAS),    v ← β₂ v + (1 − β₂) g²,
    n    = m̂_0.9 / (√v̂ + ε)                         Adam's direction, the "nominal" descent term,
    (d, s) = MLP_θ(features),
    p    ← p − lr · exp(S · tanh(s)) · (n + D · tanh(d)).

The nominal term follows Harrison, Metz & Sohl-Dickstein, "A closer look at learned optimization: stability,
robustness, and inductive biases" (NeurIPS 2022): the MLP's last layer starts at 1e-3 of haiku's scale, so
the untrained optimizer is Adam at `lr`, and what the MLP learns is a per-element log step multiplier s and a
direction correction d. Both are bounded by tanh and scaled by the small constants S and D (as Metz et al.,
"Practical tradeoffs between memory, compute, and performance in learned optimizers", CoLLAs 2022, scale
their MLP optimizer's outputs by 1e-3), so no θ can take a step larger than lr·e^S·(|n| + D): a meta-trained
optimizer cannot blow up an inner run that Adam at lr·e^S would not.

Features, per element: g, p, m_β, √v̂, m̂_β/(√v̂ + ε) and g/(√v̂ + ε); each is divided by its root-mean-square
over the element's tensor (Metz et al. 2022 normalise g, p and the momenta the same way), so no tensor's
statistics dominate and the optimizer sees unit-scale inputs at any width or shape. 1/√v̂ itself is not a
feature: on weights whose gradient is always zero (blank pixels) it is ~1e6 and would swamp the rest. Then
training-progress features shared by all elements: with `time_features="fraction"`, tanh(t / (τ·num_steps))
for τ ∈ FRACTION_SCALES (the run's length must be known: `as_optax(num_steps=...)`, or the task's horizon);
with `"steps"`, tanh(t / τ) for τ ∈ STEP_SCALES, which need no length (random truncation horizons). And two
per-tensor features: whether the tensor is a matrix (ndim ≥ 2) or a vector, and log(fan_in)/log(1000).

Every function here works on any pytree of float parameters of any shapes; `tasks.lopt_optax` wraps it as an
optax.GradientTransformation.
"""
import math
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from tasks.models import check_hidden, numpy_init
from unrolled_es.haiku_layers import haiku_apply

BETAS = (0.5, 0.9, 0.99, 0.999)
NOMINAL_BETA = 0.9
BETA2 = 0.999
EPS = 1e-8
FRACTION_SCALES = (0.03, 0.1, 0.3, 1.0)
STEP_SCALES = (10.0, 30.0, 100.0, 300.0, 1000.0)
TIME_FEATURES = ("fraction", "steps")
NUM_ELEMENT_FEATURES = 3 + 2 * len(BETAS) + 1   # g, p, √v̂, m_β, m̂_β/√v̂, g/√v̂
NUM_TENSOR_FEATURES = 2


class LoptSpec(NamedTuple):
  """The architecture and output scaling; hashable, so it can key caches."""
  hidden: tuple = (32, 32)
  lr: float = 0.01                 # the nominal Adam step size
  step_range: float = math.log(10)  # S: the step multiplier lies in [e^-S, e^S]
  direction_scale: float = 1.0     # D: the direction correction lies in [-D, D]
  time_features: str = "fraction"


class LoptState(NamedTuple):
  momenta: Any   # per leaf: (len(BETAS), *shape)
  second: Any    # per leaf: shape
  t: jax.Array   # int32 steps taken


def check_spec(hidden=(32, 32), lr=0.01, step_range=math.log(10), direction_scale=1.0,
               time_features="fraction") -> LoptSpec:
  from unrolled_es.system import check_positive_float
  if time_features not in TIME_FEATURES:
    raise ValueError(f"time_features must be one of {', '.join(TIME_FEATURES)}; got {time_features!r}")
  return LoptSpec(check_hidden("lopt_hidden", hidden), check_positive_float("lopt_lr", lr),
                  check_positive_float("step_range", step_range),
                  check_positive_float("direction_scale", direction_scale), time_features)


def num_features(spec: LoptSpec) -> int:
  scales = FRACTION_SCALES if spec.time_features == "fraction" else STEP_SCALES
  return NUM_ELEMENT_FEATURES + NUM_TENSOR_FEATURES + len(scales)


def network(spec: LoptSpec) -> hk.Transformed:
  """features (..., num_features) -> (..., 2) = (d, s), a ReLU MLP."""
  return hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP(tuple(spec.hidden) + (2,))(x)))


def init_theta(spec: LoptSpec, seed: int = 0):
  """θ0: haiku's default init with the output layer's weights at 1e-3 of it: close to Adam at spec.lr, and
  every weight still gets a gradient."""
  theta = numpy_init(network(spec), seed, jnp.zeros((num_features(spec),), jnp.float32))
  last = f"mlp/~/linear_{len(spec.hidden)}"
  return {**theta, last: {**theta[last], "w": theta[last]["w"] * 1e-3}}


def init_state(params) -> LoptState:
  zeros = lambda p, *lead: jnp.zeros(lead + jnp.shape(p), jnp.float32)
  return LoptState(jax.tree_util.tree_map(lambda p: zeros(p, len(BETAS)), params),
                   jax.tree_util.tree_map(zeros, params), jnp.zeros((), jnp.int32))


def time_features(spec: LoptSpec, t, num_steps):
  t = jnp.asarray(t, jnp.float32)
  if spec.time_features == "fraction":
    return jnp.tanh(t / (jnp.asarray(FRACTION_SCALES) * jnp.asarray(num_steps, jnp.float32)))
  return jnp.tanh(t / jnp.asarray(STEP_SCALES))


def _rms_normalise(x):
  """x (n, F) divided column-wise by its root-mean-square over the tensor."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=0, keepdims=True) + 1e-12)


def _tensor_features(shape):
  fan_in = float(np.prod(shape[:-1])) if len(shape) >= 2 else 1.0
  return np.array([float(len(shape) >= 2), math.log(fan_in) / math.log(1000.0)], np.float32)


def _leaf_step(apply, spec, theta, p, g, m, v, t, shared):
  """(update −step, new momenta, new second moment) of one tensor; `shared` holds the time features."""
  g = g.astype(jnp.float32)
  betas = jnp.asarray(BETAS).reshape((-1,) + (1,) * g.ndim)
  m = betas * m + (1 - betas) * g
  v = BETA2 * v + (1 - BETA2) * jnp.square(g)
  tf = t.astype(jnp.float32) + 1
  root = jnp.sqrt(v / (1 - BETA2 ** tf) + EPS ** 2)  # ε inside the root: d√v/dv stays finite where g ≡ 0
  adam = (m / (1 - betas ** tf)) / root
  flat = lambda x: jnp.reshape(x, (-1,))
  element = jnp.stack([flat(g), flat(p).astype(jnp.float32), flat(root), *map(flat, m), *map(flat, adam),
                       flat(g / root)], -1)
  n = element.shape[0]
  x = jnp.concatenate([_rms_normalise(element), jnp.broadcast_to(jnp.asarray(_tensor_features(p.shape)), (n, 2)),
                       jnp.broadcast_to(shared, (n, shared.shape[-1]))], -1)
  d, s = jnp.tanh(apply(theta, x)).T
  nominal = flat(adam[BETAS.index(NOMINAL_BETA)])
  step = spec.lr * jnp.exp(spec.step_range * s) * (nominal + spec.direction_scale * d)
  return -jnp.reshape(step, p.shape).astype(p.dtype), m, v


def update(spec: LoptSpec, theta, state: LoptState, params, grads, num_steps=None):
  """One step of the learned optimizer on every tensor of `params`: (updates, new state), optax's convention
  (new params = params + updates).

  num_steps: the inner run's length, needed by time_features="fraction" (ignored by "steps"). θ may hold
  `unrolled_es.PerturbedMatrix` leaves (factored noise): the MLP is applied through `ue.haiku_apply`.
  """
  if spec.time_features == "fraction" and num_steps is None:
    raise ValueError("num_steps must be given (the inner run's length) for time_features='fraction'")
  apply = haiku_apply(network(spec).apply)
  shared = time_features(spec, state.t, num_steps)
  treedef = jax.tree_util.tree_structure(params)
  leaves = zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(grads),
               treedef.flatten_up_to(state.momenta), treedef.flatten_up_to(state.second))
  out = [_leaf_step(apply, spec, theta, p, g, m, v, state.t, shared) for p, g, m, v in leaves]
  updates, momenta, second = (treedef.unflatten([o[i] for o in out]) for i in range(3))
  return updates, LoptState(momenta, second, state.t + 1)
