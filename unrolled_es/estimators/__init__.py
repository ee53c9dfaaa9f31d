"""One constructor per estimator; each returns a `GradientEstimator`."""
from unrolled_es.estimators.bptt import full_bptt, truncated_bptt
from unrolled_es.estimators.es_single import es_single, nres
from unrolled_es.estimators.full_es import full_es
from unrolled_es.estimators.pes import generalized_pes, pes
from unrolled_es.estimators.truncated_es import truncated_es

__all__ = ["full_es", "truncated_es", "pes", "generalized_pes", "es_single", "nres", "truncated_bptt", "full_bptt"]
