"""An ES estimate and an autodiff estimate combined by inverse-variance weighting, per coordinate (Metz, Maheswaranathan,
Nixon, Freeman & Sohl-Dickstein, "Understanding and correcting pathologies in the training of learned optimizers",
ICML 2019).

Truncated BPTT has low variance and a bias (it ignores θ's influence through earlier windows, and explodes on
chaotic unrolls); online ES is unbiased with a variance that can be large. Each estimator reports its
per-coordinate variance from its own particles (`diagnostics=True`), v_es and v_ad, and the combination is

    ĝ_j = (v_ad,j · ĝ_es,j + v_es,j · ĝ_ad,j) / (v_es,j + v_ad,j),

the minimum-variance mix of two independent unbiased estimates — and, where the autodiff one is biased, a trade of
that bias for variance that pays off when the ES variance dominates. Since the weights come from the same particles
as the estimates, the mix is not exactly unbiased even when both parts are; it is an estimator of lower error,
not of zero bias. The variances can be smoothed over windows
(`variance_decay`, an exponential moving average kept in the state), since a few particles estimate them poorly.
The two estimators keep their own particles; the combination costs their sum.
"""
import jax
import jax.numpy as jnp

from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.core.prng import raw_key


def _variance(info, which):
  if "gradient_variance" not in info:
    raise ValueError(f"hybrid needs the {which} estimator built with diagnostics=True (it weights by the "
                     f"variance each reports)")
  return jax.tree_util.tree_map(lambda v: jnp.maximum(v.astype(jnp.float32), 0.0), info["gradient_variance"])


def hybrid(es: GradientEstimator, autodiff: GradientEstimator, variance_decay: float = 0.0) -> GradientEstimator:
  """Inverse-variance weighting of `es` and `autodiff` (e.g. ue.es_single(..., diagnostics=True) and
  ue.truncated_bptt(..., diagnostics=True)) on the same θ; `variance_decay` in [0, 1): EMA of the variances."""
  for name, est in (("es", es), ("autodiff", autodiff)):
    if not isinstance(est, GradientEstimator):
      raise ValueError(f"{name} must be a GradientEstimator; got {type(est).__name__}")
  decay = float(variance_decay)
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"variance_decay must be in [0, 1); got {variance_decay!r}")

  def init(key, theta):
    k1, k2 = jax.random.split(raw_key(key))
    zeros = jax.tree_util.tree_map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), theta)
    return (es.init(k1, theta), autodiff.init(k2, theta), zeros, zeros)

  def estimate(key, theta, state):
    k1, k2 = jax.random.split(raw_key(key))
    es_state, ad_state, v_es_avg, v_ad_avg = state
    g_es, es_state, info_es = es.estimate(k1, theta, es_state)
    g_ad, ad_state, info_ad = autodiff.estimate(k2, theta, ad_state)
    # Both averages start at zero alike, so their ratio needs no bias correction.
    ema = lambda avg, v: jax.tree_util.tree_map(lambda a, b: decay * a + (1 - decay) * b, avg, v)
    v_es_avg, v_ad_avg = ema(v_es_avg, _variance(info_es, "es")), ema(v_ad_avg, _variance(info_ad, "autodiff"))
    w_es = jax.tree_util.tree_map(lambda ve, va: va / jnp.maximum(ve + va, 1e-30), v_es_avg, v_ad_avg)
    grad = jax.tree_util.tree_map(lambda w, a, b, x: (w * a.astype(jnp.float32) + (1 - w) * b.astype(jnp.float32)
                                                      ).astype(jnp.result_type(x)), w_es, g_es, g_ad, theta)
    mean_w = sum(jnp.sum(w) for w in jax.tree_util.tree_leaves(w_es)) / sum(
        w.size for w in jax.tree_util.tree_leaves(w_es))
    info = {"loss": info_es["loss"], "es_weight": mean_w, "num_nonfinite": info_es["num_nonfinite"]
            + info_ad["num_nonfinite"], "inner_steps": info_es["inner_steps"] + info_ad["inner_steps"],
            "sequential_inner_steps": jnp.maximum(info_es["sequential_inner_steps"],
                                                  info_ad["sequential_inner_steps"]),
            "es_variance_ratio": info_es["variance_ratio"], "autodiff_variance_ratio": info_ad["variance_ratio"]}
    return grad, (es_state, ad_state, v_es_avg, v_ad_avg), info

  return GradientEstimator(init=init, estimate=estimate)
