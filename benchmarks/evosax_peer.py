"""evosax (0.3.x) PersistentES and NoiseReuseES driven around an `UnrolledSystem`, as a peer to ours.

evosax is optional (the `bench` extra), so it is imported only when a peer is built.

evosax's conventions, read from its source (evosax/algorithms/distribution_based/{persistent_es,
noise_reuse_es}.py, evosax 0.3.2):

* Minimisation: fitness is the loss. `tell` forms g = fitness · pert / (std² · popsize), i.e.
  g = 1/(Mσ²) Σ_m f_m ε_m over the M = popsize members, hands g to its optax optimizer, and applies the
  updates to the mean (optax.sgd(lr) moves the mean by -lr·g: descent).
* Antithetic layout: popsize must be even; rows [0, M/2) are +ε, rows [M/2, M) are their negatives, so
  member i pairs with member i + M/2. With P = M/2 pairs, g = 1/(2Pσ²) Σ_i ε_i (f⁺_i - f⁻_i): exactly the
  antithetic estimate of unrolled_es.rules (ANTITHETIC) with N = P. Here `num_particles` is P, and evosax's
  popsize is 2P.
* σ: `pert = std · z` with std = std_schedule(generation); we pass a constant schedule, so no decay.
  Fitness shaping must be the identity (its default) for a gradient estimate; we pass it explicitly.
* PES: every `ask` draws fresh ε and adds it to `pert_accum` (ξ); `tell` uses ξ in place of ε.
* NRES: `ask` draws ε every call but keeps it only when `inner_step_counter == 0`, else reuses the
  stored one; `tell` uses it as ε.
* Step counting: `tell` adds Params.K to `inner_step_counter` and, once it reaches Params.T, sets it to 0
  (PES also zeroes ξ; NRES resamples at the next `ask`). evosax never touches the inner problem: the user
  must reset the inner states at that same moment, all members at once (no per-member resets, no stagger).
  T and K are explicit here (evosax's defaults are T=100, K=10); T must be a multiple of K, otherwise the
  counter would reset mid-window relative to the episode.

The gradient is taken from evosax itself: the strategy's optimizer is a pass-through that stores the g it
receives in its state and returns zero updates, so the mean never moves and g is bit-exact.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from unrolled_es.core.system import (UnrolledSystem, check_int, check_positive_float, check_system, check_theta,
                                episode_keys, step_key)

KINDS = ("persistent_es", "noise_reuse_es")


class EvosaxPeer(NamedTuple):
  """Same shape as our `GradientEstimator`: pure, jit-able `init` and `estimate`."""
  init: Callable[[jax.Array, Any], Any]
  estimate: Callable[[jax.Array, Any, Any], tuple[Any, Any, dict]]


class PeerState(NamedTuple):
  es: Any              # evosax strategy state: mean, std, pert / pert_accum, inner_step_counter, ...
  inner: Any           # the members' inner states, leading axis 2P in evosax's [+; -] order
  bases: jax.Array     # per-member base of the step keys of the current episode (pairs share one)


def _capture_gradient():
  """An optax transformation whose state is the last gradient it saw and whose updates are zero."""
  import optax
  return optax.GradientTransformation(
      init=jnp.zeros_like,
      update=lambda grads, state, params=None: (jnp.zeros_like(grads), grads))


def _strategy(kind, population_size, solution, sigma):
  try:
    import optax
    from evosax.algorithms import NoiseReuseES, PersistentES
    from evosax.core.fitness_shaping import identity_fitness_shaping_fn
  except ImportError as e:
    raise ImportError("the evosax peer needs evosax>=0.3 (pip install 'unrolled_es[bench]')") from e
  cls = PersistentES if kind == "persistent_es" else NoiseReuseES
  return cls(population_size=population_size, solution=solution, optimizer=_capture_gradient(),
             std_schedule=optax.constant_schedule(sigma), fitness_shaping_fn=identity_fitness_shaping_fn)


def _checked_settings(kind, system, num_particles, sigma, truncation_length):
  """(pairs, σ, K), checked here because evosax does not check them."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
  check_system(system)
  num_pairs = check_int("num_particles", num_particles, 1)
  sigma = check_positive_float("sigma", sigma)
  k = check_int("truncation_length", truncation_length, 1, system.horizon)
  if system.horizon % k:
    raise ValueError(f"truncation_length must divide the horizon {system.horizon} (evosax resets all members in "
                     f"lockstep at the end of a window); got {truncation_length}")
  return num_pairs, sigma, k


def _window_info(losses, fitness, new_episode):
  """The same scalars as our estimators report, counted per pair (a "particle" of unrolled_es.core.particles)."""
  k, pop = losses.shape
  num_pairs = pop // 2
  finite = jnp.all(jnp.isfinite(losses.reshape(k, 2, num_pairs)), axis=(0, 1))
  n_valid = jnp.sum(finite)
  pair_loss = jnp.mean(fitness.reshape(2, num_pairs), axis=0)
  return {"loss": jnp.sum(jnp.where(finite, pair_loss, 0.0)) / n_valid,
          "num_nonfinite": (num_pairs - n_valid).astype(jnp.int32),
          "num_valid": n_valid.astype(jnp.int32),
          "resets": jnp.where(new_episode, num_pairs, 0).astype(jnp.int32),
          "inner_steps": jnp.asarray(pop * k, jnp.int32)}


def evosax_estimator(kind: str, system: UnrolledSystem, num_particles: int, sigma: float,
                     truncation_length: int) -> EvosaxPeer:
  """evosax's `kind` ("persistent_es" | "noise_reuse_es") as a gradient estimator over `system`.

  num_particles = P antithetic pairs (2P evosax members), sigma = σ, truncation_length = K. All members
  run in lockstep from step 0 of a fresh episode; each `estimate` call is one ask, one K-step window per
  member (vmapped, scanned) with fitness = the member's mean window loss, and one tell. At the first call
  of an episode the members' inner states are `system.init(key, member θ)`, so the window's perturbed θ
  also shapes the initial state. The returned grad is evosax's g (see the module docstring): for PES
  (Vicol et al. 2021) and NRES (Li et al. 2023) both unbiased for ∇ of the smoothed window loss through
  the whole episode so far.

  evosax needs a template of theta to build its strategy, so one is built per theta structure on first use.
  info, as our estimators report it: "loss" the mean window loss over pairs with finite losses,
  "num_nonfinite" / "num_valid" pairs with / without a non-finite loss (evosax does not guard them, so g is
  then non-finite too: the peer is left as it is), "resets" pairs that began a new episode in this call
  (all or none; the very first window is not counted), "inner_steps" member-steps run (2P·K).
  """
  num_pairs, sigma, k = _checked_settings(kind, system, num_particles, sigma, truncation_length)
  horizon, pop = system.horizon, 2 * num_pairs
  built = {}

  def setup(theta):
    check_theta(theta)
    flat, unravel = ravel_pytree(theta)
    sig = (jax.tree_util.tree_structure(theta), flat.shape, flat.dtype)
    if sig not in built:
      # Built eagerly even when first reached under jit, so the strategy keeps no tracer of its template.
      with jax.ensure_compile_time_eval():
        template = jax.tree_util.tree_map(lambda x: np.zeros(jnp.shape(x), jnp.result_type(x)), theta)
        strategy = _strategy(kind, pop, template, sigma)
      # Explicit T and K: evosax's defaults (T=100, K=10) would silently misplace the episode resets.
      built[sig] = (strategy, strategy.default_params.replace(T=horizon, K=k), unravel)
    return built[sig]

  def member_keys(key):
    init_keys, bases = jax.vmap(episode_keys)(jax.random.split(key, num_pairs)).swapaxes(0, 1)
    both = lambda x: jnp.concatenate([x, x])   # a member and its antithetic partner see the same data
    return both(init_keys), both(bases)

  def init(key, theta):
    strategy, params, _ = setup(theta)
    es = strategy.init(key, theta, params)
    # evosax initialises these from Python scalars (weakly typed) but `tell` returns them strongly typed;
    # fixing the type here keeps the state's type stable, so `estimate` compiles once and can be scanned.
    dtype = es.mean.dtype
    es = es.replace(best_solution=jnp.asarray(es.best_solution, dtype),
                    best_fitness=jnp.asarray(es.best_fitness, dtype))
    init_keys, bases = member_keys(key)
    # Placeholder inner states of the right structure; replaced at the first `estimate` (counter == 0).
    inner = jax.vmap(system.init, in_axes=(0, None))(init_keys, theta)
    return PeerState(es=es, inner=inner, bases=bases)

  def estimate(key, theta, state):
    strategy, params, unravel = setup(theta)
    ask_key, episode_key, tell_key = jax.random.split(key, 3)
    es = state.es.replace(mean=ravel_pytree(theta)[0])
    population, es = strategy.ask(ask_key, es, params)
    t0 = es.inner_step_counter

    def fresh_episode(_):
      init_keys, bases = member_keys(episode_key)
      return jax.vmap(system.init)(init_keys, population), bases

    inner, bases = jax.lax.cond(t0 == 0, fresh_episode, lambda _: (state.inner, state.bases), None)

    def body(inner, t):
      keys = jax.vmap(step_key, in_axes=(0, None))(bases, t)
      return jax.vmap(system.step)(population, inner, keys)

    inner, losses = jax.lax.scan(body, inner, t0 + jnp.arange(k))   # losses: (K, 2P)
    fitness = jnp.mean(losses, axis=0)
    es, _ = strategy.tell(tell_key, population, fitness, es, params)
    grad = unravel(es.opt_state)
    new_episode = (t0 == 0) & (state.es.generation_counter > 0)   # the first window's start is no reset
    return grad, PeerState(es=es, inner=inner, bases=bases), _window_info(losses, fitness, new_episode)

  return EvosaxPeer(init=init, estimate=estimate)
