"""Particles split over 4 (virtual CPU) devices give the single-device estimate to float tolerance."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import unrolled_es as ue
    from systems import MATRIX_THETA, matrix_system
    assert jax.device_count() == 4, jax.devices()
    system, key = matrix_system(7), jax.random.PRNGKey(0)
    mesh = ue.particle_mesh()
    mask = {"W": np.arange(12).reshape(4, 3) % 3 != 1, "b": np.array([True, False, True])}
    for name, kw in [("pes", dict(sigma=0.1)), ("es_single", dict(sigma=0.1, noise=ue.low_rank(1, factored=True))),
                     ("es_single", dict(sigma=0.1, noise=ue.low_rank(1, factored=True), mask=mask)),
                     ("truncated_bptt", {})]:
      out = {}
      for m in (None, mesh):
        est = getattr(ue, name)(system, num_particles=8, truncation_length=3, mesh=m, **kw)
        state = jax.jit(est.init)(key, MATRIX_THETA)
        estimate = jax.jit(est.estimate)
        for i in range(3):
          g, state, info = estimate(jax.random.fold_in(key, i), MATRIX_THETA, state)
        out[m is None] = (g, info)
        if m is not None:
          assert len(state.t.sharding.device_set) == 4, state.t.sharding
      for a, b in zip(jax.tree_util.tree_leaves(out[True]), jax.tree_util.tree_leaves(out[False])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
      if "mask" in kw:   # masked coordinates are exactly zero on the mesh too
        for g, m in zip(jax.tree_util.tree_leaves(out[False][0]), jax.tree_util.tree_leaves(mask)):
          assert np.all(np.asarray(g)[~m] == 0) and np.all(np.asarray(g)[m] != 0)
    try:
      ue.pes(system, num_particles=6, sigma=0.1, truncation_length=3, mesh=mesh)
      raise SystemExit("expected a ValueError for 6 particles on 4 devices")
    except ValueError as e:
      assert "num_particles" in str(e)
    print("SHARDED OK")
""")


def test_sharded_particles_match_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
             PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and "SHARDED OK" in out.stdout, out.stdout + out.stderr
