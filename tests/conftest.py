import atexit
import os
import shutil
import subprocess
import sys
import tempfile

# Tests compile far more than they run. On CPU, XLA's backend optimisations double compile time and buy nothing at
# these sizes; LLVM's expensive passes add a few per cent more. XLA's MLIR fusion emitters (the default of recent
# jaxlibs) compile 2–2.5× slower than its classic elemental emitters, which generate the same computation: without
# them every task's estimators compile in 40% of the time (tasks' estimators: rnn_char 14.6 → 5.9 CPU-s). jaxlibs
# that predate the flag abort on it, so it is set only where a child interpreter accepts it. Set before any test
# touches a backend (subprocess tests and the xdist workers inherit it).
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _accepted(flags):
  probe = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0


if "XLA_FLAGS" not in os.environ:
  _emitters = _FAST_COMPILE + " --xla_cpu_use_fusion_emitters=false"
  os.environ["XLA_FLAGS"] = _emitters if _accepted(_emitters) else _FAST_COMPILE

# Many tests compile the same program (one estimator on one test system); a compilation cache shared by this run's
# processes compiles it once. The first process to load this file (pytest-xdist's controller, or a lone pytest)
# makes a fresh folder and removes it at exit; the workers and subprocess tests inherit the variable, so no run
# reads another run's entries.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="unrolled_es_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
sys.path.insert(0, os.path.dirname(__file__))
