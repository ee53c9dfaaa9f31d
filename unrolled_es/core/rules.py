"""What makes an ES estimator that estimator: the engine's extension point.

Every online ES estimator runs the same pipeline (unrolled_es/core/engine.py): each of N particles holds one noise draw
ε_i and M members that run θ + s_m·σ·ε_i for K inner steps, resetting per particle at the end of its episode. The
estimate for a window is

    ĝ = 1/(σ·n·K) Σ_i [ (Σ_{slots before the reset} Δ_ij) · w_i  +  (Σ_{slots after it} Δ_ij) · ε_i^new ],

n the particles whose losses were all finite. A `Rule` fills in what differs between estimators:

  pairing    the members' signs s_m, and how their losses become one loss difference Δ_ij per slot
             (antithetic: ½(l⁺ − l⁻); one-sided: l − the other particles' mean; or against an unperturbed member);
  redraw     when a particle draws new noise within an episode (it always does at its reset);
  weighting  which draw w_i weights the differences before a reset: the current draw ε_i (ES-Single, truncated
             ES) or the sum ξ_i of the episode's draws so far (PES, Vicol et al. 2021; GPES, Li et al. 2023);
  window_start  the members' states when a window begins: their own (online ES) or the first member's for every
             member (truncated ES, which forgets the past);
  whole_episodes  every call starts new episodes and runs them to the end (full ES).

Losses after a reset are weighted by the new episode's draw only, whatever the weighting: the new episode's
states do not depend on the old draws. A new estimator that changes only these choices is a `Rule` and a
constructor that calls `unrolled_es.core.engine.es_estimator(system, rule, ...)`; see README "Adding an estimator".
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


# ---------------------------------------------------------------- pairing: members and loss differences

class Pairing(NamedTuple):
  """The members of a particle (the sign of σ each runs with) and how their losses become Δ.

  differences(losses [N, M, K] float32, valid [N] bool) -> Δ [N, K], zero where a particle is not valid.
  """
  signs: tuple
  differences: Callable[[jax.Array, jax.Array], jax.Array]


def antithetic_differences(losses, valid):
  """Δ = ½(l⁺ − l⁻): θ + σε and θ − σε on the same step keys (common random numbers)."""
  return jnp.where(valid[:, None], 0.5 * (losses[:, 0] - losses[:, 1]), 0.0)


def leave_one_out_differences(losses, valid):
  """Δ_ij = l_ij − b_ij, b_ij the mean loss of the other valid particles at slot j: independent of ε_i, so the
  estimate stays unbiased, and it removes most of the loss's level from the weight on ε_i."""
  loss = jnp.where(valid[:, None], losses[:, 0], 0.0)
  others = jnp.sum(loss, axis=0, keepdims=True) - loss
  n_others = jnp.sum(valid) - valid.astype(jnp.int32)
  return jnp.where(valid[:, None], loss - others / jnp.maximum(n_others, 1)[:, None], 0.0)


def baseline_differences(losses, valid):
  """Δ = l(θ + σε) − l(θ): the particle's unperturbed member, on the same keys and from the same episode start,
  is the baseline (EGGROLL's baseline-subtracted variant, Sarkar et al. 2025). E[ε·l(θ)] = 0, so it is unbiased."""
  return jnp.where(valid[:, None], losses[:, 0] - losses[:, 1], 0.0)


ANTITHETIC = Pairing((1.0, -1.0), antithetic_differences)
ONE_SIDED = Pairing((1.0,), leave_one_out_differences)
UNPERTURBED_BASELINE = Pairing((1.0, 0.0), baseline_differences)


def pairing_for(antithetic: bool) -> Pairing:
  """The standard pairing: antithetic members, or one member with the leave-one-out baseline."""
  return ANTITHETIC if antithetic else ONE_SIDED


# ---------------------------------------------------------------- redraw rules

def never(windows_begun):
  """Noise changes only when the particle resets: one draw per particle per episode (ES-Single, full ES)."""
  return jnp.zeros(jnp.shape(windows_begun), bool)


def every(windows: int) -> Callable:
  """A new draw once `windows` windows have begun since the last one (1: every window; PES, truncated ES)."""
  def redraw(windows_begun):
    return windows_begun > windows
  return redraw


# ---------------------------------------------------------------- weightings

class Weighting(NamedTuple):
  """Which draw weights a particle's loss differences before a reset in the window.

  init(theta, n) -> memory         per-particle memory kept between windows ([N, θ] pytree, or None)
  weight(noise, memory, eps, redrawn) -> (w, memory)   this window's weight (a draw, or a θ-shaped float32 pytree)
  restart(noise, eps) -> memory    the memory of a new episode that starts with draw `eps`
  """
  init: Callable[[Any, int], Any]
  weight: Callable[[Any, Any, Any, jax.Array], tuple]
  restart: Callable[[Any, Any], Any]


def _no_memory(*_):
  return None


CURRENT_DRAW = Weighting(init=_no_memory, weight=lambda noise, memory, eps, redrawn: (eps, None),
                         restart=_no_memory)


def _zeros_per_particle(theta, n):
  return jax.tree_util.tree_map(lambda x: jnp.zeros((n,) + jnp.shape(x), jnp.float32), theta)


def _add_new_draws(noise, xi, eps, redrawn):
  """ξ ← ξ + ε for the particles that drew this window (float32, whatever θ's dtype)."""
  dense = jax.vmap(noise.dense)(eps)
  keep = lambda x, e: x + jnp.where(jnp.reshape(redrawn, (-1,) + (1,) * (jnp.ndim(e) - 1)), e, 0.0)
  xi = jax.tree_util.tree_map(keep, xi, dense)
  return xi, xi


EPISODE_SUM = Weighting(init=_zeros_per_particle, weight=_add_new_draws,
                        restart=lambda noise, eps: jax.vmap(noise.dense)(eps))


# ---------------------------------------------------------------- window starts

def own_states(inner):
  """Each member continues from its own state: θ's influence through earlier windows is kept."""
  return inner


def first_member_state(inner):
  """Every member starts the window from the first member's state (truncated ES: the past is forgotten)."""
  return jax.tree_util.tree_map(lambda s: jnp.broadcast_to(s[:, :1], s.shape), inner)


class Rule(NamedTuple):
  """The choices that define an online ES estimator (see the module docstring)."""
  redraw: Callable[[jax.Array], jax.Array] = never
  weighting: Weighting = CURRENT_DRAW
  pairing: Pairing = ANTITHETIC
  window_start: Callable[[Any], Any] = own_states
  whole_episodes: bool = False
