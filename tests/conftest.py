import os
import sys

# Tests compile far more than they run: XLA's backend optimisations double compile time on CPU and buy nothing
# at these sizes. Set before any test touches a backend (subprocess tests inherit it).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
sys.path.insert(0, os.path.dirname(__file__))
