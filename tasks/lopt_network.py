"""The learned optimizer itself: a per-parameter MLP over normalised features, with bounded outputs around Adam.

θ is the haiku params of a small MLP applied to every element of every parameter tensor (Andrychowicz et al.
2016; Metz et al., "Understanding and correcting pathologies in the training of learned optimizers", ICML 2019).
For a parameter p (a tensor with fan-in f) with gradient g at step t (0-based) of a run of T = `num_steps`,

    m_β ← β m_β + (1 − β) g   (β ∈ BETAS),    v ← β₂ v + (1 − β₂) g²,
    n    = m̂_0.9 / √(v̂ + ε²)                          Adam's direction, the "nominal" descent term,
    η_t  = lr · c(t) · (32 / f)^α                      the nominal step size; (32/f)^α only on linear maps,
    (d, s) = MLP_θ(features),
    p    ← p − η_t · exp(S · tanh(s)) · (n + D · tanh(d))          correction="additive",
    p    ← p − η_t · exp(S · tanh(s)) · n · (1 + D · tanh(d))      correction="aligned" (D ≤ 1).

The nominal term follows Harrison, Metz & Sohl-Dickstein, "A closer look at learned optimization: stability,
robustness, and inductive biases" (NeurIPS 2022): the MLP's last layer starts at 1e-3 of haiku's scale, so
the untrained optimizer is Adam at η_t, and what the MLP learns is a per-element log step multiplier s and a
direction correction d. Both are bounded by tanh and scaled by the constants S and D (Metz et al., "Practical
tradeoffs between memory, compute, and performance in learned optimizers", CoLLAs 2022), so no θ takes a step
larger than η_t·e^S·(|n| + D) ("additive") or η_t·e^S·(1 + D)·|n| ("aligned"). The additive correction is a
unit-scale step in any direction, also where the gradient has long since vanished: a θ whose correction has a
non-zero average drifts, and over runs far longer than its meta-training horizon the drift climbs back up the
loss (the shipped θ of commit 1376f43 did, at 10× the horizon). The aligned one is a second per-element
multiplier of Adam's direction, in [1 − D, 1 + D]: every element moves along −n, by at most (1 + D)·e^S of
Adam's step, so no θ can move a weight that Adam would leave still or move it uphill along Adam's direction.
The factor (32 / f)^α (α = `fan_in_power`) is the width scaling of Adam's step
in μP (Yang et al., "Tensor Programs V", 2022), which Thérien et al. ("μLO", 2024) show lets a learned
optimizer meta-trained at one width generalise to wider ones; which leaves are linear maps, and their fan-in,
is `unrolled_es_tasks.lopt_leaves`' rule (embeddings, stacked scan kernels, convolutions, annotations).

The schedule c(t): 1 (schedule="constant"), or with schedule="cosine" and a known length T,
c(t) = F + (1 − F)·½(1 + cos(π·min(t, T)/T)) with the floor F = FINAL_FRACTION. No silent freeze: a run
longer than T continues at the floor step lr·F (and the progress features saturate), it is never stopped.

Features, per element: g, p, m_β, √v̂, m̂_β/√(v̂ + ε²) and g/√(v̂ + ε²); each column is divided by its
root-mean-square over the element's tensor *and over recent steps* (an exponential average with
NORM_BETA, bias-corrected), so no tensor's statistics dominate, the optimizer sees unit-scale inputs at any
width or shape, and a size-1 leaf is not reduced to its sign (its g is compared with its own recent g's, as
RMSprop does, instead of with itself). 1/√v̂ itself is not a feature: on weights whose gradient is always zero
(blank pixels) it is ~1e8 and would swamp the rest. Training-progress features shared by all elements:
  - "fraction": tanh(t / (τ·T)) for τ ∈ FRACTION_SCALES: the run's length T must be known;
  - "steps": tanh(t / τ) for τ ∈ STEP_SCALES, which need no length (the schedule must then be "constant");
  - "any": the "steps" features, a flag saying whether T is known, and the "fraction" features times that
    flag; with schedule="cosine" the nominal step follows the cosine when T is known and is constant when it
    is not. One θ then serves runs of known and of unknown length (meta-training reveals T to half of the
    episodes).
And two per-tensor features from the leaf's kind: whether it is a linear map's kernel, and log(f)/log(1000).

Integer leaves are passed through (a zero update of their dtype, no state); float16/bfloat16 leaves get their
update computed in float32 and cast to their dtype. `unrolled_es_tasks.lopt_optax` wraps it as an
optax.GradientTransformation.
"""
import math
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es_tasks import lopt_leaves
from unrolled_es_tasks.models import check_hidden, numpy_init
from unrolled_es.layers.haiku import haiku_apply

BETAS = (0.5, 0.9, 0.99, 0.999)
NOMINAL_BETA = 0.9
BETA2 = 0.999
EPS = 1e-8
NORM_FLOOR = 1e-30   # mean-square floor of the feature normalisation; float32's smallest normal is ~1e-38
NORM_BETA = 0.9
FINAL_FRACTION = 0.05
FRACTION_SCALES = (0.03, 0.1, 0.3, 1.0)
STEP_SCALES = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
TIME_FEATURES = ("fraction", "steps", "any")
SCHEDULES = ("constant", "cosine")
CORRECTIONS = ("additive", "aligned")
BASE_FAN_IN = lopt_leaves.BASE_FAN_IN
NUM_ELEMENT_FEATURES = 3 + 2 * len(BETAS) + 1   # g, p, √v̂, m_β, m̂_β/√v̂, g/√v̂
NUM_TENSOR_FEATURES = 2


class LoptSpec(NamedTuple):
  """The architecture and output scaling; hashable, so it can key caches."""
  hidden: tuple = (8,)
  lr: float = 0.02                 # the nominal Adam step size
  step_range: float = math.log(10)  # S: the step multiplier lies in [e^-S, e^S]
  direction_scale: float = 1.0     # D: the direction correction lies in [-D, D]
  time_features: str = "fraction"
  schedule: str = "cosine"         # the nominal step size over the run: "constant" or "cosine" (needs a length)
  fan_in_power: float = 1.0        # α: a linear map's nominal step is lr·(BASE_FAN_IN / fan_in)^α
  correction: str = "additive"     # how d enters: "additive" (n + D·tanh d) or "aligned" (n·(1 + D·tanh d))


class LoptState(NamedTuple):
  momenta: Any      # per leaf: (len(BETAS), *shape) float32; (0,) for an integer leaf
  second: Any       # per leaf: shape, float32
  feature_ms: Any   # per leaf: (NUM_ELEMENT_FEATURES,) running mean square of each feature column
  t: jax.Array      # int32 steps taken


def check_spec(hidden=(8,), lr=0.02, step_range=math.log(10), direction_scale=1.0,
               time_features="fraction", schedule="cosine", fan_in_power=1.0, correction="additive") -> LoptSpec:
  from unrolled_es.core.system import check_positive_float
  if correction not in CORRECTIONS:
    raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}; got {correction!r}")
  direction_scale = check_positive_float("direction_scale", direction_scale)
  if correction == "aligned" and direction_scale > 1:
    raise ValueError("direction_scale must be at most 1 with correction='aligned' (the multiplier 1 + D·tanh(d) "
                     f"must stay positive); got {direction_scale!r}")
  if time_features not in TIME_FEATURES:
    raise ValueError(f"time_features must be one of {', '.join(TIME_FEATURES)}; got {time_features!r}")
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
  if schedule == "cosine" and time_features == "steps":
    raise ValueError("schedule='cosine' needs the run's length: use time_features='fraction' or 'any'")
  return LoptSpec(check_hidden("lopt_hidden", hidden), check_positive_float("lopt_lr", lr),
                  check_positive_float("step_range", step_range),
                  direction_scale, time_features, schedule,
                  _check_power(fan_in_power), correction)


def _check_power(value):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
    raise ValueError(f"fan_in_power must be a number in [0, 1]; got {value!r}")
  return float(value)


def num_time_features(spec: LoptSpec) -> int:
  if spec.time_features == "fraction":
    return len(FRACTION_SCALES)
  if spec.time_features == "steps":
    return len(STEP_SCALES)
  return len(STEP_SCALES) + 1 + len(FRACTION_SCALES)


def num_features(spec: LoptSpec) -> int:
  return NUM_ELEMENT_FEATURES + NUM_TENSOR_FEATURES + num_time_features(spec)


def network(spec: LoptSpec) -> hk.Transformed:
  """features (..., num_features) -> (..., 2) = (d, s), a ReLU MLP."""
  return hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP(tuple(spec.hidden) + (2,))(x)))


def init_theta(spec: LoptSpec, seed: int = 0):
  """θ0: haiku's default init with the output layer's weights at 1e-3 of it: close to Adam at spec.lr, and
  every weight still gets a gradient."""
  theta = numpy_init(network(spec), seed, jnp.zeros((num_features(spec),), jnp.float32))
  last = _output_layer(spec)
  return {**theta, last: {**theta[last], "w": theta[last]["w"] * 1e-3}}


def _output_layer(spec: LoptSpec) -> str:
  """The haiku name of the MLP's output layer in θ."""
  return f"mlp/~/linear_{len(spec.hidden)}"


def output_layer_mask(spec: LoptSpec, theta):
  """A θ-shaped mask (for `ue.es_single(mask=...)`) that is True on the output layer only: its 2·(h + 1)
  weights set the step multiplier and the direction correction from the hidden layer's fixed random features.
  ES's variance grows with the number of coordinates it perturbs (d = 18 here against 234 for the whole MLP)."""
  last = _output_layer(spec)
  return {name: {k: np.full(np.shape(v), name == last) for k, v in layer.items()} for name, layer in theta.items()}


def init_state(params) -> LoptState:
  def zeros(p, *lead):
    return jnp.zeros(lead + jnp.shape(p), jnp.float32) if lopt_leaves.is_float(p) else jnp.zeros((0,), jnp.float32)
  ms = lambda p: jnp.zeros((NUM_ELEMENT_FEATURES if lopt_leaves.is_float(p) else 0,), jnp.float32)
  tree_map = jax.tree_util.tree_map
  return LoptState(tree_map(lambda p: zeros(p, len(BETAS)), params), tree_map(zeros, params), tree_map(ms, params),
                   jnp.zeros((), jnp.int32))


def _length(num_steps):
  """(T as float32, whether it is known): None, 0 or a negative number mean unknown (traced values allowed)."""
  if num_steps is None:
    return jnp.float32(1.0), jnp.bool_(False)
  n = jnp.asarray(num_steps, jnp.float32)
  return jnp.maximum(n, 1.0), n > 0


def time_features(spec: LoptSpec, t, num_steps):
  t = jnp.asarray(t, jnp.float32)
  length, known = _length(num_steps)
  fraction = jnp.tanh(t / (jnp.asarray(FRACTION_SCALES) * length))
  if spec.time_features == "fraction":
    return fraction
  steps = jnp.tanh(t / jnp.asarray(STEP_SCALES))
  if spec.time_features == "steps":
    return steps
  k = known.astype(jnp.float32)
  return jnp.concatenate([steps, k[None], k * fraction])


def nominal_lr(spec: LoptSpec, t, num_steps):
  """spec.lr·c(t): c = 1 (constant, or "any" with an unknown length), or the cosine down to FINAL_FRACTION at
  t = T, held there after T (Loshchilov & Hutter 2017; the floor: no silent freeze past T)."""
  if spec.schedule == "constant":
    return jnp.float32(spec.lr)
  length, known = _length(num_steps)
  frac = jnp.minimum(jnp.asarray(t, jnp.float32) / length, 1.0)
  cosine = FINAL_FRACTION + (1 - FINAL_FRACTION) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
  return spec.lr * jnp.where(known, cosine, 1.0)


def _tensor_lr(spec, shape, kind=None):
  """The nominal step's per-tensor factor (`lopt_leaves.width_factor`; kind by the default rule if not given)."""
  kind = lopt_leaves.default_kind("", np.zeros(shape, np.float32)) if kind is None else kind
  return lopt_leaves.width_factor(shape, kind, spec.fan_in_power)


def _normalise(element, ms, t):
  """Each feature column over its running mean square across the tensor and recent steps (bias-corrected)."""
  ms = NORM_BETA * ms + (1 - NORM_BETA) * jnp.mean(jnp.square(element), axis=0)
  # The floor only keeps an all-zero column at 0; any larger floor would bend the features of small gradients
  # (m_0.999 of gradients near 1e-3 has a mean square near 1e-12) and so make the step depend on the loss scale.
  scale = jax.lax.rsqrt(ms / (1 - NORM_BETA ** (t + 1)) + NORM_FLOOR)
  return element * scale, ms


def _element_features(p, g, m, v, tf):
  """(features (n, NUM_ELEMENT_FEATURES), Adam's nominal direction (n,), new m, new v) of one float tensor."""
  betas = jnp.asarray(BETAS).reshape((-1,) + (1,) * g.ndim)
  m = betas * m + (1 - betas) * g
  v = BETA2 * v + (1 - BETA2) * jnp.square(g)
  root = jnp.sqrt(v / (1 - BETA2 ** tf) + EPS ** 2)  # ε inside the root: d√v/dv stays finite where g ≡ 0
  adam = (m / (1 - betas ** tf)) / root
  flat = lambda x: jnp.reshape(x, (-1,))
  element = jnp.stack([flat(g), flat(p), flat(root), *map(flat, m), *map(flat, adam), flat(g / root)], -1)
  return element, flat(adam[BETAS.index(NOMINAL_BETA)]), m, v


def _leaf_step(apply, spec, theta, p, g, m, v, ms, t, shared, lr, kind):
  """(update, new momenta, new second moment, new feature mean squares) of one tensor; `shared` holds the time
  features. An integer leaf gets a zero update and keeps its (empty) state."""
  if not lopt_leaves.is_float(p):
    return jnp.zeros(jnp.shape(p), jnp.result_type(p)), m, v, ms
  tf = t.astype(jnp.float32) + 1
  element, nominal, m, v = _element_features(p.astype(jnp.float32), g.astype(jnp.float32), m, v, tf)
  element, ms = _normalise(element, ms, t.astype(jnp.float32))
  n = element.shape[0]
  tensor = jnp.asarray(lopt_leaves.tensor_features(p.shape, kind))
  x = jnp.concatenate([element, jnp.broadcast_to(tensor, (n, NUM_TENSOR_FEATURES)),
                       jnp.broadcast_to(shared, (n, shared.shape[-1]))], -1)
  d, s = jnp.tanh(apply(theta, x)).T
  factor = lopt_leaves.width_factor(p.shape, kind, spec.fan_in_power)
  step = lr * factor * jnp.exp(spec.step_range * s) * _corrected(spec, nominal, d)
  return -jnp.reshape(step, p.shape).astype(p.dtype), m, v, ms


def _corrected(spec: LoptSpec, nominal, d):
  """Adam's direction with the learned correction (the module docstring's two forms)."""
  if spec.correction == "aligned":
    return nominal * (1 + spec.direction_scale * d)
  return nominal + spec.direction_scale * d


def _float_grad(g, p):
  """A gradient leaf as float32 (float0 / None gradients of integer leaves become zeros)."""
  if g is None or jnp.result_type(g) == jax.dtypes.float0:
    return jnp.zeros(jnp.shape(p), jnp.float32)
  return g


def update(spec: LoptSpec, theta, state: LoptState, params, grads, num_steps=None, kinds=None):
  """One step of the learned optimizer on every tensor of `params`: (updates, new state), optax's convention
  (new params = params + updates).

  num_steps: the run's length (an int or a traced int; None or ≤ 0: unknown), needed by time_features=
  "fraction", optional for "any", ignored by "steps". kinds: the leaf-kind annotation of `lopt_leaves`. θ may
  hold `unrolled_es.PerturbedMatrix` leaves (factored noise): the MLP is applied through `ue.haiku_apply`.
  """
  if spec.time_features == "fraction" and num_steps is None:
    raise ValueError("num_steps must be given (the inner run's length) for time_features='fraction'")
  apply = haiku_apply(network(spec).apply)
  shared = time_features(spec, state.t, num_steps)
  treedef = jax.tree_util.tree_structure(params)
  p_leaves = jax.tree_util.tree_leaves(params)
  g_leaves = [_float_grad(g, p) for g, p in zip(treedef.flatten_up_to(grads), p_leaves)]
  leaves = zip(p_leaves, g_leaves, treedef.flatten_up_to(state.momenta), treedef.flatten_up_to(state.second),
               treedef.flatten_up_to(state.feature_ms), lopt_leaves.leaf_kinds(params, kinds))
  lr = nominal_lr(spec, state.t, num_steps)
  out = [_leaf_step(apply, spec, theta, p, g, m, v, ms, state.t, shared, lr, k) for p, g, m, v, ms, k in leaves]
  updates, momenta, second, ms = (treedef.unflatten([o[i] for o in out]) for i in range(4))
  return updates, LoptState(momenta, second, ms, state.t + 1)
