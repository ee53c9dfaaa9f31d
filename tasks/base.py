"""What every task returns: an unrolled system, where to start, and how to judge the result."""
from typing import Any, Callable, NamedTuple

from unrolled_es.core.system import UnrolledSystem


class Task(NamedTuple):
  """A meta-learning problem built on the `UnrolledSystem` contract.

  name:      registry name, e.g. "influence_balancing".
  system:    the inner problem (init, step, horizon).
  theta0:    the initial outer parameters (a pytree of float arrays).
  evaluate:  `evaluate(theta, key) -> dict[str, scalar]`, unperturbed and jit-able; always has "meta_loss"
             (what the outer loop reports), plus task-specific extras (e.g. "test_loss", "a", "r").
  settings:  the published estimator settings for this task: "sigma", "num_particles",
             "truncation_length", "outer_lr", "optimizer" ("sgd" | "adam"), "steps".
  report:    optional `report(theta, out_dir) -> rows` run after training (e.g. the learned optimizer
             against tuned Adam), returning a list of dicts to print as a table.
  mask:      optional θ-shaped pytree of bools: False marks leaves that estimators must not perturb and that get
             a zero gradient (e.g. the control task's observation statistics). None: every leaf is trained.
  after_update: optional `after_update(theta, est_state) -> theta`, pure and jit-able, run after each optimizer
             update (e.g. the control task merging the observation statistics its particles gathered).
  counters:  optional `counters(theta) -> dict of numbers`: cumulative counts that θ keeps, logged beside each
             record and shown per second in the progress bar (the control task's simulated env steps).
  extra_systems: (system, weight) pairs of further inner problems that share θ but not `system`'s shapes (e.g.
             other widths of the network a learned optimizer trains); the command line builds one estimator per
             system and combines them with `unrolled_es.multi_task` (`system` has weight 1).
  """
  name: str
  system: UnrolledSystem
  theta0: Any
  evaluate: Callable[[Any, Any], dict]
  settings: dict
  report: Callable[[Any, str], list] | None = None
  mask: Any = None
  after_update: Callable[[Any, Any], Any] | None = None
  extra_systems: tuple = ()
  counters: Callable[[Any], dict] | None = None
