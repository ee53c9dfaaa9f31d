"""One file per estimator: its rule (which draw weights which loss difference, and when noise is redrawn) and its
constructor, registered by name. `make` builds any of them by name; `registered()` lists them."""
from unrolled_es.estimators.registry import make, register, registered
from unrolled_es.estimators.full_es import full_es
from unrolled_es.estimators.truncated_es import truncated_es
from unrolled_es.estimators.pes import generalized_pes, pes
from unrolled_es.estimators.es_single import es_single, nres
from unrolled_es.estimators.baseline_es import baseline_es
from unrolled_es.estimators.bptt import full_bptt, truncated_bptt
from unrolled_es.estimators.uoro import uoro

__all__ = [*registered(), "make", "register", "registered"]
