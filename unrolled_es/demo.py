"""`python -m unrolled_es.demo`: every estimator on a built-in linear system, beside the exact gradient.

The system s_{t+1} = A s_t + w + b·u with loss ½‖s − y‖² has memory and a loss quadratic in θ, so ES is exactly
unbiased on it and jax.grad through the whole unroll is the ground truth.
"""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

import unrolled_es as ue

A = jnp.array([[0.8, 0.3, 0.0], [0.0, 0.7, 0.2], [0.1, 0.0, 0.6]])


def system(horizon=40):
  def init(key, theta):
    return jnp.zeros(3)

  def step(theta, s, key):
    s = A @ s + theta["w"] + theta["b"] * jnp.array([1.0, -0.5, 0.3])
    return s, 0.5 * jnp.sum((s - jnp.array([1.0, 2.0, -1.0])) ** 2)
  return ue.UnrolledSystem(init, step, horizon)


def main(calls=8):
  sys_ = system()
  theta = {"w": jnp.array([0.2, -0.1, 0.4]), "b": jnp.array(0.3)}
  key = jax.random.PRNGKey(0)
  exact = jax.flatten_util.ravel_pytree(jax.grad(lambda th: ue.evaluate(sys_, th, key))(theta))[0]
  estimators = {
      "full_es": ue.full_es(sys_, num_particles=256, sigma=0.01),
      "truncated_es": ue.truncated_es(sys_, num_particles=256, sigma=0.01, truncation_length=5),
      "pes": ue.pes(sys_, num_particles=256, sigma=0.01, truncation_length=5),
      "es_single": ue.es_single(sys_, num_particles=256, sigma=0.01, truncation_length=5),
      "truncated_bptt": ue.truncated_bptt(sys_, num_particles=256, truncation_length=5),
      "full_bptt": ue.full_bptt(sys_),
  }
  print(f"gradient of the episode's mean loss, theta = (b, w0, w1, w2); online estimators averaged over {calls} "
        f"windows of staggered particles")
  print(f"{'exact (jax.grad)':>18}  " + "  ".join(f"{x:8.3f}" for x in np.asarray(exact)) + "   rel. error")
  for name, est in estimators.items():
    state = est.init(key, theta)
    estimate = jax.jit(est.estimate)
    total = 0.0
    for i in range(calls):
      g, state, info = estimate(jax.random.fold_in(key, i), theta, state)
      total = total + jax.flatten_util.ravel_pytree(g)[0]
    g = np.asarray(total / calls)
    err = np.linalg.norm(g - exact) / np.linalg.norm(exact)
    print(f"{name:>18}  " + "  ".join(f"{x:8.3f}" for x in g) + f"   {err:8.3f}")
  print("truncated_es and truncated_bptt ignore θ's influence through earlier windows: they are biased.")


if __name__ == "__main__":
  main()
