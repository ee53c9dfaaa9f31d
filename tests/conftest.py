import atexit
import os
import shutil
import sys
import tempfile

# Tests compile far more than they run. On CPU, XLA's backend optimisations double compile time and buy nothing at
# these sizes; LLVM's expensive passes add a few per cent more. Neither changes what is computed. Set before any
# test touches a backend (subprocess tests inherit it).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")

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
