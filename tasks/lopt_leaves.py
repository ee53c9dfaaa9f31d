"""What each parameter tensor is, for the learned optimizer's width scaling: the μP rule per kind of leaf.

μP for Adam-like optimizers (Yang et al., "Tensor Programs V", 2022, Table 3; Thérien et al., "μLO", 2024)
scales the step of a *linear map's matrix* by 1/fan-in and leaves every other tensor's step at O(1). The
learned optimizer's nominal step on a leaf is therefore lr·(BASE_FAN_IN / fan_in)^α for the kinds that are
linear maps and lr for the rest. The kind of a leaf, and its fan-in f:

  kind        shape              f                    scaled   default rule (first that applies)
  "vector"    any                1                    no       integer or size-1 leaves; ndim ≤ 1
  "embedding" (vocab, d, …)      1                    no       a path component containing "embed"
                                                               (a lookup table: each row sees one token,
                                                               its width is not a fan-in)
  "conv"      (k…, c_in, c_out)  prod(shape[:-1])     yes      a path component containing "conv"; ndim ≥ 4
  "stacked"   (L, m, n)          m                    yes      ndim == 3: L matrices of fan-in m (a
                                                               `lax.scan` over layers), not one of fan-in L·m
  "matrix"    (m, n)             m                    yes      ndim == 2 (y = x W)

A 1-D convolution kernel (k, c_in, c_out) is 3-D like a stacked kernel: name it "conv…" or annotate it. The
annotation `kinds=` overrides the rule: a pytree with the params' structure holding kind strings (None: the
default), or a callable (path string, leaf) -> kind or None. Path strings join the keys with "/".
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("vector", "embedding", "conv", "stacked", "matrix")
SCALED = ("conv", "stacked", "matrix")
BASE_FAN_IN = 32.0


def path_string(path) -> str:
  """A jax key path as "a/b/0"."""
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
  return "/".join(parts)


def is_float(leaf) -> bool:
  return jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def default_kind(path: str, leaf) -> str:
  shape = np.shape(leaf)
  names = path.lower().split("/")
  if not is_float(leaf) or int(np.prod(shape)) <= 1 or len(shape) <= 1:
    return "vector"
  if any("embed" in n for n in names):
    return "embedding"
  if any("conv" in n for n in names) or len(shape) >= 4:
    return "conv"
  return "stacked" if len(shape) == 3 else "matrix"


def _check_kind(path, kind):
  if kind not in KINDS:
    raise ValueError(f"kinds: the leaf {path!r} is annotated {kind!r}; allowed kinds are {', '.join(KINDS)} "
                     f"(or None for the default rule)")
  return kind


def leaf_kinds(params, kinds=None) -> list:
  """The kind of every leaf of `params`, in tree_leaves order (static: shapes and paths only)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = [path_string(p) for p, _ in flat]
  if kinds is None:
    given = [None] * len(flat)
  elif callable(kinds):
    given = [kinds(s, leaf) for s, (_, leaf) in zip(paths, flat)]
  else:
    try:
      given = jax.tree_util.tree_structure(params).flatten_up_to(kinds)
    except (ValueError, TypeError) as e:
      raise ValueError("kinds must be None, a callable (path, leaf) -> kind, or a pytree with the params' "
                       f"structure holding kind strings or None; got a tree that does not match ({e})") from None
  out = []
  for s, (_, leaf), k in zip(paths, flat, given):
    k = default_kind(s, leaf) if k is None else _check_kind(s, k)
    out.append("vector" if not is_float(leaf) else k)
  return out


def fan_in(shape, kind: str) -> float:
  if kind == "stacked":
    return float(shape[-2])
  if kind in ("conv", "matrix"):
    return float(np.prod(shape[:-1]))
  return 1.0


def width_factor(shape, kind: str, power: float) -> float:
  """The nominal step's per-tensor factor: (BASE_FAN_IN / f)^α for the scaled kinds, 1 for the rest."""
  return (BASE_FAN_IN / fan_in(shape, kind)) ** power if kind in SCALED else 1.0


def tensor_features(shape, kind: str) -> np.ndarray:
  """[is a linear map's kernel, log f / log 1000]: what the network sees of the tensor's role."""
  return np.array([float(kind in SCALED), math.log(fan_in(shape, kind)) / math.log(1000.0)], np.float32)
