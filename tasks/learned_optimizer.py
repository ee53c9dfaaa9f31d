"""Meta-learning a per-parameter MLP optimizer over a family of MLP classification problems.

θ is the haiku params of the learned optimizer of `unrolled_es_tasks.lopt_network`: Adam's direction under a cosine
schedule as the nominal step (Harrison, Metz & Sohl-Dickstein 2022), times a bounded learned multiplier,
plus a bounded learned direction correction, from per-tensor normalised features (Metz et al. 2022). The
default network has one hidden layer of 8 units (170 parameters): a small θ is what evolution strategies can
improve within a CPU budget (their gradient variance grows with the dimension).

Inner problem (`unrolled_es_tasks.lopt_problems`): an MLP classifier (widths `hidden`, GELU) trained for T = `horizon`
steps on a problem drawn per episode from a family (the 8×8 digits or a synthetic Gaussian mixture, batch size
and initialisation scale; `datasets`, `vary`). Meta-loss: the mean along the run of the per-step loss divided
by log C and clipped to [0, 1.5], on a minibatch of a validation split (`meta_loss="valid"`, the default:
the loss on data the optimizer does not train on is what users care about) or on the training minibatch
(`"train"`, NRES's meta-objective):

    L(θ) = 1/T Σ_t min(ℓ_t / log C, 1.5).

The meta-trained optimizer is an optax transformation: `as_optax(theta, num_steps)` or `load(run_dir)`; the one
shipped with the package, meta-trained on a wider family (`lopt_family`, `benchmarks.lopt_pretrain`), is
`pretrained(num_steps=None)`.
"""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from unrolled_es_tasks import lopt_network, lopt_problems
from unrolled_es_tasks.base import Task
from unrolled_es_tasks.models import check_hidden
from unrolled_es_tasks.lopt_network import LoptSpec
from unrolled_es_tasks.lopt_optax import as_optax, load, load_theta
from unrolled_es_tasks.lopt_pretrained import pretrained
from unrolled_es_tasks.lopt_problems import Family
from unrolled_es.core.system import UnrolledSystem, check_int, episode_keys, step_key


FAN_IN_POWER = 1.0


class LoptConfig(NamedTuple):
  """The inner-problem family, the horizon and the optimizer architecture (hashable: keys caches)."""
  horizon: int
  family: Family
  spec: LoptSpec
  seed: int = 0


def make_config(horizon=200, hidden=(32, 32), activation="gelu", batch_size=128, data_path=None,
                datasets=("digits", "synthetic"), vary=True, meta_loss="valid", lopt_hidden=(8,),
                lopt_lr=0.02, step_range=math.log(10), direction_scale=1.0, time_features="fraction",
                schedule="cosine", fan_in_power=FAN_IN_POWER, seed=0, correction="additive") -> LoptConfig:
  """The validated config that `learned_optimizer(**kw)` builds from the same arguments."""
  family = lopt_problems.make_family(hidden, datasets, batch_size, activation, vary, meta_loss, data_path)
  spec = lopt_network.check_spec(lopt_hidden, lopt_lr, step_range, direction_scale, time_features, schedule,
                                 fan_in_power, correction)
  return LoptConfig(check_int("horizon", horizon, 1), family, spec, check_int("seed", seed, 0))


def system(config: LoptConfig, family: Family | None = None) -> UnrolledSystem:
  """The meta-training system on `family` (default: the config's): the learned optimizer θ trains one
  classifier per episode; the step's loss is the clipped, normalised meta-loss term."""
  family = config.family if family is None else family
  horizon, spec = config.horizon, config.spec

  def init(key, theta):
    return lopt_problems.episode_init(family, as_optax(theta, horizon, spec), key)

  def step(theta, state, key):
    state, (meta, _) = lopt_problems.episode_step(family, as_optax(theta, horizon, spec), state, key)
    return state, lopt_problems.clip_meta_loss(meta)

  return UnrolledSystem(init, step, horizon)


def systems_by_width(config: LoptConfig, widths) -> list:
  """One system per MLP width (shape-changing family members), to combine with `unrolled_es.multi_task`:

      est = ue.multi_task([ue.es_single(s, ...) for s in systems_by_width(config, [(16, 16), (32, 32)])])
  """
  return [system(config, config.family._replace(hidden=tuple(w))) for w in widths]


def learned_optimizer(horizon: int = 200, hidden=(32, 32), activation: str = "gelu", batch_size: int = 128,
                      data_path: str | None = None, datasets=("digits", "synthetic"), vary: bool = True,
                      meta_loss: str = "valid", lopt_hidden=(8,), lopt_lr: float = 0.02,
                      step_range: float = math.log(10), direction_scale: float = 1.0,
                      time_features: str = "fraction", schedule: str = "cosine",
                      fan_in_power: float = FAN_IN_POWER, seed: int = 0, extra_widths=(),
                      correction: str = "additive") -> Task:
  """The learned-optimizer task (see the module docstring).

  Settings: NRES's σ = 0.01 and window K = 1 with an outer Adam (Li et al. 2023); the number of particles, the
  outer learning rate (1e-3, NRES 3e-4) and the steps are ours, sized for a CPU. evaluate -> meta_loss (the
  system's mean loss over one episode), final_train_loss (the last 10% of steps, / log C), test_loss (/ log C)
  and test_accuracy of the final classifier. extra_widths: further MLP widths meta-trained in the same outer
  step (`Task.extra_systems`, combined by `unrolled_es.multi_task` on the command line); the report then calls
  them meta-trained, not held out. correction: "additive" (the default) or "aligned", which can only scale
  Adam's step (`lopt_network`; the pretrained optimizer uses it).
  """
  config = make_config(horizon, hidden, activation, batch_size, data_path, datasets, vary, meta_loss, lopt_hidden,
                       lopt_lr, step_range, direction_scale, time_features, schedule, fan_in_power, seed,
                       correction)
  theta0 = lopt_network.init_theta(config.spec, config.seed)
  settings = {"sigma": 0.01, "num_particles": 64, "truncation_length": 1, "outer_lr": 1e-3,
              "optimizer": "adam", "steps": 4000}
  from unrolled_es_tasks import lopt_eval
  extra_widths = tuple(check_hidden("extra_widths", w) for w in extra_widths)
  extra = tuple((s, 1.0) for s in systems_by_width(config, extra_widths))
  return Task("learned_optimizer", system(config), theta0, functools.partial(evaluate, config), settings,
              report=functools.partial(lopt_eval.report, config, theta0, trained_widths=extra_widths),
              extra_systems=extra)


def evaluate(config: LoptConfig, theta, key):
  """One unperturbed episode from `key` (the key schedule of unrolled_es.core.system.run_episode)."""
  opt = as_optax(theta, config.horizon, config.spec)
  init_key, base = episode_keys(key)
  state = lopt_problems.episode_init(config.family, opt, init_key)
  state, (meta, train) = jax.lax.scan(
      lambda s, t: lopt_problems.episode_step(config.family, opt, s, step_key(base, t)), state,
      jnp.arange(config.horizon))
  test_loss, test_acc = lopt_problems.inner(config.family).test_metrics(state.params, state.problem)
  tail = max(1, config.horizon // 10)
  return {"meta_loss": jnp.mean(lopt_problems.clip_meta_loss(meta)), "final_train_loss": jnp.mean(train[-tail:]),
          "test_loss": test_loss, "test_accuracy": test_acc}


__all__ = ["learned_optimizer", "make_config", "LoptConfig", "system", "systems_by_width", "evaluate", "as_optax",
           "load", "load_theta", "pretrained"]
