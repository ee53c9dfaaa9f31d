"""Guided ES: perturbations concentrated in a subspace of recent gradient directions (Maheswaranathan, Metz, Tucker,
Choi & Sohl-Dickstein, "Guided evolutionary strategies: augmenting random search with surrogate gradients", ICML
2019).

θ has n coordinates; U [n, k] is an orthonormal basis of the last k surrogate directions — the guided estimator's
own previous estimates, or the estimates of a `surrogate` estimator (e.g. truncated BPTT, biased but cheap) taken
at the current θ. Each draw is

    ε = √α · z + √((1 − α)·n/k) · U w,      z ~ N(0, I_n), w ~ N(0, I_k),

so Cov(ε) = Σ = α I + (1 − α)(n/k) U Uᵀ, with trace n as for isotropic noise (the paper's Σ times n): a fraction
1 − α of the perturbation's energy lies in the k-dimensional subspace. With the usual weighting ε·ΔL the estimate's
mean is Σ∇L, not ∇L (the paper's estimator): a descent direction, since ∇Lᵀ Σ ∇L > 0, with less variance along the
subspace, but biased towards it — it preserves only the direction's sign against the gradient. With
`unbiased=True` the combined estimate is multiplied by

    Σ⁻¹ = (1/α)(I − U Uᵀ) + 1/(α + (1 − α)n/k) · U Uᵀ

(Stein's identity for N(θ, σ²Σ)), so it is unbiased for the gradient of the loss smoothed with that covariance —
the exact gradient where the loss is quadratic — for every U. That costs variance: for a linear loss with its
gradient in the subspace, each coordinate outside it has (α + (1 − α)n/k)/α times the variance of isotropic ES,
and no coordinate gains. Use it to measure what the guidance's bias costs; the biased estimator is the one that
helps, when few particles must find a good direction in many dimensions.

Σ changes between estimates, so draws from different calls must never be mixed: Guided ES applies to estimators
whose every estimate weights only its own draws — full ES (whole episodes) and truncated ES (a fresh draw every
window) — and is refused when built by PES (its sum ξ spans windows) and ES-Single (a particle keeps its draw for an
episode). With a mask, the draws, U and n are those of the trained coordinates: masking a draw of the full Σ after
the fact would leave a covariance that Σ⁻¹ does not invert (biased).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from unrolled_es.core.estimator import GradientEstimator
from unrolled_es.noise.base import Noise, gaussian, weighted_sum
from unrolled_es.noise.masks import check_mask
from unrolled_es.noise.orthogonal import gram_schmidt
from unrolled_es.core.prng import cut, raw_key, standard_normal


def _sizes(theta):
  return [math.prod(jnp.shape(x)) for x in jax.tree_util.tree_leaves(theta)]


def _flat(tree):
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree_util.tree_leaves(tree)])


def _unflat(vector, like):
  leaves, treedef = jax.tree_util.tree_flatten(like)
  return jax.tree_util.tree_unflatten(treedef, cut(vector, [jnp.shape(x) for x in leaves]))


def guided_noise(basis, alpha: float, unbiased: bool, factored: bool = False, live=None) -> Noise:
  """Gaussian noise with covariance α I + (1 − α)(n/k) U Uᵀ for the orthonormal `basis` U [n, k] (see the module
  docstring); `unbiased` whitens the combined estimate by Σ⁻¹. `live` [n] bool: the coordinates a mask trains;
  draws are zero elsewhere, U must be too, and n counts the live coordinates only, so Σ⁻¹ is the inverse of the
  draws' covariance on them."""
  n, k = basis.shape
  size = n if live is None else int(np.sum(live))
  along = math.sqrt((1.0 - alpha) * size / k)
  plain = gaussian(factored=factored)

  def sample(key, theta):
    normals = standard_normal(key, n + k)
    iso = normals[:n] if live is None else jnp.where(live, normals[:n], 0.0)
    return _unflat(math.sqrt(alpha) * iso + along * (basis @ normals[n:]), theta)

  def combine(coeffs, batch):
    total = weighted_sum(coeffs, batch)
    if not unbiased:
      return total
    v = _flat(total)
    inside = basis @ (basis.T @ v)
    return _unflat((v - inside) / alpha + inside / (alpha + along ** 2), total)

  needs = frozenset({"own_draws_only"} | ({"unmasked"} if live is None else set()))
  return Noise(sample=sample, perturb=plain.perturb, combine=combine, dense=lambda eps: eps, leafwise=False,
               name=f"guided(alpha={alpha}, unbiased={unbiased})", needs=needs)


def _basis(directions):
  """Orthonormal columns [n, k] spanning the rows of `directions` [k, n]; a zero or dependent row (before k
  estimates have been seen) gives a zero column, i.e. no guidance along it (Σ's trace is then below n)."""
  return gram_schmidt(directions).T


def _checked(subspace, alpha, unbiased, surrogate):
  if not (isinstance(subspace, int) and not isinstance(subspace, bool) and subspace >= 1):
    raise ValueError(f"subspace must be an int >= 1 (the number of directions k); got {subspace!r}")
  if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 <= alpha < 1.0):
    raise ValueError(f"alpha must be a number in [0, 1) (the isotropic share of the variance); got {alpha!r}")
  if unbiased and alpha == 0.0:
    raise ValueError("unbiased=True needs alpha > 0: with alpha = 0 the draws span only the subspace and no "
                     "weighting recovers the gradient outside it")
  if surrogate is not None and not isinstance(surrogate, GradientEstimator):
    raise ValueError(f"surrogate must be None or a GradientEstimator; got {type(surrogate).__name__}")


def _live(settings):
  """The flat [n] bool of the coordinates a `mask` in the settings trains (None: all)."""
  mask = check_mask(settings.get("mask"))
  return None if mask is None else np.concatenate([np.ravel(m) for m in jax.tree_util.tree_leaves(mask)])


def _check_settings(subspace, unbiased, settings):
  if "noise" in settings:
    raise ValueError("noise cannot be combined with guided: guided draws its own noise (its covariance follows the "
                     "guiding subspace)")
  if unbiased and settings.get("diagnostics"):
    raise ValueError("diagnostics=True with unbiased=True is not supported: the whitened estimate's per-coordinate "
                     "variance is not a sum of per-coordinate squares")


def guided(constructor, system, *, subspace: int = 1, alpha: float = 0.5, unbiased: bool = False,
           surrogate: GradientEstimator | None = None, factored: bool = False, **settings) -> GradientEstimator:
  """Guided ES around `constructor(system, noise=..., **settings)` (ue.full_es or ue.truncated_es): draws from
  α I + (1 − α)(n/k) U Uᵀ, U spanning the last `subspace` = k estimates of `surrogate` (taken at the current θ before
  each draw) or, without one, of this estimator itself. `unbiased`: whiten by Σ⁻¹ (see the module docstring). With
  a `mask`, n and U are those of the trained coordinates, so the whitening stays exact there."""
  _checked(subspace, alpha, unbiased, surrogate)
  _check_settings(subspace, unbiased, settings)
  alpha, live = float(alpha), _live(settings)
  restrict = (lambda d: d) if live is None else (lambda d: d * jnp.asarray(live, d.dtype))
  build = lambda directions: constructor(system, noise=guided_noise(_basis(restrict(directions)), alpha, unbiased,
                                                                    factored, live), **settings)
  build(jnp.zeros((subspace, subspace if live is None else live.size), jnp.float32))  # refuses what it must, now

  def init(key, theta):
    n = sum(_sizes(theta)) if live is None else int(live.sum())
    if subspace > n:
      raise ValueError(f"subspace must be at most the number of trained coordinates of theta, {n}; got {subspace}")
    k_inner, k_surrogate = jax.random.split(raw_key(key))
    directions = jnp.zeros((subspace, sum(_sizes(theta))), jnp.float32)
    inner = build(directions).init(k_inner, theta)
    aux = () if surrogate is None else surrogate.init(k_surrogate, theta)
    return inner, aux, directions

  def estimate(key, theta, state):
    inner, aux, directions = state
    k_inner, k_surrogate = jax.random.split(raw_key(key))
    extra = {}
    if surrogate is not None:
      g_surrogate, aux, _ = surrogate.estimate(k_surrogate, theta, aux)
      directions = _push(directions, _flat(g_surrogate))
    grad, inner, info = build(directions).estimate(k_inner, theta, inner)
    if surrogate is not None:
      extra["surrogate_cosine"] = _cosine(_flat(grad), directions[0])
    else:
      directions = _push(directions, _flat(grad))
    return grad, (inner, aux, directions), dict(info, **extra)

  return GradientEstimator(init=init, estimate=estimate)


def _push(directions, v):
  """The newest direction first; a non-finite one (an exploding surrogate) enters as zeros."""
  v = jnp.where(jnp.all(jnp.isfinite(v)), v, 0.0)
  return jnp.concatenate([v[None], directions[:-1]])


def _cosine(a, b):
  return jnp.vdot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-30)
