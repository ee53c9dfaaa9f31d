"""unrolled_es: gradient estimates through long unrolled computation graphs, without backpropagating through them.

    est = unrolled_es.es_single(system, num_particles=64, sigma=0.01, truncation_length=10)
    state = est.init(key, theta)
    grad, state, info = est.estimate(key, theta, state)   # grad feeds any optax optimizer
"""
from unrolled_es.options import fitness
from unrolled_es.options import horizons
from unrolled_es.population import pruning
from unrolled_es.core import rules
from unrolled_es.options.clipping import clip_gradient
from unrolled_es.population.deep_ga import deep_ga
from unrolled_es.population.snes import snes
from unrolled_es.population.base import PopulationMethod, as_estimator
from unrolled_es.estimators.registry import options as estimator_options
from unrolled_es.training.runs import load_theta
from unrolled_es.noise.orthogonal import orthogonal
from unrolled_es.options.hybrid import hybrid
from unrolled_es.noise.guided import guided
from unrolled_es.core.engine import es_estimator
from unrolled_es.core.host_system import host_function, host_system
from unrolled_es.core.estimator import GradientEstimator, particle_mesh
from unrolled_es.estimators import (baseline_es, es_single, full_bptt, full_es, generalized_pes, make, nres, pes,
                                    register, registered, truncated_bptt, truncated_es, uoro)
from unrolled_es.layers.equinox import equinox_model
from unrolled_es.layers.flax import flax_apply
from unrolled_es.layers.nnx import nnx_model
from unrolled_es.layers.haiku import haiku_apply
from unrolled_es.layers.plain import linear, materialize
from unrolled_es.options.multi_task import multi_task
from unrolled_es.noise.base import Noise, PerturbedMatrix, gaussian, low_rank
from unrolled_es.core.rules import Rule
from unrolled_es.core.system import UnrolledSystem, evaluate
from unrolled_es.training.loop import TrainResult, load_metrics, train

ESTIMATORS = tuple(registered())  # the names at import; `registered()` also lists estimators registered later

# Integer low-rank ES trains int8 θ, which no float estimator takes: it registers "int_es" after ESTIMATORS (the
# estimators of float θ, which sweeps over estimators run on any float task) is taken.
from unrolled_es.population import int_es as integer
from unrolled_es.layers import integer as integer_layers  # noqa: E402
from unrolled_es.population.int_es import int_es, saturating_steps  # noqa: E402

__all__ = ["UnrolledSystem", "GradientEstimator", "evaluate", "Noise", "gaussian", "low_rank", "PerturbedMatrix",
           "linear", "materialize", "haiku_apply", "flax_apply", "nnx_model", "equinox_model", "particle_mesh", "make",
           "multi_task", "Rule", "rules", "horizons", "fitness", "clip_gradient", "deep_ga", "snes", "PopulationMethod", "as_estimator", "load_theta", "orthogonal", "hybrid", "guided",
           "pruning", "es_estimator", "host_system", "host_function", "register", "registered", "estimator_options", *ESTIMATORS, "ESTIMATORS", "integer", "integer_layers",
           "int_es", "saturating_steps", "train", "TrainResult", "load_metrics"]
