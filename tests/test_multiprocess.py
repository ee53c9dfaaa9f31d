"""Two processes on localhost (jax.distributed, CPU collectives over gloo), 2 CPU devices each: particles
sharded over all 4 global devices give the single-process estimate to float tolerance."""
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import unrolled_es as ue
from systems import MATRIX_THETA, matrix_system

# PES (a sharded accumulator in the state) and factored low-rank ES-Single with the staggering burn-in; BPTT sharding is covered by
# test_sharding.py on one process.
CASES = [("pes", dict(sigma=0.1, stagger=False)), ("es_single", dict(sigma=0.1, noise=ue.low_rank(1, factored=True)))]
WINDOWS = 3

WORKER = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid, initialization_timeout=60,
                               heartbeat_timeout_seconds=30, shutdown_timeout_seconds=30)
    import numpy as np
    from jax.experimental import multihost_utils
    import unrolled_es as ue
    from test_multiprocess import run
    assert (jax.process_count(), jax.local_device_count(), jax.device_count()) == (2, 2, 4), jax.devices()
    results = run(ue.particle_mesh())
    # The gradient may be laid out over both processes: gather it before reading it on the host.
    results = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in results.items()}
    np.savez(out, **results)
    jax.distributed.shutdown()
    print("WORKER OK", pid)
""")


def run(mesh):
  """{case/leaf: value} of the third window's gradient and loss; the same code in one or two processes."""
  system, key, out = matrix_system(7), jax.random.PRNGKey(0), {}
  for name, kw in CASES:
    est = getattr(ue, name)(system, num_particles=8, truncation_length=3, mesh=mesh, **kw)
    state, estimate = jax.jit(est.init)(key, MATRIX_THETA), jax.jit(est.estimate)
    for i in range(WINDOWS):
      g, state, info = estimate(jax.random.fold_in(key, i), MATRIX_THETA, state)
    out.update({f"{name}/{k}": v for k, v in g.items()})
    out[f"{name}/loss"] = info["loss"]
  return out


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  if not hasattr(jax._src.lib._jax, "make_gloo_tcp_collectives"):   # pylint: disable=protected-access
    pytest.skip("this jaxlib was built without gloo CPU collectives")
  here = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
             PYTHONPATH=os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
  port = free_port()
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i), str(tmp_path / f"{i}.npz")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=240)[0])
  finally:
    for p in procs:   # never leave a worker waiting on its peer
      if p.poll() is None:
        p.kill()
        p.communicate()
  assert all(p.returncode == 0 for p in procs) and all("WORKER OK" in log for log in logs), "\n".join(logs)

  want = {k: np.asarray(v) for k, v in run(None).items()}
  for i in range(2):
    got = np.load(tmp_path / f"{i}.npz")
    assert set(got.files) == set(want)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=f"process {i}: {k}")
