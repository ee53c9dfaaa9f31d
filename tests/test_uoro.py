"""UORO: its recursion equals a direct numpy implementation on a tiny linear system (same random signs), and its
window estimates are unbiased for the gradient through the whole episode."""
import jax
import jax.numpy as jnp
import numpy as np

import unrolled_es as ue
from systems import A, MATRIX_THETA, Y, assert_unbiased, exact_window_gradients, matrix_system, run_windows
from unrolled_es.core import particles
from unrolled_es.estimators.uoro import signs
from unrolled_es.core.system import step_key

X = np.cos(np.arange(4.0) + 1.0)


def reference(theta, keys_per_window, k, horizon):
  """UORO by hand for one particle of matrix_system: s' = A s + xW + b, ℓ = ½‖s' − y‖², zero-state init."""
  W, b = np.asarray(theta["W"], np.float64), np.asarray(theta["b"], np.float64)
  a_mat, x, y = np.asarray(A, np.float64), X, np.asarray(Y, np.float64)
  out, t, s = [], horizon, np.zeros(3)
  s_t, th_t = np.zeros(3), np.zeros(W.size + b.size)
  for base in keys_per_window:
    total = np.zeros(W.size + b.size)
    for j in range(k):
      if t == horizon:
        s, s_t, th_t, t = np.zeros(3), np.zeros(3), np.zeros(W.size + b.size), 0
      f = a_mat @ s + x @ W + b
      dfdw = np.zeros((3, W.size))
      for kk in range(4):
        for i in range(3):
          dfdw[i, kk * 3 + i] = x[kk]                  # ∂(xW)_i/∂W_ki, W flattened row-major
      dfdth = np.concatenate([dfdw, np.eye(3)], 1)
      nu = np.asarray(signs(step_key(base, j), jnp.zeros(3)), np.float64)
      g = ((f - y) @ a_mat @ s_t) * th_t + (f - y) @ dfdth
      a_vec, b_vec = a_mat @ s_t, nu @ dfdth
      rho0 = np.sqrt((np.linalg.norm(th_t) + 1e-7) / (np.linalg.norm(a_vec) + 1e-7))
      rho1 = np.sqrt((np.linalg.norm(b_vec) + 1e-7) / (np.linalg.norm(nu) + 1e-7))
      s_t, th_t = rho0 * a_vec + rho1 * nu, th_t / rho0 + b_vec / rho1
      s, t = f, t + 1
      total += g
    out.append(total / k)
  return out


def test_uoro_matches_its_reference_recursion():
  horizon, k = 7, 3
  est = ue.uoro(matrix_system(horizon), truncation_length=k, num_particles=1, stagger=False)
  state, estimate = est.init(jax.random.PRNGKey(0), MATRIX_THETA), jax.jit(est.estimate)
  keys, got = [jax.random.PRNGKey(10 + w) for w in range(5)], []
  for key in keys:
    g, state, _ = estimate(key, MATRIX_THETA, state)
    got.append(np.concatenate([np.asarray(g["W"]).ravel(), np.asarray(g["b"])]))
  bases = [particles.window_keys(key, 1, None).steps[0] for key in keys]
  for w, (mine, ref) in enumerate(zip(got, reference(MATRIX_THETA, bases, k, horizon))):
    np.testing.assert_allclose(mine, ref, rtol=2e-4, atol=2e-5, err_msg=f"window {w}")


def test_uoro_is_unbiased_for_the_gradient_through_the_episode():
  system, k, windows = matrix_system(9), 3, 3
  est = ue.uoro(system, truncation_length=k, num_particles=4, stagger=False)
  grads, _ = run_windows(est, MATRIX_THETA, windows, 512)
  exact = exact_window_gradients(system, MATRIX_THETA, k, windows)
  for w in range(windows):
    assert_unbiased(jax.tree_util.tree_map(lambda g: g[:, w], grads), jax.tree_util.tree_map(lambda e: e[w], exact),
                    what=f"window {w}")
