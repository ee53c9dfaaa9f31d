"""Image data shipped with the package (8×8 digits), or a user's own .npz (e.g. MNIST, Fashion-MNIST)."""
import os
from typing import NamedTuple

import numpy as np

DIGITS = os.path.join(os.path.dirname(__file__), "data", "digits8x8.npz")


class Split(NamedTuple):
  train_x: np.ndarray  # float32, (n, d) in [0, 1]
  train_y: np.ndarray  # int32, (n,)
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int


def load_images(path: str | None = None, test_fraction: float = 0.25, seed: int = 0) -> Split:
  """Flattened images scaled to [0, 1], split into train and held-out test sets.

  path: None for the shipped 8×8 digits, or an .npz with `x`/`images` and `y`/`labels` arrays
  (any image shape; values in [0, 255] or [0, 16] or [0, 1] are rescaled by their maximum). An .npz with
  `x_train`, `y_train`, `x_test`, `y_test` keeps its own split.
  """
  path = DIGITS if path is None else path
  if not os.path.exists(path):
    raise ValueError(f"data path {path!r} does not exist; pass an .npz with keys x/images and y/labels")
  with np.load(path) as f:
    keys = set(f.files)
    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
      parts = [f["x_train"], f["y_train"], f["x_test"], f["y_test"]]
    else:
      xk = "x" if "x" in keys else "images" if "images" in keys else None
      yk = "y" if "y" in keys else "labels" if "labels" in keys else None
      if xk is None or yk is None:
        raise ValueError(f"{path!r} must hold arrays x (or images) and y (or labels); it has {sorted(keys)}")
      x, y = f[xk], f[yk]
      order = np.random.default_rng(seed).permutation(len(x))
      n_test = int(round(len(x) * test_fraction))
      parts = [x[order[n_test:]], y[order[n_test:]], x[order[:n_test]], y[order[:n_test]]]
  scale = float(max(parts[0].max(), 1))
  xs = [np.asarray(p, np.float32).reshape(len(p), -1) / scale for p in parts[0::2]]
  ys = [np.asarray(p, np.int32).reshape(-1) for p in parts[1::2]]
  return Split(xs[0], ys[0], xs[1], ys[1], int(max(ys[0].max(), ys[1].max()) + 1))
