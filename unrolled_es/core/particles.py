"""The particles' state and its bookkeeping: which window each particle is in, when it resets, when it redraws.

A particle is one noise draw and its M members (the sign of σ each runs with), at some inner step t of its
current episode of length T. Noise is never stored: a particle keeps the key of its current draw and regenerates
the draw each window. Everything here is per particle and vectorised over the leading axis N.
"""
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from unrolled_es.core import prng


class Particles(NamedTuple):
  """Estimator state. Leading axis N; `inner` has a second axis M (members). The per-particle counters and the key
  of the current draw travel as one array, `clock`: a compiled call pays for each array it returns (see `pack`)."""
  inner: Any              # [N, M, ...] inner states
  clock: jax.Array        # [N, 5] uint32: t, horizon, windows_since_draw (int32 bits), noise_key (2 words)
  memory: Any             # the weighting's per-particle memory (PES: the sum ξ of the episode's draws), or None
  init_steps: jax.Array   # inner steps spent by `init` (staggering burn-in), for honest step counts
  draws: Any = None       # the current draws packed (`pack`), kept when compact and rarely changed (else regenerated)

  @property
  def t(self):
    """[N] steps taken in the current episode; == horizon: reset before the next step."""
    return _counter(self.clock, 0)

  @property
  def horizon(self):
    """[N] length of the current episode."""
    return _counter(self.clock, 1)

  @property
  def windows_since_draw(self):
    """[N] windows begun since the current draw."""
    return _counter(self.clock, 2)

  @property
  def noise_key(self):
    """[N, 2] key of the current draw (noise is regenerated, never stored)."""
    return self.clock[:, 3:5]


def _counter(clock, column):
  return jax.lax.bitcast_convert_type(clock[:, column], jnp.int32)


def make_clock(t, horizon, windows_since_draw, noise_key):
  """`Particles.clock` from its parts."""
  counters = jnp.stack([t, horizon, windows_since_draw], axis=1).astype(jnp.int32)
  return jnp.concatenate([jax.lax.bitcast_convert_type(counters, jnp.uint32), noise_key.astype(jnp.uint32)], axis=1)


class WindowKeys(NamedTuple):
  """Independent keys [N, 2] for one window: each particle's possible new draw, the draw and the init of a new
  episode, and the base of its per-step keys (shared by its members: common random numbers)."""
  draw: jax.Array
  reset: jax.Array
  init: jax.Array
  steps: jax.Array


class Plan(NamedTuple):
  """What happens to each particle in this window, decided before any inner step runs."""
  reset_slot: jax.Array   # [N] the slot at which the particle starts a new episode (>= K: it does not)
  resets: jax.Array       # [N] bool
  redraw: jax.Array       # [N] bool: a new draw at the window's start (the redraw rule; resets aside)
  windows_begun: jax.Array  # [N] windows begun since the current draw, this one included
  draw_key: jax.Array     # [N, 2] the key of the draw in force before any reset


def tree_select(pred, on_true, on_false):
  """Per-leading-index select between two pytrees of the same structure."""
  def sel(a, b):
    p = jnp.reshape(pred, jnp.shape(pred) + (1,) * (jnp.ndim(a) - jnp.ndim(pred)))
    return jnp.where(p, a, b)
  return jax.tree_util.tree_map(sel, on_true, on_false)


def constrain(mesh, tree):
  """Pins the leading (particle) axis of every leaf to the mesh's "particles" axis; theta stays replicated."""
  if mesh is None:
    return tree
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("particles"))
  return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def initial(inner_shapes, n: int, members: int, horizon: int, memory, mesh, draw_shapes=None) -> Particles:
  """All particles about to start an episode (t = T): the first window resets them at its first slot.
  `draw_shapes`: one draw's shapes, when draws are kept in the state."""
  zeros = lambda shapes, lead: jax.tree_util.tree_map(lambda s: jnp.zeros(lead + s.shape, s.dtype), shapes)
  full = jnp.full((n,), horizon, jnp.int32)
  p = Particles(inner=zeros(inner_shapes, (n, members)),
                clock=make_clock(full, full, jnp.ones((n,), jnp.int32), jnp.zeros((n, 2), jnp.uint32)),
                memory=memory, init_steps=None,
                draws=None if draw_shapes is None else pack(zeros(draw_shapes, (n,))))
  return constrain(mesh, p)._replace(init_steps=jnp.zeros((), jnp.int32))


def pack(tree):
  """Per-particle leaves [N, ...] as one [N, D] array per dtype (a tuple, in the order the dtypes first appear).

  A compiled call pays for every array it returns (benchmarks/profile_window.py's "dispatch"), so kept draws
  travel as one array instead of one or two per leaf of θ."""
  leaves = jax.tree_util.tree_leaves(tree)
  n = leaves[0].shape[0]
  dtypes = tuple(dict.fromkeys(x.dtype for x in leaves))
  return tuple(jnp.concatenate([x.reshape(n, -1) for x in leaves if x.dtype == d], axis=1) for d in dtypes)


def unpack(packed, like):
  """`pack`'s inverse: `like` is one particle's tree (arrays or shapes); returns its leaves with the leading N."""
  leaves, treedef = jax.tree_util.tree_flatten(like)
  dtypes = tuple(dict.fromkeys(x.dtype for x in leaves))
  offsets, out = dict.fromkeys(dtypes, 0), []
  for x in leaves:
    group, size = packed[dtypes.index(x.dtype)], math.prod(x.shape)
    out.append(group[:, offsets[x.dtype]:offsets[x.dtype] + size].reshape(group.shape[:1] + tuple(x.shape)))
    offsets[x.dtype] += size
  return jax.tree_util.tree_unflatten(treedef, out)


def window_keys(key, n: int, mesh) -> WindowKeys:
  """Four independent keys per particle from the window's key (one fused Threefry hash)."""
  keys = prng.split(prng.raw_key(key), 4 * n).reshape(n, 4, 2)
  return WindowKeys(*jnp.moveaxis(constrain(mesh, keys), 1, 0))


def plan(p: Particles, keys: WindowKeys, truncation_length: int, redraw_rule) -> Plan:
  """Resets fall where a particle's episode ends; redraws where the estimator's rule says so."""
  reset_slot = p.horizon - p.t
  windows_begun = p.windows_since_draw + 1
  redraw = redraw_rule(windows_begun)
  windows_begun = jnp.where(redraw, 1, windows_begun)
  return Plan(reset_slot=reset_slot, resets=reset_slot < truncation_length, redraw=redraw,
              windows_begun=windows_begun, draw_key=jnp.where(redraw[:, None], keys.draw, p.noise_key))


def advance(p: Particles, plan_: Plan, keys: WindowKeys, final_inner, valid, memory, truncation_length: int,
            draws=None, new_horizon=None):
  """The state after the window: a particle that was not valid restarts its episode before its next window.
  `draws`: the draws in force at the window's end, when the state keeps them; `new_horizon` [N]: the length of
  the episode a resetting particle starts (None: the same as the last)."""
  k = truncation_length
  horizon = p.horizon if new_horizon is None else jnp.where(plan_.resets, new_horizon, p.horizon)
  t = jnp.where(valid, jnp.where(plan_.resets, k - plan_.reset_slot, p.t + k), horizon)
  clock = make_clock(t, horizon, jnp.where(plan_.resets, 1, plan_.windows_begun),
                     jnp.where(plan_.resets[:, None], keys.reset, plan_.draw_key))
  return p._replace(draws=draws, inner=final_inner, clock=clock, memory=memory)


def episode_begins(p: Particles) -> Particles:
  """Every particle starts a new episode at this window's first slot (whole-episode estimators)."""
  return p._replace(clock=p.clock.at[:, 0].set(p.clock[:, 1]))   # t = horizon
