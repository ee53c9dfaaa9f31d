"""ue.host_system: a numpy simulator behind the UnrolledSystem contract, one host call per inner step.

The exact test bed is the linear system of tests/systems.py written twice: in numpy on the host and in JAX. ES
estimates on the two must agree (same keys, same noise, the same dynamics in float64 and float32), and ES-Single's
must be unbiased for jax.grad through the JAX twin."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unrolled_es as ue
from systems import A, U, Y, assert_unbiased, run_windows
from unrolled_es.core.system import run_episode

S0 = np.array([0.5, -0.2, 0.1])
THETA = {"w": jnp.array([0.2, -0.1, 0.4]), "b": jnp.array(0.3)}
ES = ("es_single", "pes", "full_es", "truncated_es", "baseline_es", "generalized_pes")


def twin_system(horizon):
  """The JAX twin: s_0 = S0, s_{t+1} = A s_t + w + b·u, l_t = ½‖s_{t+1} − y‖² (quadratic in θ)."""
  def init(key, theta):
    return jnp.asarray(S0, jnp.float32)

  def step(theta, s, key):
    s = A @ s + theta["w"] + theta["b"] * U
    return s, 0.5 * jnp.sum((s - Y) ** 2)
  return ue.UnrolledSystem(init, step, horizon)


class LinearHost:
  """The same system in numpy (float64), batched over rows; counts its calls and the rows each one got."""

  def __init__(self, noise=0.0, done_after=None):
    self.noise, self.done_after, self.calls = noise, done_after, []

  def reset(self, seeds):
    noise = np.stack([np.random.default_rng(int(s)).normal(size=3) for s in seeds]) * self.noise
    return {"s": S0 + noise, "t": np.zeros(len(seeds), np.int64)}, np.tile(S0, (len(seeds), 1)) + noise

  def step(self, state, action, seeds):
    self.calls.append(len(seeds))
    noise = np.stack([np.random.default_rng(int(s)).normal(size=3) for s in seeds]) * self.noise
    s = state["s"] @ np.asarray(A, np.float64).T + action + noise
    loss = 0.5 * np.sum((s - np.asarray(Y, np.float64)) ** 2, axis=1)
    t = state["t"] + 1
    done = np.zeros(len(seeds), bool) if self.done_after is None else t >= self.done_after
    return {"s": s, "t": t}, s, loss, done


def open_loop(theta, observation, key):
  return theta["w"] + theta["b"] * U


def host_twin(horizon, **kw):
  host = LinearHost(**kw)
  return host, ue.host_system(host.reset, host.step, open_loop, horizon=horizon)


def make(name, system, **kw):
  kw = dict(num_particles=8, sigma=0.1, **kw)
  if name != "full_es":
    kw["truncation_length"] = 3
  if name == "generalized_pes":
    kw["resample_every"] = 6
  return ue.make(name, system, **kw)


def _three_estimates(system):
  """Every ES estimator's third estimate (through a reset: T = 12, staggered particles) in one compiled program."""
  ests = [make(name, system) for name in ES]

  def run(key):
    out = []
    for est in ests:
      def window(state, k):
        grad, state, info = est.estimate(k, THETA, state)
        return state, (grad, info["loss"])
      out.append(jax.lax.scan(window, est.init(key, THETA), jax.random.split(key, 3))[1])
    return out
  return jax.jit(run)(jax.random.PRNGKey(0))


def test_every_es_estimator_gives_the_jax_twins_estimate():
  _, host = host_twin(12)
  for name, on_host, in_jax in zip(ES, _three_estimates(host), _three_estimates(twin_system(12))):
    for a, b in zip(jax.tree_util.tree_leaves(on_host), jax.tree_util.tree_leaves(in_jax)):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-4, err_msg=name)


def test_es_single_on_the_host_is_unbiased_for_the_exact_gradient():
  horizon, k = 12, 3
  _, host = host_twin(horizon)
  est = ue.es_single(host, num_particles=8, sigma=0.1, truncation_length=k)
  grads, _ = run_windows(est, THETA, horizon // k, 128)
  exact = jax.grad(lambda th: ue.evaluate(twin_system(horizon), th, jax.random.PRNGKey(0)))(THETA)
  assert_unbiased(jax.tree_util.tree_map(lambda g: g.mean(1), grads), exact, what="es_single on the host")


def test_one_host_call_per_inner_step_for_every_member():
  host, system = host_twin(12)
  est = ue.pes(system, num_particles=5, sigma=0.1, truncation_length=4, stagger=False)
  state = jax.jit(est.init)(jax.random.PRNGKey(0), THETA)
  estimate = jax.jit(est.estimate).lower(jax.random.PRNGKey(1), THETA, state).compile()
  host.calls.clear()
  jax.block_until_ready(estimate(jax.random.PRNGKey(1), THETA, state))
  assert host.calls == [5 * 2] * 4   # K = 4 calls, each with all N·M = 10 members


def test_keys_give_the_simulators_seeds():
  _, system = host_twin(12, noise=0.3)
  est = ue.es_single(system, num_particles=4, sigma=0.1, truncation_length=3)
  state = jax.jit(est.init)(jax.random.PRNGKey(0), THETA)
  estimate = jax.jit(est.estimate)
  first, second, other = (estimate(jax.random.PRNGKey(k), THETA, state) for k in (1, 1, 2))
  for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(first[0]["w"], other[0]["w"])
  again = jax.jit(est.init)(jax.random.PRNGKey(0), THETA)
  np.testing.assert_array_equal(again.inner["sim"]["s"], state.inner["sim"]["s"])
  assert len(np.unique(np.asarray(state.inner["obs"])[:, 0, 0])) == 4   # each particle its own seed


def test_terminated_members_are_frozen_and_not_sent_to_the_host():
  host, system = host_twin(6, done_after=2)
  episode = jax.jit(lambda th, k: run_episode(system, th, k)).lower(THETA, jax.random.PRNGKey(0)).compile()
  host.calls.clear()
  final, losses = jax.block_until_ready(episode(THETA, jax.random.PRNGKey(0)))
  losses = np.asarray(losses)
  assert np.all(losses[:2] > 0) and np.all(losses[2:] == 0) and bool(final["done"])
  assert host.calls == [1, 1]   # steps 3-6 have no running member: the user's step is not called
  # 64-bit state leaves travel bit for bit (the step counter is int64 on the host).
  assert final["sim"]["t"].dtype == jnp.uint32 and final["sim"]["t"].tolist() == [2, 0]


@pytest.mark.parametrize("make_autodiff", [
    lambda s: ue.truncated_bptt(s, truncation_length=3),
    lambda s: ue.full_bptt(s),
    lambda s: ue.uoro(s, num_particles=2, truncation_length=3),
    lambda s: ue.hybrid(ue.es_single(s, num_particles=2, sigma=0.1, truncation_length=3, diagnostics=True),
                        ue.truncated_bptt(s, truncation_length=3, num_particles=2, diagnostics=True)),
], ids=["truncated_bptt", "full_bptt", "uoro", "hybrid"])
def test_autodiff_estimators_refuse_a_host_system(make_autodiff):
  _, system = host_twin(6)
  est = make_autodiff(system)
  with pytest.raises(ValueError, match="runs outside JAX.*use an ES estimator"):
    jax.jit(lambda k: est.estimate(k, THETA, est.init(k, THETA)))(jax.random.PRNGKey(0))


def test_bad_host_functions_are_named():
  host = LinearHost()
  with pytest.raises(TypeError, match="step must be a callable"):
    ue.host_system(host.reset, 3, open_loop, horizon=4)
  with pytest.raises(ValueError, match="horizon must be"):
    ue.host_system(host.reset, host.step, open_loop, horizon=0)
  bad = ue.host_system(host.reset, lambda s, a, seeds: (s, a, np.zeros((len(seeds), 2)), np.zeros(len(seeds))),
                       open_loop, horizon=4)
  with pytest.raises(ValueError, match="one loss and one done flag per row"):
    jax.jit(lambda k: ue.evaluate(bad, THETA, k))(jax.random.PRNGKey(0))


MESH_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    import unrolled_es as ue
    from test_host_system import THETA, host_twin
    assert jax.device_count() == 4
    host, system = host_twin(12)
    out = []
    for mesh in (None, ue.particle_mesh()):
      est = ue.es_single(system, num_particles=8, sigma=0.1, truncation_length=3, mesh=mesh)
      state = jax.jit(est.init)(jax.random.PRNGKey(0), THETA)
      estimate = jax.jit(est.estimate).lower(jax.random.PRNGKey(1), THETA, state).compile()
      host.calls.clear()
      out.append(jax.block_until_ready(estimate(jax.random.PRNGKey(1), THETA, state))[0])
      assert host.calls == [16] * 3, host.calls   # one call per step for all members, on the mesh too
    for a, b in zip(jax.tree_util.tree_leaves(out[0]), jax.tree_util.tree_leaves(out[1])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    print("MESH OK")
""")


def test_a_particle_mesh_gives_the_single_device_estimate():
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(__file__))
  result = subprocess.run([sys.executable, "-c", MESH_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
  assert "MESH OK" in result.stdout, result.stderr[-3000:]
