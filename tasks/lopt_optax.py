"""A meta-trained learned optimizer as an `optax.GradientTransformation`, for any training loop.

    opt = unrolled_es_tasks.learned_optimizer.load("runs/lopt", num_steps=1000)    # the run's newest valid checkpoint
    opt = unrolled_es_tasks.learned_optimizer.as_optax(theta, num_steps=1000)      # or from a θ in hand
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)                  # params are required: p is a feature
    params = optax.apply_updates(params, updates)

It works on any pytree of parameters of any shapes and ranks (the network acts per element, its features are
normalised per tensor; see `unrolled_es_tasks.lopt_network`): integer leaves are passed through untouched,
bfloat16 leaves are updated in float32, and `kinds=` annotates which leaves are linear maps for the μP width
scaling (`unrolled_es_tasks.lopt_leaves`). Everything is jit-able. `num_steps` is the length of the training
run: required by time_features="fraction", optional for "any" (None: a run of unknown length), ignored by
"steps". A run longer than `num_steps` is not frozen: the nominal step stays at its floor lr·FINAL_FRACTION
after the cosine's end (`lopt_network.nominal_lr`), for `as_optax`, `load` and `pretrained` alike.
"""
import json
import os

import jax
import optax

from unrolled_es_tasks import lopt_network
from unrolled_es_tasks.lopt_network import LoptSpec


def check_theta_matches(spec: LoptSpec, theta):
  """θ must have the structure and shapes of `spec`'s network."""
  from unrolled_es.noise.base import PerturbedMatrix
  want = jax.eval_shape(lambda: lopt_network.init_theta(spec))
  # under factored noise a weight arrives as a PerturbedMatrix: its W is what must fit
  theta = jax.tree_util.tree_map(lambda x: x.w if isinstance(x, PerturbedMatrix) else x, theta,
                                 is_leaf=lambda x: isinstance(x, PerturbedMatrix))
  got_def, want_def = jax.tree_util.tree_structure(theta), jax.tree_util.tree_structure(want)
  shapes = lambda tree: [tuple(jax.numpy.shape(x)) for x in jax.tree_util.tree_leaves(tree)]
  if got_def != want_def or shapes(theta) != shapes(want):
    raise ValueError(f"theta does not fit a learned optimizer with lopt_hidden={spec.hidden} and "
                     f"time_features={spec.time_features!r} (expected leaves {shapes(want)}, got {shapes(theta)}); "
                     f"pass the spec it was trained with")


def as_optax(theta, num_steps=None, spec: LoptSpec | None = None, kinds=None) -> optax.GradientTransformation:
  """The learned optimizer θ (of architecture `spec`, default `LoptSpec()`) as an optax transformation.

  num_steps: the training run's length in steps (required when spec.time_features == "fraction"; None for
  "any" and "steps": unknown). kinds: the leaf-kind annotation (`lopt_leaves`; None: the default rule).
  """
  spec = LoptSpec() if spec is None else spec
  if not isinstance(spec, LoptSpec):
    raise ValueError(f"spec must be a unrolled_es_tasks.lopt_network.LoptSpec; got {spec!r}")
  spec = lopt_network.check_spec(*spec)
  if spec.time_features == "fraction":
    if num_steps is None:
      raise ValueError("num_steps must be given: the optimizer's progress features are fractions of the run")
  if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1):
    raise ValueError(f"num_steps must be None or a positive int (the run's length in steps); got {num_steps!r}")
  check_theta_matches(spec, theta)

  def init(params):
    return lopt_network.init_state(params)

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("params must be passed to update (opt.update(grads, state, params)): the learned "
                       "optimizer reads the parameters as a feature")
    return lopt_network.update(spec, theta, state, params, grads, num_steps, kinds)

  return optax.GradientTransformation(init, update)


def load(run_dir: str, num_steps=None, kinds=None) -> optax.GradientTransformation:
  """The learned optimizer meta-trained by `unrolled-es train --task learned_optimizer --out run_dir`, from the
  run's newest valid checkpoint (a damaged newest file is skipped with a warning for the previous one).

  num_steps defaults to the run's meta-training horizon; a longer run continues at the floor step size.
  """
  theta, config = load_theta(run_dir)
  if num_steps is None and config.spec.time_features == "fraction":
    num_steps = config.horizon
  return as_optax(theta, num_steps, config.spec, kinds)


def load_theta(run_dir: str):
  """(θ, the task's LoptConfig) of a CLI run folder, from its newest valid checkpoint's θ."""
  from unrolled_es_tasks import learned_optimizer
  from unrolled_es.training.checkpoint import restore_latest

  path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"run_dir {run_dir!r} holds no config.json: pass the --out folder of an `unrolled-es train "
                     f"--task learned_optimizer` run")
  with open(path) as f:
    cfg = json.load(f)
  if cfg.get("task") != "learned_optimizer":
    raise ValueError(f"run_dir {run_dir!r} holds a run of task {cfg.get('task')!r}, not learned_optimizer")
  config = learned_optimizer.make_config(**cfg["task_args"])
  theta0 = learned_optimizer.learned_optimizer(**cfg["task_args"]).theta0
  restored = restore_latest(os.path.join(run_dir, "checkpoints"), theta0, part="theta")
  if restored is None:
    raise ValueError(f"run_dir {run_dir!r} holds no checkpoint yet")
  return restored[0], config
