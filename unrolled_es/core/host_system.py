"""Systems whose inner step runs outside JAX: a numpy or C simulator, one host call per inner step for everyone.

    system = ue.host_system(reset, step, policy, horizon=T)

`reset(seeds) -> (state, observation)` and `step(state, action, seeds) -> (state, observation, loss, done)` are
plain numpy functions of batches: every array has one leading axis B, the same in every argument and result.
`policy(theta, observation, key) -> action` is JAX. One inner step of the system is

    a_t = policy(θ, o_t, key_t)                                          (JAX, per member)
    (s_{t+1}, o_{t+1}, l_t, done_t) = step(s_t, a_t, seed_t)             (host, all members in one call)

The estimators vmap the step over particles and members (and a user may vmap around them): `host_function`
wraps the numpy function in `jax.pure_callback(..., vmap_method="broadcast_all")` and flattens every batch axis
into the one leading axis, so all of those vmaps become ONE host call per inner step. The simulator's state stays
in JAX between steps (float64 and 64-bit integer leaves travel bit for bit as pairs of uint32 words), so resets,
stagger, faults, checkpoints and determinism work as for any UnrolledSystem; the seeds the host sees are drawn
from the keys `init` and `step` receive, so the same keys give the same episodes.

Terminations: once `done`, a member's state is frozen and its loss is 0 for the rest of the horizon (a fixed
length unroll with an absorbing state, L(θ) = 1/T Σ_t l_t, for which the ES estimators are unbiased; tasks/control.py
explains why restarting inside the horizon would change the objective), and frozen members are not sent to the
host: `step` only sees the rows still running.

No derivatives: the host call carries a custom JVP rule that raises a ValueError naming the host system when
autodiff reaches it, so truncated/full BPTT, UORO and hybrid (which runs TBPTT) refuse it when traced; the ES
estimators (es_single, pes, generalized_pes, full_es, truncated_es, baseline_es) never differentiate the step.
Under a particle mesh (`mesh=ue.particle_mesh()`) the estimate equals the single-device one and there is still one
host call per step for all members: XLA gathers the operands onto one device for the callback (it warns of the
rematerialisation) and splits the results again; with a host simulator, the host is the bottleneck anyway.
"""
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es.core.system import UnrolledSystem, check_int

ES_ESTIMATORS = "es_single, pes, generalized_pes, full_es, truncated_es or baseline_es"


def refusal(name: str) -> str:
  return (f"{name} runs outside JAX (a host function): it has no derivatives, so BPTT, UORO and hybrid estimators "
          f"cannot differentiate it; use an ES estimator ({ES_ESTIMATORS})")


def host_function(fn: Callable, result_shape, *, name: str = "host function") -> Callable:
  """`fn` (numpy; every argument and result batched over one leading axis) as a JAX function of unbatched arrays.

  result_shape: the pytree of `jax.ShapeDtypeStruct` of ONE row of fn's results. However many vmaps surround the
  returned function, fn runs once per evaluation, on all rows at once (the batch axes flattened into one; B = 1
  outside any vmap). fn must be deterministic (pure), since XLA may run or skip a pure callback as it likes.
  Differentiating the returned function raises a ValueError that names `name` (see the module docstring).
  """
  if not callable(fn):
    raise TypeError(f"fn must be a callable numpy function; got {fn!r}")
  leaves = jax.tree_util.tree_leaves(result_shape)
  if not leaves or not all(isinstance(s, jax.ShapeDtypeStruct) for s in leaves):
    raise TypeError(f"result_shape must be a pytree of jax.ShapeDtypeStruct (one row); got {result_shape!r}")

  @jax.custom_jvp
  def call(*args):
    leaves, tree = jax.tree_util.tree_flatten(args)
    if not leaves:
      raise ValueError(f"{name} needs at least one array argument (its batch axes are read from them)")
    row_ndims = tuple(np.ndim(a) for a in leaves)   # per-row ranks, whatever vmaps surround this call
    return jax.pure_callback(_flattening(fn, tree, row_ndims, result_shape), result_shape, *leaves,
                             vmap_method="broadcast_all")

  @call.defjvp
  def _no_derivatives(primals, tangents):
    raise ValueError(refusal(name))

  return call


def _flattening(fn, tree, row_ndims, result_shape):
  """The host side: batch axes [b1, b2, ...] (the same on every argument under broadcast_all) flattened into one
  axis of b1·b2·… rows for fn, and restored on its results."""
  def on_host(*leaves):
    batch = np.shape(leaves[0])[:np.ndim(leaves[0]) - row_ndims[0]]
    rows = math.prod(batch)
    flat = [np.asarray(a).reshape((rows,) + np.shape(a)[len(batch):]) for a in leaves]
    out = fn(*jax.tree_util.tree_unflatten(tree, flat))
    return jax.tree_util.tree_map(lambda o, s: np.asarray(o, s.dtype).reshape(batch + s.shape), out, result_shape)
  return on_host


# ---------------------------------------------------------------- lossless transport of 64-bit host arrays

def _wide(dtype) -> bool:
  return np.dtype(dtype).itemsize == 8 and np.dtype(dtype).kind in "fiu"


def wire_shape(row) -> jax.ShapeDtypeStruct:
  """How one row of a host array travels in JAX: 64-bit numbers as a trailing pair of uint32 words."""
  row = np.asarray(row)
  if row.dtype.kind == "c" or row.dtype == object:
    raise TypeError(f"host state leaves must be real numbers or booleans; got dtype {row.dtype}")
  if _wide(row.dtype):
    return jax.ShapeDtypeStruct(row.shape + (2,), jnp.uint32)
  return jax.ShapeDtypeStruct(row.shape, row.dtype)


def encode(x):
  x = np.ascontiguousarray(x)
  return x[..., None].view(np.uint32) if _wide(x.dtype) else x


def decode(x, dtype):
  """The host array `encode` made `x` from: a fresh, writable copy (callback operands are read-only)."""
  return np.ascontiguousarray(x).view(dtype)[..., 0].copy() if _wide(dtype) else np.array(x, dtype)


# ---------------------------------------------------------------- the system

def host_system(reset: Callable, step: Callable, policy: Callable, *, horizon: int,
                name: str = "host system") -> UnrolledSystem:
  """An UnrolledSystem whose environment runs on the host (module docstring).

  reset(seeds uint32 [B]) -> (state, observation): pytrees of numpy arrays with leading axis B.
  step(state, action, seeds uint32 [B]) -> (state, observation, loss [B], done [B]); only running rows are passed.
  policy(theta, observation, key) -> action, a JAX function of one member's observation (float32).
  The system's state is {"sim": the host state (64-bit leaves as uint32 pairs), "obs", "done"}.
  """
  for arg, f in (("reset", reset), ("step", step), ("policy", policy)):
    if not callable(f):
      raise TypeError(f"{arg} must be a callable; got {f!r}")
  horizon = check_int("horizon", horizon, 1)
  probe_state, probe_obs = reset(np.zeros((1,), np.uint32))   # one host call when built: shapes and dtypes
  sim = jax.tree_util.tree_map(lambda x: wire_shape(np.asarray(x)[0]), probe_state)
  dtypes = jax.tree_util.tree_map(lambda x: np.asarray(x).dtype, probe_state)
  obs = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], jnp.float32), probe_obs)
  host_reset = host_function(_reset_on_host(reset), (sim, obs), name=name)
  steps = {}

  def init(key, theta):
    state, observation = host_reset(jax.random.bits(key, (), jnp.uint32))
    return {"sim": state, "obs": observation, "done": jnp.zeros((), bool)}

  def system_step(theta, state, key):
    policy_key, seed_key = jax.random.split(key)
    action = policy(theta, state["obs"], policy_key)
    spec = jax.ShapeDtypeStruct(jnp.shape(action), jnp.result_type(action))
    if spec not in steps:   # checked once per action shape, on the host, when traced
      _check_step(step, probe_state, spec, obs, name)
      steps[spec] = host_function(_step_on_host(step, dtypes, obs), (sim, obs, _LOSS, _DONE),
                                    name=name)
    running = jnp.logical_not(state["done"])
    new_sim, observation, loss, done = steps[spec](state["sim"], action, jax.random.bits(seed_key, (), jnp.uint32),
                                                   running)
    moved = {"sim": new_sim, "obs": observation, "done": done}
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(running, a, b), moved, state)
    return new, jnp.where(running, loss, 0.0)

  return UnrolledSystem(init=init, step=system_step, horizon=horizon)


_LOSS = jax.ShapeDtypeStruct((), jnp.float32)
_DONE = jax.ShapeDtypeStruct((), jnp.bool_)


def _reset_on_host(reset):
  def on_host(seeds):
    state, observation = reset(seeds)
    return jax.tree_util.tree_map(encode, state), jax.tree_util.tree_map(lambda o: np.asarray(o, np.float32),
                                                                          observation)
  return on_host


def _step_on_host(step, dtypes, obs):
  """The user's step on the running rows only; frozen rows keep their state (observation 0, loss 0, done)."""
  def on_host(sim, action, seeds, running):
    n, rows = len(running), np.flatnonzero(running)
    new_sim = jax.tree_util.tree_map(np.array, sim)
    observation = jax.tree_util.tree_map(lambda s: np.zeros((n,) + s.shape, np.float32), obs)
    loss, done = np.zeros(n, np.float32), np.ones(n, bool)
    if len(rows):
      state = jax.tree_util.tree_map(lambda x, d: decode(x, d)[rows], sim, dtypes)
      state, obs_rows, loss[rows], done[rows] = step(state, action[rows], seeds[rows])
      jax.tree_util.tree_map(lambda out, new: out.__setitem__(rows, encode(new)), new_sim, state)
      jax.tree_util.tree_map(lambda out, new: out.__setitem__(rows, new), observation, obs_rows)
    return new_sim, observation, loss, done
  return on_host


def _check_step(step, probe_state, action, obs, name):
  """One call of the user's step on the probe state with a zero action: clear errors at trace time, not deep
  inside a compiled callback."""
  out = step(probe_state, np.zeros((1,) + action.shape, action.dtype), np.zeros((1,), np.uint32))
  if not (isinstance(out, tuple) and len(out) == 4):
    raise ValueError(f"{name}: step must return (state, observation, loss, done); got {type(out).__name__}")
  state, observation, loss, done = out
  if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(probe_state):
    raise ValueError(f"{name}: step must return a state with the same structure as reset's")
  shapes = jax.tree_util.tree_map(lambda o: np.shape(o)[1:], observation)
  if shapes != jax.tree_util.tree_map(lambda s: s.shape, obs):
    raise ValueError(f"{name}: step's observation rows must have reset's shapes; got {shapes}")
  if np.shape(loss) != (1,) or np.shape(done) != (1,):
    raise ValueError(f"{name}: step must return one loss and one done flag per row (shape [B]); got "
                     f"{np.shape(loss)} and {np.shape(done)}")
