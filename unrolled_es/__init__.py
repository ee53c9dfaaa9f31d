"""unrolled_es: gradient estimates through long unrolled computation graphs, without backpropagating through them.

    est = unrolled_es.es_single(system, num_particles=64, sigma=0.01, truncation_length=10)
    state = est.init(key, theta)
    grad, state, info = est.estimate(key, theta, state)   # grad feeds any optax optimizer
"""
from unrolled_es.estimator import GradientEstimator, particle_mesh
from unrolled_es.estimators import (es_single, full_bptt, full_es, generalized_pes, make, nres, pes, truncated_bptt,
                                    truncated_es)
from unrolled_es.haiku_layers import haiku_apply
from unrolled_es.layers import linear, materialize
from unrolled_es.multi_task import multi_task
from unrolled_es.noise import Noise, PerturbedMatrix, gaussian, low_rank
from unrolled_es.system import UnrolledSystem, evaluate

ESTIMATORS = ("full_es", "truncated_es", "pes", "generalized_pes", "es_single", "nres", "truncated_bptt",
              "full_bptt")

__all__ = ["UnrolledSystem", "GradientEstimator", "evaluate", "Noise", "gaussian", "low_rank", "PerturbedMatrix",
           "linear", "materialize", "haiku_apply", "particle_mesh", "make", "multi_task", *ESTIMATORS, "ESTIMATORS"]
